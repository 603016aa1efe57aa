import CLibPQ
import Dispatch
import HarpConfig
#if canImport(Glibc)
import Glibc
#endif

/// Whether a PostgreSQL session can be started through an instance's own listener: what "ready"
/// means for HARP. Like `pg_isready` (libpq's PQping), it needs no credentials: a lead master that
/// answers the startup message has been reached, even when its answer is an authentication
/// refusal. Unlike PQping, an error that the proxy itself sends for a lead master it cannot reach
/// (class 08) or that is going away (57P01, 57P02) is not taken for an answer of the lead master.
public enum ReadinessProbe {
    /// nil when ready, else why not. Gives up after `timeout` (the blocking call is left to
    /// finish on its own thread).
    public static func run(_ conninfo: String, timeout: Duration) async -> String? {
        await withTaskGroup(of: String??.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().async { continuation.resume(returning: .some(probe(conninfo, timeout: timeout))) }
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .some("no answer within \(timeout.components.seconds) s (http.probes.timeout)")
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? "probe failed"
        }
    }

    private static func probe(_ conninfo: String, timeout: Duration) -> String? {
        let deadline = ContinuousClock.now + timeout
        // Verbose errors carry the SQLSTATE ("FATAL:  28P01: ..."), which decides.
        guard let connection = PQconnectStart(conninfo) else { return "libpq could not allocate a connection" }
        defer { PQfinish(connection) }
        if PQstatus(connection) == CONNECTION_BAD { return message(PQerrorMessage(connection)) }
        PQsetErrorVerbosity(connection, PQERRORS_VERBOSE)
        var state = PGRES_POLLING_WRITING
        while state != PGRES_POLLING_OK && state != PGRES_POLLING_FAILED {
            var fd = pollfd(fd: PQsocket(connection), events: Int16(state == PGRES_POLLING_READING ? POLLIN : POLLOUT), revents: 0)
            let left = max(0, (deadline - ContinuousClock.now).milliseconds)
            if left == 0 { return "no answer within \(timeout.components.seconds) s (http.probes.timeout)" }
            if poll(&fd, 1, Int32(left)) <= 0 { continue }  // nothing yet, or EINTR: the deadline decides
            state = PQconnectPoll(connection)
        }
        if state == PGRES_POLLING_OK { return nil }
        return verdict(errorText: String(cString: PQerrorMessage(connection)))
    }

    /// nil (ready) when the error text holds a server's answer that means it was reached; else
    /// the first line of the error, without the SQLSTATE.
    static func verdict(errorText: String) -> String? {
        let first = errorText.split(separator: "\n").first.map(String.init) ?? "unknown error"
        guard let code = sqlstate(in: errorText) else { return first }  // no answer: connect failure, timeout
        let notReady = code == "57P03" || code == "57P01" || code == "57P02" || code.hasPrefix("08")
        return notReady ? first.replacingOccurrences(of: "\(code): ", with: "") : nil
    }

    /// The SQLSTATE of a verbose libpq error: `FATAL:  57P03: the database system is starting up`.
    static func sqlstate(in text: String) -> String? {
        for severity in ["FATAL:  ", "ERROR:  ", "PANIC:  "] {
            guard let range = text.range(of: severity) else { continue }
            let code = text[range.upperBound...].prefix(6)
            if code.count == 6, code.last == ":", code.dropLast().allSatisfy({ $0.isNumber || ($0.isUppercase && $0.isASCII) }) {
                return String(code.dropLast())
            }
        }
        return nil
    }

    private static func message(_ text: UnsafePointer<CChar>?) -> String {
        guard let text else { return "unknown error" }
        return String(cString: text).split(separator: "\n").first.map(String.init) ?? "unknown error"
    }
}

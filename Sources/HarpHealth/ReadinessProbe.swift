import CLibPQ
import Dispatch

/// A test query through an instance's own listener, with libpq: what "ready" means for HARP.
public enum ReadinessProbe {
    /// Runs `SELECT 1` over `conninfo`; nil when it succeeded, else libpq's reason. Gives up
    /// after `timeout` (the blocking call is left to finish on its own thread).
    public static func run(_ conninfo: String, timeout: Duration) async -> String? {
        await withTaskGroup(of: String??.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().async { continuation.resume(returning: .some(query(conninfo))) }
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

    private static func query(_ conninfo: String) -> String? {
        guard let connection = PQconnectdb(conninfo) else { return "libpq could not allocate a connection" }
        defer { PQfinish(connection) }
        guard PQstatus(connection) == CONNECTION_OK else { return message(PQerrorMessage(connection)) }
        guard let result = PQexec(connection, "SELECT 1") else { return message(PQerrorMessage(connection)) }
        defer { PQclear(result) }
        return PQresultStatus(result) == PGRES_TUPLES_OK ? nil : message(PQresultErrorMessage(result))
    }

    private static func message(_ text: UnsafePointer<CChar>?) -> String {
        guard let text else { return "unknown error" }
        return String(cString: text).split(separator: "\n").first.map(String.init) ?? "unknown error"
    }
}

import CLibPQ
import HarpCluster
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Set once, looked at by a probe between its steps (every few ms at most): the answer is no
/// longer wanted (another probe answered, the plan stopped waiting for that leader, or the
/// process is stopping).
final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}

/// Asks a lead master itself whether it is out of recovery: a connection of the proxy's own
/// (the configured libpq settings, at the member's address) runs `SELECT pg_is_in_recovery()`
/// every `every`, which answers false from the moment `pg_ctl promote` has finished. Non-blocking
/// libpq and poll(2): a node that stops answering (paused, or its link gone) costs at most
/// `queryTimeout` before the connection is opened again, and a stop is seen within 5 ms. A
/// connection that fails is opened again after 10 ms, doubling up to 100 ms.
enum PostgresProbe {
    enum Outcome: Equatable, Sendable {
        /// PostgreSQL answered that it is out of recovery.
        case outOfRecovery
        /// Stopped before that; with the last failure to connect, if any.
        case stopped(lastFailure: String?)
    }

    /// Runs on the calling thread until an answer or the stop; `failed` is called once, with
    /// libpq's reason, the first time a connection cannot be made (its messages hold no password).
    static func run(_ check: DirectCheck, stop: StopSignal, every: Duration = .milliseconds(2), queryTimeout: Duration = .seconds(1),
                    failed: (String) -> Void) -> Outcome {
        var lastFailure: String?
        var pause = Duration.milliseconds(10)
        let started = ContinuousClock.now
        while !stop.isSet {
            let connection: OpaquePointer
            switch connect(check, stop: stop) {
            case .connected(let c): connection = c
            case .stopped: return .stopped(lastFailure: lastFailure)
            case .failed(let reason):
                if lastFailure == nil { failed(reason) }
                lastFailure = reason
                sleep(pause, stop: stop)
                pause = min(pause * 2, .milliseconds(100))
                continue
            }
            defer { PQfinish(connection) }
            pause = .milliseconds(10)
            while !stop.isSet {
                guard let inRecovery = askInRecovery(connection, stop: stop, timeout: queryTimeout) else { break }  // broke or silent: another
                if !inRecovery { return .outOfRecovery }
                // A node that stays in recovery for long (a standby promoted by hand, later) is
                // asked ten times a second after the first 10 s, not 500.
                sleep(ContinuousClock.now - started < .seconds(10) ? every : .milliseconds(100), stop: stop)
            }
        }
        return .stopped(lastFailure: lastFailure)
    }

    /// The configured settings, then the member's address over them; `target_session_attrs`
    /// any, since a node still in recovery is what this connection is for. A connect is given
    /// 2 s, and a peer that stops acknowledging 2 s as well (`tcp_user_timeout`), where the DSN
    /// says nothing else.
    private static func connect(_ check: DirectCheck, stop: StopSignal) -> Connecting {
        let host: String, port: Int
        switch check.address {
        case .tcp(let h, let p): (host, port) = (h, p)
        case .unixSocket(let directory, let p): (host, port) = (directory, p)
        }
        let settings = [("application_name", "harp-proxy recovery check"), ("connect_timeout", "2"), ("tcp_user_timeout", "2000"),
                        ("dbname", check.conninfo), ("host", host), ("port", String(port)), ("target_session_attrs", "any")]
        let keywords = settings.map { strdup($0.0).map { UnsafePointer($0) } } + [nil]
        let values = settings.map { strdup($0.1).map { UnsafePointer($0) } } + [nil]
        defer { for p in keywords + values { free(UnsafeMutablePointer(mutating: p)) } }
        guard let connection = PQconnectStartParams(keywords, values, 1) else { return .failed("libpq could not allocate a connection") }
        let deadline = ContinuousClock.now + .seconds(2)
        var status = PQstatus(connection) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING
        while status != PGRES_POLLING_OK, status != PGRES_POLLING_FAILED {
            guard !stop.isSet else {
                PQfinish(connection)
                return .stopped
            }
            guard ContinuousClock.now < deadline else {
                PQfinish(connection)
                return .failed("no answer within 2 s (timeout)")
            }
            if wait(connection, reading: status == PGRES_POLLING_READING, until: deadline) { status = PQconnectPoll(connection) }
        }
        guard status == PGRES_POLLING_OK else {
            let reason = firstLine(PQerrorMessage(connection)) ?? "connection failed"
            PQfinish(connection)
            return .failed(reason)
        }
        return .connected(connection)
    }

    private enum Connecting {
        case connected(OpaquePointer)
        case failed(String)
        case stopped
    }

    /// `pg_is_in_recovery()`, or nil when the query failed or took longer than `timeout`.
    private static func askInRecovery(_ connection: OpaquePointer, stop: StopSignal, timeout: Duration) -> Bool? {
        guard PQsendQuery(connection, "SELECT pg_catalog.pg_is_in_recovery()") == 1 else { return nil }
        let deadline = ContinuousClock.now + timeout
        while PQflush(connection) == 1 {
            guard !stop.isSet, ContinuousClock.now < deadline else { return nil }
            _ = wait(connection, reading: false, until: deadline)
        }
        while PQisBusy(connection) == 1 {
            guard !stop.isSet, ContinuousClock.now < deadline else { return nil }
            if wait(connection, reading: true, until: deadline), PQconsumeInput(connection) == 0 { return nil }
        }
        var answer: Bool?
        while let result = PQgetResult(connection) {
            if PQresultStatus(result) == PGRES_TUPLES_OK, PQntuples(result) == 1, let value = PQgetvalue(result, 0, 0) {
                answer = String(cString: value) == "t"
            }
            PQclear(result)
        }
        return answer
    }

    /// Waits up to 5 ms (or the deadline) for the connection's socket; true when it is ready.
    private static func wait(_ connection: OpaquePointer, reading: Bool, until deadline: ContinuousClock.Instant) -> Bool {
        var fd = pollfd(fd: PQsocket(connection), events: Int16(reading ? POLLIN : POLLOUT), revents: 0)
        guard fd.fd >= 0 else { return true }  // no socket yet or any more: let libpq say
        let wait = max(0, min(5, (deadline - ContinuousClock.now).milliseconds))
        return poll(&fd, 1, Int32(wait)) > 0
    }

    static func sleep(_ pause: Duration, stop: StopSignal) {
        let until = ContinuousClock.now + pause
        while !stop.isSet, ContinuousClock.now < until {
            usleep(UInt32(max(100, min(2000, (until - ContinuousClock.now).milliseconds * 1000))))
        }
    }

    private static func firstLine(_ text: UnsafeMutablePointer<CChar>?) -> String? {
        guard let text else { return nil }
        return String(cString: text).split(separator: "\n").first.map { String($0) }
    }
}

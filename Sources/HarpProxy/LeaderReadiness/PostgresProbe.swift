import CLibPQ
import Dispatch
import HarpCluster
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Set once, looked at by the ways of asking between their requests: a writability check is no
/// longer wanted (one way has answered, or the plan stopped waiting for that leader), or the
/// direct way cannot connect.
final class CheckFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}

/// Asks a named lead master itself whether it is still in recovery: a connection of the proxy's
/// own (`dcs.patroni_check_dsn`, at the member's address) runs `SELECT pg_is_in_recovery()`
/// every 2 ms, which answers false from the moment `pg_ctl promote` has finished. A connection
/// that fails is opened again, after 20 ms and up to 1 s as failures repeat.
enum RecoveryCheck {
    enum Outcome: Equatable, Sendable {
        /// PostgreSQL answered that it is out of recovery.
        case outOfRecovery
        /// Stopped or past the deadline before that; with the last failure to connect, if any.
        case ended(lastFailure: String?)
    }

    /// Runs on a thread of its own; `failed` is called once, with libpq's reason, the first
    /// time a connection cannot be made (its messages hold no password).
    static func wait(_ check: DirectCheck, stop: CheckFlag, deadline: ContinuousClock.Instant,
                     every: Duration = .milliseconds(2), failed: @escaping @Sendable (String) -> Void) async -> Outcome {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: run(check, stop: stop, deadline: deadline, every: every, failed: failed))
            }
        }
    }

    private static func run(_ check: DirectCheck, stop: CheckFlag, deadline: ContinuousClock.Instant,
                            every: Duration, failed: (String) -> Void) -> Outcome {
        var lastFailure: String?
        var pause = Duration.milliseconds(20)
        while !stop.isSet, ContinuousClock.now < deadline {
            let connection = connect(check)
            defer { PQfinish(connection) }
            guard let connection, PQstatus(connection) == CONNECTION_OK else {
                let reason = firstLine(connection.flatMap { PQerrorMessage($0) }) ?? "libpq could not allocate a connection"
                if lastFailure == nil { failed(reason) }
                lastFailure = reason
                sleep(pause, stop: stop, deadline: deadline)
                pause = min(pause * 2, .seconds(1))
                continue
            }
            while !stop.isSet, ContinuousClock.now < deadline {
                guard let inRecovery = askInRecovery(connection) else { break }  // the connection broke: open another
                if !inRecovery { return .outOfRecovery }
                sleep(every, stop: stop, deadline: deadline)
            }
        }
        return .ended(lastFailure: lastFailure)
    }

    /// The configured settings, then the member's address over them; `target_session_attrs`
    /// any, since a node still in recovery is what this connection is for. A connect is given
    /// 2 s, and a peer that stops acknowledging 2 s as well (`tcp_user_timeout`), where the DSN
    /// says nothing else.
    private static func connect(_ check: DirectCheck) -> OpaquePointer? {
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
        return PQconnectdbParams(keywords, values, 1)
    }

    /// `pg_is_in_recovery()`, or nil when the query failed.
    private static func askInRecovery(_ connection: OpaquePointer) -> Bool? {
        guard let result = PQexec(connection, "SELECT pg_catalog.pg_is_in_recovery()") else { return nil }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_TUPLES_OK, PQntuples(result) == 1, let value = PQgetvalue(result, 0, 0) else { return nil }
        return String(cString: value) == "t"
    }

    private static func sleep(_ pause: Duration, stop: CheckFlag, deadline: ContinuousClock.Instant) {
        let until = min(ContinuousClock.now + pause, deadline)
        while !stop.isSet, ContinuousClock.now < until {
            usleep(UInt32(max(100, min(2000, (until - ContinuousClock.now).milliseconds * 1000))))
        }
    }

    private static func firstLine(_ text: UnsafeMutablePointer<CChar>?) -> String? {
        guard let text else { return nil }
        return String(cString: text).split(separator: "\n").first.map { String($0) }
    }
}

import CLibPQ
#if canImport(Glibc)
import Glibc
#endif

/// A connection to PgBouncer's admin console (database `pgbouncer`, simple query protocol only)
/// over its Unix socket. Blocking libpq calls: used only from the pgbouncer driver's own thread,
/// never from an event loop.
final class AdminConsole {
    struct Failure: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    private let connection: OpaquePointer

    /// - Parameters:
    ///   - socketDirectory: PgBouncer's `unix_socket_dir`.
    ///   - port: its `listen_port` (the socket is `.s.PGSQL.<port>`).
    init(socketDirectory: String, port: Int, password: String, timeout: Int = 2) throws(Failure) {
        let keys = ["host", "port", "dbname", "user", "password", "connect_timeout", "sslmode", "application_name"]
        let values = [socketDirectory, String(port), "pgbouncer", PgBouncerSettings.adminUser, password, String(timeout), "disable", "harp-proxy"]
        // Keyword arrays rather than a connection string: nothing to quote.
        let cKeys = keys.map { strdup($0) } + [nil]
        let cValues = values.map { strdup($0) } + [nil]
        defer { (cKeys + cValues).forEach { free($0) } }
        let conn: OpaquePointer? = cKeys.withUnsafeBufferPointer { k in
            cValues.withUnsafeBufferPointer { v in
                k.withMemoryRebound(to: UnsafePointer<CChar>?.self) { kp in
                    v.withMemoryRebound(to: UnsafePointer<CChar>?.self) { vp in PQconnectdbParams(kp.baseAddress, vp.baseAddress, 0) }
                }
            }
        }
        guard let conn else { throw Failure(message: "libpq could not allocate a connection") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = Self.text(PQerrorMessage(conn))
            PQfinish(conn)
            throw Failure(message: message)
        }
        connection = conn
    }

    deinit { PQfinish(connection) }

    var isBroken: Bool { PQstatus(connection) != CONNECTION_OK }

    /// Runs one command and returns its rows, each as column name → text.
    @discardableResult
    func run(_ command: String) throws(Failure) -> [[String: String]] {
        guard let result = PQexec(connection, command) else { throw Failure(message: "\(command): \(Self.text(PQerrorMessage(connection)))") }
        defer { PQclear(result) }
        return try rows(of: result, command: command)
    }

    /// Sends a command without waiting for its answer (PAUSE answers only once the servers are
    /// released); `poll` collects the answer later.
    func send(_ command: String) throws(Failure) {
        guard PQsendQuery(connection, command) == 1 else { throw Failure(message: "\(command): \(Self.text(PQerrorMessage(connection)))") }
    }

    /// The answer to `send`, if it has come: nil while PgBouncer has not answered yet.
    func poll() throws(Failure) -> Bool? {
        guard PQconsumeInput(connection) == 1 else { throw Failure(message: Self.text(PQerrorMessage(connection))) }
        if PQisBusy(connection) == 1 { return nil }
        var failure: Failure?
        while let result = PQgetResult(connection) {
            let status = PQresultStatus(result)
            if status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK { failure = Failure(message: Self.text(PQresultErrorMessage(result))) }
            PQclear(result)
        }
        if let failure { throw failure }
        return true
    }

    private func rows(of result: OpaquePointer, command: String) throws(Failure) -> [[String: String]] {
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
            throw Failure(message: "\(command): \(Self.text(PQresultErrorMessage(result)))")
        }
        let columns = (0..<PQnfields(result)).map { String(cString: PQfname(result, $0)) }
        return (0..<PQntuples(result)).map { row in
            var values: [String: String] = [:]
            for (i, name) in columns.enumerated() where PQgetisnull(result, row, Int32(i)) == 0 {
                values[name] = String(cString: PQgetvalue(result, row, Int32(i)))
            }
            return values
        }
    }

    private static func text(_ p: UnsafePointer<CChar>?) -> String {
        guard let p else { return "unknown libpq error" }
        let s = String(cString: p)
        return String(s.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

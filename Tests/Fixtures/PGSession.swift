import CLibPQ
import Foundation

/// One libpq connection held by a test across statements, as an application holds its
/// connection: for checking that a client connection survives what happens behind a proxy.
/// Every call blocks its caller; `run` hands the work to a thread of its own.
public final class PGSession: @unchecked Sendable {
    private let connection: OpaquePointer
    private let lock = NSLock()

    /// - Parameter conninfo: a libpq connection string.
    public init(_ conninfo: String) throws {
        guard let conn = PQconnectdb(conninfo) else { throw FixtureError("libpq could not allocate a connection") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(conn))
            PQfinish(conn)
            throw FixtureError(message)
        }
        connection = conn
    }

    deinit { PQfinish(connection) }

    /// Errors from here on carry their SQLSTATE ("FATAL:  57P01: ...").
    public func verboseErrors() {
        lock.withLock { _ = PQsetErrorVerbosity(connection, PQERRORS_VERBOSE) }
    }

    /// Runs one statement; returns the first column of the first row ("" for none), or throws
    /// libpq's error text.
    @discardableResult
    public func query(_ sql: String) throws -> String {
        try lock.withLock {
            guard let result = PQexec(connection, sql) else { throw FixtureError(String(cString: PQerrorMessage(connection))) }
            defer { PQclear(result) }
            let status = PQresultStatus(result)
            guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else {
                throw FixtureError(String(cString: PQresultErrorMessage(result)) + String(cString: PQerrorMessage(connection)))
            }
            return PQntuples(result) > 0 && PQnfields(result) > 0 ? String(cString: PQgetvalue(result, 0, 0)) : ""
        }
    }

    /// `query` on a thread of its own, so that an async test does not block its executor.
    public func run(_ sql: String) async -> Result<String, FixtureError> {
        await onOwnThread { Result { try self.query(sql) }.mapError { $0 as? FixtureError ?? FixtureError("\($0)") } }
    }

    /// Whether libpq still considers the connection open.
    public var isOpen: Bool { PQstatus(connection) == CONNECTION_OK }
}

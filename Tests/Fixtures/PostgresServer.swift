import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL 15 server on a free loopback port, in a temporary folder, run as the
/// `postgres` user when the tests run as root (PostgreSQL refuses to run as root).
public final class PostgresServer: @unchecked Sendable {
    public static let binDirectory = "/usr/lib/postgresql/15/bin"
    public let directory: TemporaryDirectory
    public let port: Int
    /// The folder of its Unix socket.
    public let socketDirectory: String
    private var process: TestProcess?

    public init(port: Int = freePort()) throws {
        self.port = port
        directory = TemporaryDirectory("harp-pg")
        socketDirectory = directory.path + "/sock"
        let data = directory.path + "/data"
        try FileManager.default.createDirectory(atPath: socketDirectory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        Self.giveToPostgres([directory.path, socketDirectory, data])
        let initdb = try runCommand(Self.runner, Self.asPostgres(["\(Self.binDirectory)/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]))
        guard initdb.status == 0 else { throw FixtureError("initdb failed: \(initdb.output)") }
        try start()
    }

    public func start() throws {
        process = try TestProcess(name: "postgres-\(port)", executable: Self.runner, arguments: Self.asPostgres([
            "\(Self.binDirectory)/postgres", "-D", directory.path + "/data", "-p", "\(port)", "-k", socketDirectory,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
            "-c", "logging_collector=off", "-c", "shared_buffers=16MB",
            // Notice a closed client even in the middle of a long query, as the tests check.
            "-c", "client_connection_check_interval=100ms",
        ]), logDirectory: directory.path)
        guard eventually(timeout: 30, { (try? query("SELECT 1"))?.trimmingCharacters(in: .whitespacesAndNewlines) == "1" }) else {
            throw FixtureError("PostgreSQL on port \(port) did not start:\n\(process?.log ?? "")")
        }
    }

    /// Runs one statement with psql over TCP and returns its unaligned output.
    public func query(_ sql: String) throws -> String {
        try Self.psql(host: "127.0.0.1", port: port, sql)
    }

    /// psql against any host and port (a proxy's listener), with libpq's own error text on failure.
    public static func psql(host: String, port: Int, _ sql: String, timeout: Int = 10) throws -> String {
        let result = try runCommand("\(binDirectory)/psql", ["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                                           "-h", host, "-p", "\(port)", "-U", "postgres", "-d", "postgres", "-c", sql],
                                    environment: ["PGCONNECT_TIMEOUT": "\(timeout)", "PATH": "/usr/bin:/bin", "PGSSLMODE": "prefer"])
        guard result.status == 0 else { throw FixtureError(result.output) }
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Puts `line` first in pg_hba.conf and reloads: a rule for the roles one test creates,
    /// ahead of the trust rules every other test relies on.
    public func prependHBA(_ line: String) throws {
        let path = directory.path + "/data/pg_hba.conf"
        let old = try String(contentsOfFile: path, encoding: .utf8)
        try (line + "\n" + old).write(toFile: path, atomically: false, encoding: .utf8)
        _ = try query("SELECT pg_reload_conf()")
    }

    /// Turns TLS on with `certificates`' server certificate (copied into the data folder, the key
    /// readable by the server alone), then reloads.
    public func enableTLS(_ certificates: TestCertificates) throws {
        let data = directory.path + "/data"
        for (from, to) in [(certificates.serverCertFile, "server.crt"), (certificates.serverKeyFile, "server.key")] {
            try? FileManager.default.removeItem(atPath: "\(data)/\(to)")
            try FileManager.default.copyItem(atPath: from, toPath: "\(data)/\(to)")
            chmod("\(data)/\(to)", 0o600)
        }
        Self.giveToPostgres(["\(data)/server.crt", "\(data)/server.key"])
        _ = try query("ALTER SYSTEM SET ssl = on")
        _ = try query("SELECT pg_reload_conf()")
        guard eventually(timeout: 10, { (try? query("SHOW ssl")) == "on" }) else { throw FixtureError("PostgreSQL did not turn TLS on") }
    }

    /// A fast shutdown (sessions are disconnected), then the runner process is reaped.
    public func stop() {
        guard let process, process.isRunning else { return }
        _ = try? runCommand(Self.runner, Self.asPostgres(["\(Self.binDirectory)/pg_ctl", "stop", "-D", directory.path + "/data", "-m", "fast", "-w", "-t", "10"]))
        process.stop()
    }

    deinit { stop() }

    static var isRoot: Bool { getuid() == 0 }
    static var runner: String { isRoot ? "/usr/sbin/runuser" : "/usr/bin/env" }
    static func asPostgres(_ command: [String]) -> [String] { isRoot ? ["-u", "postgres", "--"] + command : command }

    static func giveToPostgres(_ paths: [String]) {
        guard isRoot, let user = getpwnam("postgres") else { return }
        for path in paths { chown(path, user.pointee.pw_uid, user.pointee.pw_gid) }
    }
}

/// Two PostgreSQL servers shared by every proxy test of the run: initdb and start take a second
/// or two each, and the tests tell their sessions apart by tags, not by fresh servers.
/// Stopped when the test process exits.
public enum SharedPostgres {
    public static let first: PostgresServer = start()
    public static let second: PostgresServer = start()

    nonisolated(unsafe) private static var started: [PostgresServer] = []
    private static let lock = NSLock()

    private static func start() -> PostgresServer {
        let server: PostgresServer
        do { server = try PostgresServer() } catch { fatalError("test fixture: \(error)") }
        lock.withLock {
            if started.isEmpty { atexit { SharedPostgres.stopAll() } }
            started.append(server)
        }
        return server
    }

    private static func stopAll() {
        lock.withLock { started.forEach { $0.stop() } }
    }
}

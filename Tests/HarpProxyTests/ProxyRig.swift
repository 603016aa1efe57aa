import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import HarpProxy
import HarpTestFixtures
import Logging
import NIOPosix
import XCTest

/// A proxy host in the test process, with its own etcd, talking to real PostgreSQL servers.
final class ProxyRig: @unchecked Sendable {
    let etcd: EtcdCluster
    let layout = DCSLayout(cluster: "t")
    let client: EtcdClient
    let session: DCSSession
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let host: ProxyHost
    let capture = LogCapture()
    private var routing: Task<Void, Never>?
    /// Things that must live as long as the rig, such as the folder its PgBouncers write to.
    var keepAlive: [AnyObject] = []

    /// - Parameter instances: name, location and local directives of each instance.
    /// - Parameter configDirectory: where config.yml would be: pgbouncer instances write their files there.
    init(_ instances: [(String, String, [String: DirectiveValue])], etcd: EtcdCluster? = nil,
         requestTimeout: Duration = .milliseconds(300), resyncInterval: Duration = .seconds(1), configDirectory: String = ".") throws {
        self.etcd = try etcd ?? EtcdCluster()
        client = EtcdClient(configuration: self.etcd.dcsConfiguration())
        session = DCSSession(configuration: self.etcd.dcsConfiguration(requestTimeout: requestTimeout, resyncInterval: resyncInterval),
                             prefix: layout.prefix, logger: capture.logger("harp.dcs"))
        let configs = instances.map { name, location, directives in
            var instance = InstanceConfiguration(name: name, location: location, directives: DirectiveSet(directives),
                                                 source: SourceLocation(file: "test", line: 1, column: 1))
            instance.configDirectory = configDirectory
            return instance
        }
        host = ProxyHost(instances: configs, session: session, group: group, layout: layout, logger: capture.logger("harp.proxy"))
        session.start()
        let host = self.host
        routing = Task { await host.run() }
    }

    func node(_ name: String, location: String, dsn: String) async throws {
        try await client.put(layout.node(name), #"{"name":"\#(name)","location":"\#(location)","dsn":"\#(dsn)"}"#)
    }

    func node(_ name: String, location: String, server: PostgresServer) async throws {
        try await node(name, location: location, dsn: "host=127.0.0.1 port=\(server.port) dbname=postgres")
    }

    func leader(_ location: String, _ node: String?, lease: Int64 = 0) async throws {
        if let node { try await client.put(layout.leader(location: location), #"{"name":"\#(node)"}"#, lease: lease) }
        else { try await client.delete(layout.leader(location: location)) }
    }

    /// Waits until the instance's plan routes to `node` (nil: to no one) and it listens.
    func waitUntilRouting(_ instance: String, to node: String?, timeout: Duration = .seconds(10)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let s = await host.status().first(where: { $0.name == instance }), s.listen != nil,
               s.plan?.routing.target?.name == node { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func counters(_ instance: String) async -> ClientCounters {
        await host.status().first { $0.name == instance }?.clients ?? ClientCounters()
    }

    func stop() async {
        guard let routing else { return }
        self.routing = nil
        routing.cancel()
        await host.shutdown()
        session.shutdown()
        try? await group.shutdownGracefully()
    }
}

/// psql through a proxy port: the value of `SELECT current_setting('port')`, or libpq's error.
func serverPort(through port: Int, timeout: Int = 10) -> Result<String, FixtureError> {
    Result { try PostgresServer.psql(host: "127.0.0.1", port: port, "SELECT current_setting('port')", timeout: timeout) }
        .mapError { $0 as? FixtureError ?? FixtureError("\($0)") }
}

/// A psql session kept open in the background (inside a transaction, sleeping), through `port`.
/// `tag` marks its query so that `waitForActivity` finds this session and no other.
func openSession(through port: Int, tag: String, seconds: Int = 30, logDirectory: String) throws -> TestProcess {
    try TestProcess(name: "psql-\(tag)", executable: "\(PostgresServer.binDirectory)/psql",
                    arguments: ["-X", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres",
                                "-c", "BEGIN; SELECT 'session-open'; SELECT pg_sleep(\(seconds)) /* \(tag) */; COMMIT;"],
                    logDirectory: logDirectory, environment: ["PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"])
}

/// How many sessions on `server` run a query tagged `tag`.
func sessions(on server: PostgresServer, tagged tag: String) -> Int {
    Int((try? server.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* \(tag) */%' AND pid <> pg_backend_pid()")) ?? "") ?? -1
}

/// Waits until `server` runs `count` sessions tagged `tag`.
func waitForActivity(on server: PostgresServer, _ tag: String, count: Int = 1, timeout: TimeInterval = 10) -> Bool {
    eventually(timeout: timeout) { sessions(on: server, tagged: tag) == count }
}

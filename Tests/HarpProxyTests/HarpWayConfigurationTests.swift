import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// harp-proxy configured the way HARP's users configure it: the documentation's own example,
/// ports and addresses set in the DCS with harpctl, no location in the file, and no helpful
/// environment variables. Real etcd, PostgreSQL, harp-proxy and harpctl processes.
final class HarpWayConfigurationTests: XCTestCase {
    static var pg1: PostgresServer { SharedPostgres.first }
    static var pg2: PostgresServer { SharedPostgres.second }

    /// harpctl as an operator runs it, against `dir`'s config.yml; fails the test on a non-zero exit.
    @discardableResult
    func harpctl(_ dir: TemporaryDirectory, _ arguments: String..., file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let result = try runCommand(builtExecutable("harpctl"), ["-f", dir.file("config.yml")] + arguments)
        XCTAssertEqual(result.status, 0, "harpctl \(arguments.joined(separator: " ")): \(result.output)", file: file, line: line)
        return result.output
    }

    /// Registers `node` in `location` on `server` with `harpctl apply`, as HARP's bootstrap does.
    func addNode(_ dir: TemporaryDirectory, cluster: String, _ node: String, _ location: String, on server: PostgresServer) throws {
        dir.write("boot-\(node).yml", """
            cluster:
              name: \(cluster)
            locations:
              - location: \(location)
            nodes:
              - name: \(node)
                location: \(location)
                dsn: host=127.0.0.1 port=\(server.port) dbname=postgres

            """)
        try harpctl(dir, "apply", dir.file("boot-\(node).yml"))
    }

    /// config.yml's cluster, dcs and control stanzas for `cluster` on `etcd`, its socket in `dir`.
    func stanzas(_ cluster: String, _ etcd: EtcdCluster, _ dir: TemporaryDirectory) -> String {
        "cluster: {name: \(cluster)}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n"
            + "control: {socket: \(dir.path)/run/control.sock}\n"
    }

    /// harp-proxy with `dir`'s config.yml, in an environment without PGUSER and friends.
    func startProxy(_ dir: TemporaryDirectory, environment: [String: String]? = nil) throws -> TestProcess {
        var plain = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }
        for (k, v) in environment ?? [:] { plain[k] = v }
        return try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                               logDirectory: dir.path, environment: plain)
    }

    static func statusRecord(_ etcd: EtcdCluster, cluster: String, _ proxy: String) async -> [String: Any] {
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        guard let value = try? await client.range(DCSLayout(cluster: cluster).proxyStatus(proxy)).kvs.first?.value else { return [:] }
        return parseObject(value)
    }

    func controlStatus(_ dir: TemporaryDirectory, _ instance: String) -> [String: Any] {
        guard let reply = try? control(dir.path + "/run/control.sock", Array("status \(instance)\n".utf8)).first else { return [:] }
        return parseObject(reply)
    }

    // MARK: - HARP's documented example

    func testTheDocumentationsExampleStartsAndFollowsTheOnlyLocation() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        // HARP Proxy's "functional example" of config.yml, unchanged but for its endpoints.
        dir.write("config.yml", """
            cluster:
              name: mycluster

            dcs:
              driver: etcd
              endpoints:
                - 127.0.0.1:\(etcd.members[0].clientPort)

            proxy:
              name: proxy1

            """)
        let port = freePort()
        try addNode(dir, cluster: "mycluster", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "set", "proxy", "proxy1", "listen_port=\(port)")
        try harpctl(dir, "promote", "node1")

        let check = try runCommand(builtExecutable("harp-proxy"), ["--check", "-f", dir.file("config.yml")])
        XCTAssertEqual(check.status, 0, check.output)
        XCTAssertTrue(check.output.contains("(the DCS's only location)") && check.output.contains("(DCS, else 0.0.0.0:6432)"),
                      "--check says what the DCS decides:\n\(check.output)")

        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: port).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertTrue(proxy.log.contains("following location dc1: the only one the DCS holds"), proxy.log)
        let recorded = await eventuallyAsync { (await Self.statusRecord(etcd, cluster: "mycluster", "proxy1"))["location"] as? String == "dc1" }
        XCTAssertTrue(recorded, "the status record names the location followed")

        // harpctl takes the location the same way: no argument, no location in config.yml.
        let location = try harpctl(dir, "get", "location", "-o", "json")
        XCTAssertTrue(location.contains("\"dc1\"") && location.contains("node1"), location)

        // A second location appears: the proxy keeps the one it follows, and says so.
        try addNode(dir, cluster: "mycluster", "node2", "dc2", on: Self.pg2)
        try harpctl(dir, "promote", "node2")
        XCTAssertTrue(eventually(timeout: 10) { proxy.log.contains("the DCS now holds other locations too; still following dc1") }, proxy.log)
        XCTAssertEqual(try serverPort(through: port).get(), "\(Self.pg1.port)")
        let ambiguous = try runCommand(builtExecutable("harpctl"), ["-f", dir.file("config.yml"), "get", "location"])
        XCTAssertEqual(ambiguous.status, 1)
        XCTAssertTrue(ambiguous.output.contains("holds several (dc1, dc2): name one"), ambiguous.output)
        XCTAssertTrue(proxy.isRunning)
    }

    // MARK: - Where the location comes from

    func testNoLocationWaitsForTheFirstOneThatAppears() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        dir.write("config.yml", stanzas("w", etcd, dir) + "proxy: {name: p, listen_address: 127.0.0.1}\n")
        let port = freePort()
        try harpctl(dir, "set", "proxy", "p", "listen_port=\(port)", "hold_timeout=300ms")
        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { self.controlStatus(dir, "p")["state"] as? String == "no-location" }, proxy.log)
        XCTAssertTrue((controlStatus(dir, "p")["reason"] as? String)?.contains("no location in the DCS yet") == true, "\(controlStatus(dir, "p"))")
        let refused = serverPort(through: port)
        XCTAssertTrue("\(refused)".contains("no location to follow"), "a client reads why: \(refused)")

        try addNode(dir, cluster: "w", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "promote", "node1")
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertEqual(controlStatus(dir, "p")["location"] as? String, "dc1")
    }

    func testSeveralLocationsAndNoneConfiguredStaysDownUntilTheTopLevelLocationIsSet() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        let header = stanzas("s", etcd, dir)
        dir.write("config.yml", header)
        let port = freePort()
        dir.write("conf.d/p.yml", "proxy:\n  name: p\n  listen_address: 127.0.0.1\n  listen_port: \(port)\n  hold_timeout: 300ms\n")
        try addNode(dir, cluster: "s", "node1", "dc1", on: Self.pg1)
        try addNode(dir, cluster: "s", "node2", "dc2", on: Self.pg2)
        try harpctl(dir, "promote", "node1")
        try harpctl(dir, "promote", "node2")

        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { self.controlStatus(dir, "p")["state"] as? String == "no-location" }, proxy.log)
        let reason = controlStatus(dir, "p")["reason"] as? String ?? ""
        XCTAssertTrue(reason.contains("several locations (dc1, dc2)") && reason.contains("proxy.location"), reason)
        XCTAssertTrue(proxy.log.contains("no location to follow: the DCS holds several locations (dc1, dc2)"), proxy.log)
        let recorded = await eventuallyAsync {
            let record = await Self.statusRecord(etcd, cluster: "s", "p")
            return record["state"] as? String == "no-location" && (record["reason"] as? String)?.contains("dc1, dc2") == true
        }
        XCTAssertTrue(recorded, "the status record in the DCS says why")
        let refused = serverPort(through: port)
        XCTAssertTrue("\(refused)".contains("several locations (dc1, dc2)"), "a client reads why: \(refused)")

        // HARP's top-level `location`, picked up by a reload.
        dir.write("config.yml", header + "location: dc2\n")
        let check = try runCommand(builtExecutable("harp-proxy"), ["--check", "-f", dir.file("config.yml")])
        XCTAssertTrue(check.output.contains("dc2 (top-level)"), check.output)
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) == "\(Self.pg2.port)" }, proxy.log)
        XCTAssertEqual(controlStatus(dir, "p")["state"] as? String, "routing")
        XCTAssertEqual(controlStatus(dir, "p")["location"] as? String, "dc2")
    }

    // MARK: - Listeners from the DCS

    func testPortsFromTheDCSAndAClashAtRunTimeStayWithTheirInstance() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        dir.write("config.yml", stanzas("ports", etcd, dir) + "proxy:\n  name: p1\n  location: dc1\n")
        dir.write("conf.d/p2.yml", "proxy:\n  name: p2\n  location: dc1\n")
        try addNode(dir, cluster: "ports", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "promote", "node1")
        let (a, b) = (freePort(), freePort())
        try harpctl(dir, "set", "proxy", "global", "listen_address=127.0.0.1", "monitor_interval=1s")
        try harpctl(dir, "set", "proxy", "p1", "listen_port=\(a)")
        try harpctl(dir, "set", "proxy", "p2", "listen_port=\(b)")

        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 15) {
            (try? serverPort(through: a).get()) == "\(Self.pg1.port)" && (try? serverPort(through: b).get()) == "\(Self.pg1.port)"
        }, "both instances listen where the DCS says:\n\(proxy.log)")
        let onP1 = try openSession(through: a, tag: "clash-p1", logDirectory: dir.path)
        defer { onP1.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg1, "clash-p1"))

        // p2 is moved onto p1's port: p1 keeps it, p2 says why it cannot have it.
        try harpctl(dir, "set", "proxy", "p2", "listen_port=\(a)")
        XCTAssertTrue(eventually(timeout: 10) { self.controlStatus(dir, "p2")["state"] as? String == "listen-failed" }, "\(controlStatus(dir, "p2"))\n\(proxy.log)")
        let p2 = controlStatus(dir, "p2")
        let error = p2["listen_error"] as? String ?? ""
        XCTAssertTrue(error.contains("address in use") && error.contains("'p1'") && error.contains("127.0.0.1:\(a)"), error)
        XCTAssertEqual(p2["listen"] as? String, "127.0.0.1:\(b)", "p2 holds its old listener until it can have a new one")
        XCTAssertTrue(proxy.log.contains("cannot listen on 127.0.0.1:\(a): address in use by instance 'p1'"), proxy.log)
        XCTAssertEqual(controlStatus(dir, "p1")["state"] as? String, "routing")
        XCTAssertEqual(try serverPort(through: a).get(), "\(Self.pg1.port)", "p1 keeps serving")
        XCTAssertTrue(onP1.isRunning, "and keeps its sessions")
        let recorded = await eventuallyAsync {
            let record = await Self.statusRecord(etcd, cluster: "ports", "p2")
            return record["state"] as? String == "listen-failed" && (record["listen_error"] as? String)?.contains("address in use") == true
        }
        XCTAssertTrue(recorded, "p2's status record in the DCS names the error")

        // A free port in the DCS: p2 binds it at once, no restart.
        let c = freePort()
        try harpctl(dir, "set", "proxy", "p2", "listen_port=\(c)")
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: c).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertTrue(eventually(timeout: 5) { self.controlStatus(dir, "p2")["state"] as? String == "routing" }, "\(controlStatus(dir, "p2"))")
        XCTAssertNil(controlStatus(dir, "p2")["listen_error"])
        XCTAssertTrue(eventually(timeout: 5) { !canConnect(port: b) }, "p2's old listener is closed")

        // A port another process holds: the bind fails with the system's reason, and p2 takes the
        // port as soon as it is free.
        let d = freePort()
        let squatter = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertEqual(withLoopbackAddress(port: d) { bind(squatter, $0, $1) }, 0)
        XCTAssertEqual(listen(squatter, 1), 0)
        try harpctl(dir, "set", "proxy", "p2", "listen_port=\(d)")
        XCTAssertTrue(eventually(timeout: 10) { (self.controlStatus(dir, "p2")["listen_error"] as? String)?.contains("address already in use") == true },
                      "\(controlStatus(dir, "p2"))\n\(proxy.log)")
        XCTAssertEqual(controlStatus(dir, "p2")["state"] as? String, "listen-failed")
        close(squatter)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: d).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertTrue(eventually(timeout: 5) { self.controlStatus(dir, "p2")["state"] as? String == "routing" })
        XCTAssertTrue(onP1.isRunning, "p1 was never disturbed")
        XCTAssertTrue(proxy.isRunning)
    }

    /// A pgbouncer instance moved by the DCS onto a builtin instance's port: the builtin one
    /// keeps it; PgBouncer keeps serving where it listened and says why it does not move; a free
    /// port in the DCS then moves it. And the other way: a builtin instance moved onto
    /// PgBouncer's port is the one that says why.
    func testAPgBouncerInstanceMovedOntoAnotherInstancesPortKeepsItsListener() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory("harp-pgb")
        chmod(dir.path, 0o755)
        let users = dir.write("users.txt", "\"postgres\" \"\"\n")
        dir.write("config.yml", stanzas("mixed", etcd, dir) + "proxy:\n  name: p1\n  location: dc1\n")
        dir.write("conf.d/pgb.yml", "proxy:\n  name: pgb\n  location: dc1\n  type: pgbouncer\n  database_name: postgres\n"
                  + "  auth_type: trust\n  auth_file: \(users)\n  pool_mode: transaction\n")
        try addNode(dir, cluster: "mixed", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "promote", "node1")
        let (a, b, c) = (freePort(), freePort(), freePort())
        try harpctl(dir, "set", "proxy", "global", "listen_address=127.0.0.1", "monitor_interval=1s")
        try harpctl(dir, "set", "proxy", "p1", "listen_port=\(a)")
        try harpctl(dir, "set", "proxy", "pgb", "listen_port=\(b)")
        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 20) {
            (try? serverPort(through: a).get()) == "\(Self.pg1.port)" && (try? serverPort(through: b, timeout: 3).get()) == "\(Self.pg1.port)"
        }, proxy.log)

        try harpctl(dir, "set", "proxy", "pgb", "listen_port=\(a)")
        XCTAssertTrue(eventually(timeout: 10) { self.controlStatus(dir, "pgb")["state"] as? String == "listen-failed" }, "\(controlStatus(dir, "pgb"))\n\(proxy.log)")
        let error = controlStatus(dir, "pgb")["listen_error"] as? String ?? ""
        XCTAssertTrue(error.contains("address in use by instance 'p1'") && error.contains("127.0.0.1:\(a)"), error)
        XCTAssertTrue(proxy.log.contains("PgBouncer keeps its current listener"), proxy.log)
        XCTAssertEqual(try serverPort(through: a).get(), "\(Self.pg1.port)", "p1 keeps its port")
        XCTAssertEqual(try serverPort(through: b, timeout: 3).get(), "\(Self.pg1.port)", "PgBouncer still serves where it listened")
        XCTAssertEqual(controlStatus(dir, "p1")["state"] as? String, "routing")

        try harpctl(dir, "set", "proxy", "pgb", "listen_port=\(c)")
        XCTAssertTrue(eventually(timeout: 20) { (try? serverPort(through: c, timeout: 3).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertTrue(eventually(timeout: 5) { self.controlStatus(dir, "pgb")["state"] as? String == "routing" }, "\(controlStatus(dir, "pgb"))")

        // The other way round: the builtin instance asks for PgBouncer's port.
        try harpctl(dir, "set", "proxy", "p1", "listen_port=\(c)")
        XCTAssertTrue(eventually(timeout: 10) { self.controlStatus(dir, "p1")["state"] as? String == "listen-failed" }, "\(controlStatus(dir, "p1"))")
        XCTAssertTrue((controlStatus(dir, "p1")["listen_error"] as? String)?.contains("address in use by instance 'pgb'") == true, "\(controlStatus(dir, "p1"))")
        XCTAssertEqual(try serverPort(through: a).get(), "\(Self.pg1.port)", "p1 keeps listening where it did")
        XCTAssertEqual(try serverPort(through: c, timeout: 3).get(), "\(Self.pg1.port)")
        XCTAssertTrue(proxy.isRunning)
    }

    func testTwoInstancesWithTheDefaultPortStartAndTheSecondSaysWhyItDoesNotListen() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        // Neither file sets a port, and the DCS sets none either: both want the default.
        let port = freePort()
        dir.write("config.yml", stanzas("dflt", etcd, dir) + "proxy: {name: p1, location: dc1}\n")
        dir.write("conf.d/p2.yml", "proxy: {name: p2, location: dc1}\n")
        try addNode(dir, cluster: "dflt", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "promote", "node1")
        try harpctl(dir, "set", "proxy", "global", "listen_address=127.0.0.1", "listen_port=\(port)")
        let proxy = try startProxy(dir)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: port).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertTrue(eventually(timeout: 5) { self.controlStatus(dir, "p2")["state"] as? String == "listen-failed" }, "\(controlStatus(dir, "p2"))")
        XCTAssertEqual(controlStatus(dir, "p1")["state"] as? String, "routing", "the instance defined first gets the address")
        XCTAssertTrue((controlStatus(dir, "p2")["listen_error"] as? String)?.contains("address in use by instance 'p1'") == true)

        // Giving p2 its own port fixes it without a restart.
        let p2port = freePort()
        try harpctl(dir, "set", "proxy", "p2", "listen_port=\(p2port)")
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: p2port).get()) == "\(Self.pg1.port)" }, proxy.log)
        XCTAssertEqual(try serverPort(through: port).get(), "\(Self.pg1.port)")
    }

    // MARK: - Readiness without credentials

    func testReadinessNeedsNoCredentials() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let dir = TemporaryDirectory()
        let (port, http) = (freePort(), freePort())
        dir.write("config.yml", stanzas("r", etcd, dir) + "http: {enable: true, host: 127.0.0.1, port: \(http)}\n"
                  + "proxy: {name: p, location: dc1, listen_address: 127.0.0.1, listen_port: \(port), timeout: 1s}\n")
        try addNode(dir, cluster: "r", "node1", "dc1", on: Self.pg1)
        try harpctl(dir, "promote", "node1")
        // Run as a user PostgreSQL has no role for: PGUSER set to one, and, separately, none set
        // at all (libpq then takes the OS user: root in CI, which has no role either).
        for environment in [["PGUSER": "no_such_role_here"], [:]] {
            let proxy = try startProxy(dir, environment: environment)
            defer { proxy.stop() }  // at the end of each pass: the next one listens on the same ports
            XCTAssertTrue(eventually(timeout: 15) { httpGet(http, "/health/is-ready").status == 200 },
                          "\(environment): \(httpGet(http, "/health/is-ready"))\n\(proxy.log)")
            XCTAssertEqual(httpGet(http, "/health/is-ready").body, "true")
        }

        // A lead master that does not answer is not ready, and the reason says so.
        let dead = freePort()
        dir.write("boot-dead.yml", "cluster: {name: r}\nnodes:\n  - {name: node9, location: dc1, dsn: host=127.0.0.1 port=\(dead)}\n")
        try harpctl(dir, "apply", dir.file("boot-dead.yml"))
        try harpctl(dir, "promote", "node9")
        let proxy = try startProxy(dir, environment: ["PGUSER": "no_such_role_here"])
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 15) { httpGet(http, "/health/is-ready").status == 500 }, "\(httpGet(http, "/health/is-ready"))\n\(proxy.log)")
        let body = httpGet(http, "/health/is-ready").body
        XCTAssertTrue(body.contains("cannot connect to the lead master"), body)
    }
}

import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// harp-proxy following a real Patroni cluster (`dcs.leader_source: patroni`): Debian's patroni,
/// two PostgreSQL 15 members in streaming replication, a real etcd, the real binaries.
final class PatroniTests: XCTestCase {
    /// harp-proxy with one builtin instance following scope dc1, and its config folder.
    /// Keep the folder for as long as the process runs: it goes with the last reference to it.
    func startProxy(etcd: EtcdCluster, port: Int, holdTimeout: String = "15s", checkDSN: String? = nil,
                    extra: String = "") throws -> (TestProcess, TemporaryDirectory) {
        try startPatroniProxy(etcd: etcd, port: port, dcs: "  patroni_check_dsn: '\(checkDSN ?? "")'\n", proxy: "  hold_timeout: \(holdTimeout)\n",
                              top: extra)
    }

    /// Scenarios 1 to 3: clients reach Patroni's leader; a switchover cuts the old sessions and
    /// new clients reach the new leader; a crash of the leader is followed once Patroni fails over.
    /// With `patroni_check_dsn`: the new leader itself says when it has left recovery.
    func testClientsFollowPatronisLeaderThroughASwitchoverAndACrash() async throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd)
        defer { patroni.stop(); etcd.stop() }
        let (pg1, pg2) = (patroni.members[0].pgPort, patroni.members[1].pgPort)
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, checkDSN: "user=postgres dbname=postgres")
        defer { proxy.stop(); withExtendedLifetime(dir) {} }

        // 1. The proxy routes to the member Patroni's leader key names.
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: port).get()) == "\(pg1)" }, proxy.log)
        let status = parseObject((try? control(dir.path + "/control.sock", Array("status p1\n".utf8)))?.first ?? "")
        XCTAssertEqual((status["leader"] as? [String: Any])?["name"] as? String, "pg1", "\(status)")

        // 2. A switchover: the open session is cut with 57P01, new clients land on pg2, and a
        // writer that reconnects at once never reaches pg2 while it is still promoting.
        let session = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
        session.verboseErrors()
        XCTAssertEqual(try session.query("SELECT current_setting('port')"), "\(pg1)")
        try session.query("CREATE TABLE writes (n int, port int DEFAULT current_setting('port')::int)")
        let writer = Writer(conninfo: "host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=20 sslmode=disable")
        let writing = Thread { writer.run() }
        writing.start()
        XCTAssertTrue(eventually(timeout: 10) { writer.counts.ok > 50 })
        try patroni.switchover(from: "pg1", to: "pg2")
        XCTAssertTrue(eventually(timeout: 30) { patroni.leader() == "pg2" && patroni.accepts(1, writes: true) })
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) == "\(pg2)" }, proxy.log)
        let before = writer.counts.ok
        XCTAssertTrue(eventually(timeout: 10) { writer.counts.ok > before + 50 }, "writes go on, on pg2")
        writer.stop()
        XCTAssertTrue(eventually(timeout: 25) { writer.stopped })
        let (written, failures) = writer.counts
        XCTAssertEqual(failures.filter { $0.contains("read-only") }, [], "no write reached pg2 while it was still promoting")
        XCTAssertTrue(proxy.log.contains("not yet accepting writes") || proxy.log.contains("leader=\"pg2"), proxy.log)
        XCTAssertTrue(proxy.log.split(separator: "\n").contains { $0.contains("lead master pg2 takes writes") && $0.contains("PostgreSQL: pg_is_in_recovery() is false") },
                      "pg2 itself said so:\n\(proxy.log)")
        let onPg2 = try PostgresServer.psql(host: "127.0.0.1", port: pg2, "SELECT count(*) FROM writes WHERE port = \(pg2)")
        XCTAssertGreaterThan(Int(onPg2) ?? 0, 50, "\(written) written, \(failures.count) failed: \(failures.prefix(3))")
        let cut = await session.run("SELECT 1")
        guard case .failure(let error) = cut else { return XCTFail("the old session was cut") }
        XCTAssertTrue(error.description.contains("57P01"), "\(error)")
        XCTAssertTrue(proxy.log.contains("lead master changed"), proxy.log)

        // 3. pg2 crashes (Patroni and postmaster, kill -9): once its lease runs out Patroni makes
        // pg1 the leader, and the proxy follows.
        XCTAssertTrue(eventually(timeout: 60) { patroni.streams(0) }, "pg1 rejoined as a replica")
        patroni.crash(1)
        XCTAssertTrue(eventually(timeout: 40) { patroni.leader() == "pg1" && patroni.accepts(0, writes: true) }, "Patroni failed over")
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) == "\(pg1)" }, proxy.log)
        XCTAssertTrue(proxy.isRunning)
    }

    /// Scenario 4: etcd gone. Patroni demotes its leader after `retry_timeout` (its own
    /// fencing); harp-proxy fences once the leader key's lease (Patroni's `ttl`, 10 s here) has
    /// run out since etcd last answered, as it does with HARP's keys, and refuses new clients.
    func testTheProxyFencesWhenEtcdIsGoneForLongerThanPatronisLease() async throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd, members: 1)
        defer { patroni.stop(); etcd.stop() }
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, holdTimeout: "500ms")
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: port).get()) == "\(patroni.members[0].pgPort)" }, proxy.log)
        // The lease's TTL is looked up while etcd answers: Patroni's ttl.
        XCTAssertTrue(eventually(timeout: 10) {
            let status = parseObject((try? control(dir.path + "/control.sock", Array("status p1\n".utf8)))?.first ?? "")
            return (status["leader"] as? [String: Any])?["lease_ttl_s"] as? Int == 10
        }, proxy.log)
        etcd.kill(0)
        let killedAt = Date()
        XCTAssertTrue(eventually(timeout: 25) { proxy.log.contains("DCS unreachable longer than the leader lease: fencing") }, proxy.log)
        XCTAssertGreaterThan(Date().timeIntervalSince(killedAt), 5, "not before Patroni's 10 s lease could have run out (less the resync interval)")
        XCTAssertTrue(proxy.log.contains("lease_s=10.0"), "the lease is Patroni's ttl, looked up in etcd:\n\(proxy.log)")
        let refused = serverPort(through: port)
        XCTAssertTrue("\(refused)".contains("fenced"), "a new client reads why it is refused: \(refused)")
    }

    /// Scenario 5: pgbouncer mode follows a Patroni switchover, and a transaction-pooled client
    /// keeps its connection to PgBouncer: its next transaction runs on the new leader. With a
    /// `patroni_check_dsn` whose user PostgreSQL does not know: a WARNING says why, and Patroni's
    /// REST API says when the new leader has left recovery.
    func testPgBouncerModeFollowsAPatroniSwitchoverAndKeepsTheClient() async throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd)
        defer { patroni.stop(); etcd.stop() }
        let (pg1, pg2) = (patroni.members[0].pgPort, patroni.members[1].pgPort)
        let dir = TemporaryDirectory("harp-pgb")
        chmod(dir.path, 0o755)
        let users = dir.write("users.txt", "\"postgres\" \"\"\n")
        let port = freePort()
        dir.write("config.yml", """
            cluster: {name: harp}
            dcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], leader_source: patroni,
                  patroni_check_dsn: 'user=no_such_role dbname=postgres password=s3cret'}
            control: {socket: \(dir.path)/control.sock}
            proxy:
              name: pgb
              location: dc1
              type: pgbouncer
              listen_address: 127.0.0.1
              listen_port: \(port)
              database_name: postgres
              auth_type: trust
              auth_file: \(users)
              pool_mode: transaction
              session_transfer_mode: fast

            """)
        let proxy = try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                    logDirectory: dir.path)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 20) { (try? serverPort(through: port, timeout: 3).get()) == "\(pg1)" }, proxy.log)
        let client = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(pg1)")

        try patroni.switchover(from: "pg1", to: "pg2")
        XCTAssertTrue(eventually(timeout: 30) { patroni.leader() == "pg2" && patroni.accepts(1, writes: true) })
        XCTAssertTrue(eventually(timeout: 20) { (try? client.query("SELECT current_setting('port')")) == "\(pg2)" },
                      "the same client connection, its next transaction on pg2:\n\(proxy.log)")
        XCTAssertEqual(try client.query("SELECT pg_is_in_recovery()::text"), "false")
        XCTAssertTrue(client.isOpen)
        let lines = proxy.log.split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.contains("cannot ask lead master pg2 itself") && $0.contains("no_such_role") && $0.contains("REST API is asked meanwhile") },
                      proxy.log)
        XCTAssertTrue(lines.contains { $0.contains("lead master pg2 takes writes") && $0.contains("Patroni's REST API: role master") }, proxy.log)
        XCTAssertFalse(proxy.log.contains("s3cret"), "the password is never logged")
    }

    /// Bad values in Patroni's keys: logged, treated as no leader, never a crash or a guess.
    func testAMalformedMemberRecordIsNoLeaderAndIsLogged() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/service/dc1/leader", "pg1")
        try await client.put("/service/dc1/members/pg1", #"{"conn_url": 5432}"#)
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, extra: "log_level: info\n")
        defer { proxy.stop(); etcd.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 10) { proxy.log.contains("ignoring malformed DCS value") && proxy.log.contains("/service/dc1/members/pg1") }, proxy.log)
        let status = parseObject((try? control(dir.path + "/control.sock", Array("status p1\n".utf8)))?.first ?? "")
        XCTAssertEqual(status["state"] as? String, "no-leader", "\(status)")
        XCTAssertTrue((status["reason"] as? String)?.contains("no usable record") == true, "\(status)")

        // Fixed: the leader's address comes from the new record at once.
        let pg = SharedPostgres.first
        try await client.put("/service/dc1/members/pg1", #"{"conn_url":"postgres://127.0.0.1:\#(pg.port)/postgres","role":"master"}"#)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) == "\(pg.port)" }, proxy.log)
        XCTAssertTrue(proxy.isRunning)
    }

    /// One process, two Patroni scopes (the card's multi-location host): each instance follows
    /// its own scope; a switchover in one moves that instance alone, and a session through the
    /// other is neither cut nor moved.
    func testTwoScopesInOneProcessEachInstanceFollowsItsOwn() async throws {
        let etcd = try EtcdCluster()
        let dc1 = try PatroniCluster(etcd: etcd, scope: "dc1")
        let dc2 = try PatroniCluster(etcd: etcd, scope: "dc2", members: 1)
        defer { dc1.stop(); dc2.stop(); etcd.stop() }
        let (p1, p2) = (freePort(), freePort())
        let (proxy, dir) = try startProxy(etcd: etcd, port: p1)
        dir.write("conf.d/p2.yml", "proxy:\n  name: p2\n  location: dc2\n  listen_address: 127.0.0.1\n  listen_port: \(p2)\n")
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        // conf.d is read at start and on SIGHUP: p2 is added by a reload, as an operator would.
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: p1).get()) == "\(dc1.members[0].pgPort)" }, proxy.log)
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 15) { (try? serverPort(through: p2).get()) == "\(dc2.members[0].pgPort)" }, proxy.log)

        let other = try PGSession("host=127.0.0.1 port=\(p2) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
        XCTAssertEqual(try other.query("SELECT current_setting('port')"), "\(dc2.members[0].pgPort)")
        try dc1.switchover(from: "pg1", to: "pg2")
        XCTAssertTrue(eventually(timeout: 30) { dc1.leader() == "pg2" && dc1.accepts(1, writes: true) })
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: p1).get()) == "\(dc1.members[1].pgPort)" }, proxy.log)
        XCTAssertEqual(try other.query("SELECT current_setting('port')"), "\(dc2.members[0].pgPort)", "p2's session goes on, on dc2's leader")
        XCTAssertEqual(try serverPort(through: p2).get(), "\(dc2.members[0].pgPort)")
        let moves = proxy.log.components(separatedBy: "\n").filter { $0.contains("lead master changed") }
        XCTAssertTrue(!moves.isEmpty && moves.allSatisfy { $0.contains("instance=p1") }, "only p1 moved:\n\(moves)")
    }

    /// harpctl with `leader_source: patroni` reads Patroni's records and leaves promotion to it.
    func testHarpctlReadsPatronisLeaderAndRefusesToPromote() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/service/dc1/leader", "pg1")
        try await client.put("/service/dc1/members/pg1", #"{"conn_url":"postgres://127.0.0.1:5432/postgres","role":"master"}"#)
        try await client.put("/service/dc1/members/pg2", #"{"conn_url":"postgres://127.0.0.1:5433/postgres","role":"replica"}"#)
        let (proxy, dir) = try startProxy(etcd: etcd, port: freePort())
        proxy.stop()
        defer { etcd.stop() }
        func harpctl(_ arguments: String...) throws -> (status: Int32, output: String) {
            try runCommand(builtExecutable("harpctl"), ["-f", dir.file("config.yml")] + arguments)
        }
        let leader = try harpctl("get", "leader", "dc1", "-o", "json")
        XCTAssertEqual(leader.status, 0, leader.output)
        XCTAssertTrue(leader.output.contains("\"pg1\"") && leader.output.contains("127.0.0.1:5432"), leader.output)
        let nodes = try harpctl("get", "nodes", "-o", "json")
        XCTAssertTrue(nodes.output.contains("lead master") && nodes.output.contains("replica") && nodes.output.contains("pg2"), nodes.output)
        let promote = try harpctl("promote", "pg2")
        XCTAssertEqual(promote.status, 1)
        XCTAssertTrue(promote.output.contains("use patronictl switchover"), promote.output)
    }
}

/// Inserts through the proxy as fast as it can, reconnecting at once when its connection is
/// cut, as an application does; keeps every error's text.
final class Writer: @unchecked Sendable {
    let conninfo: String
    private let lock = NSLock()
    private var ok = 0
    private var failures: [String] = []
    private var stopping = false
    private(set) var stopped = false

    init(conninfo: String) { self.conninfo = conninfo }

    var counts: (ok: Int, failures: [String]) { lock.withLock { (ok, failures) } }
    func stop() { lock.withLock { stopping = true } }

    func run() {
        var session: PGSession?
        while !lock.withLock({ stopping }) {
            do {
                if session == nil { session = try PGSession(conninfo) }
                try session?.query("INSERT INTO writes (n) VALUES (1)")
                lock.withLock { ok += 1 }
            } catch {
                lock.withLock { failures.append("\(Date().formatted(.iso8601.time(includingFractionalSeconds: true))) \(error)") }
                session = nil
            }
        }
        lock.withLock { stopped = true }
    }
}

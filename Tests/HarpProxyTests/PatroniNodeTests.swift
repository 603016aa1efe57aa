import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A Patroni leader is a node with a life of its own, not only a key: its Patroni restarted
/// (the documented zero-downtime upgrade, or a kill), its PostgreSQL crashing in place, a
/// standby cluster's leader, and a check under way when the proxy is told to stop. Real Patroni,
/// etcd, PostgreSQL and PgBouncer.
final class PatroniNodeTests: XCTestCase {
    /// harp-proxy with one instance `p1` on scope dc1 (builtin, or pgbouncer with `pgbouncer: true`).
    func startProxy(etcd: EtcdCluster, port: Int, scope: String = "dc1", checkDSN: String = "user=postgres dbname=postgres",
                    pgbouncer: Bool = false, holdTimeout: String = "20s") throws -> (TestProcess, TemporaryDirectory) {
        let dir = TemporaryDirectory("harp-node")
        chmod(dir.path, 0o755)
        let users = dir.write("users.txt", "\"postgres\" \"\"\n")
        let mode = pgbouncer ? "  type: pgbouncer\n  database_name: postgres\n  auth_file: \(users)\n  auth_type: trust\n  pool_mode: transaction\n" : ""
        dir.write("config.yml", """
            cluster: {name: harp}
            dcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], leader_source: patroni, patroni_check_dsn: '\(checkDSN)'}
            control: {socket: \(dir.path)/control.sock}
            log_level: info
            proxy:
              name: p1
              location: \(scope)
              listen_address: 127.0.0.1
              listen_port: \(port)
              hold_timeout: \(holdTimeout)
            \(mode)
            """)
        let proxy = try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                    logDirectory: dir.path)
        return (proxy, dir)
    }

    /// One session that runs a query every 20 ms, and a new client every 50 ms: what a restart
    /// of the leader's Patroni does to each.
    final class Traffic: @unchecked Sendable {
        private let lock = NSLock()
        private var stopping = false
        private(set) var sessionQueries = 0
        private(set) var sessionFailures: [String] = []
        private(set) var clients = 0
        private(set) var refusals: [String] = []
        private var threads = 0

        init(conninfo: String, session: PGSession) {
            func loop(_ body: @escaping @Sendable () -> Void, every pause: UInt32) {
                lock.withLock { threads += 1 }
                Thread {
                    while !self.lock.withLock({ self.stopping }) {
                        body()
                        usleep(pause)
                    }
                    self.lock.withLock { self.threads -= 1 }
                }.start()
            }
            loop({
                do {
                    _ = try session.query("SELECT 1")
                    self.lock.withLock { self.sessionQueries += 1 }
                } catch { self.lock.withLock { self.sessionFailures.append("\(error)") } }
            }, every: 20_000)
            loop({
                do {
                    let client = try PGSession(conninfo)
                    _ = try client.query("SELECT 1")
                    self.lock.withLock { self.clients += 1 }
                } catch { self.lock.withLock { self.refusals.append("\(error)") } }
            }, every: 50_000)
        }

        var counts: (queries: Int, failures: [String], clients: Int, refusals: [String]) {
            lock.withLock { (sessionQueries, sessionFailures, clients, refusals) }
        }

        func stop() {
            lock.withLock { stopping = true }
            _ = eventually(timeout: 20) { self.lock.withLock { self.threads == 0 } }
        }
    }

    /// Patroni's documented zero-downtime upgrade (pause, restart Patroni, resume), then its
    /// Patroni killed -9 and started again: each time the leader key is written again for the
    /// same member under a new lease, and that is no leader change. The open session answers
    /// throughout, on the same backend, and no new client is refused.
    func runPatroniRestarts(pgbouncer: Bool) throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd, members: 1)
        defer { patroni.stop(); etcd.stop() }
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, pgbouncer: pgbouncer)
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        let conninfo = "host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable"
        XCTAssertTrue(eventually(timeout: 20) { (try? PGSession(conninfo).query("SELECT current_setting('port')")) == "\(patroni.members[0].pgPort)" },
                      proxy.log)
        let session = try PGSession(conninfo)
        let backend = try session.query("SELECT pg_backend_pid()")
        let traffic = Traffic(conninfo: conninfo, session: session)
        defer { traffic.stop() }
        let routingSince = proxy.log.count  // what the log says from here on

        for hard in [false, true] {
            let before = patroni.leaderRevision()
            if !hard { try patroni.maintenance(true) }
            try patroni.restartPatroni(0, kill: hard)
            XCTAssertTrue(eventually(timeout: 40) { (patroni.leaderRevision() ?? 0) > (before ?? 0) },
                          "Patroni wrote the leader key again (\(hard ? "killed" : "paused and stopped"))")
            if !hard { try patroni.maintenance(false) }
            let queries = traffic.counts.queries
            XCTAssertTrue(eventually(timeout: 10) { traffic.counts.queries > queries + 10 }, "the session goes on")
        }
        traffic.stop()
        let counts = traffic.counts
        XCTAssertEqual(counts.failures, [], "the session was never cut:\n\(proxy.log)")
        XCTAssertEqual(counts.refusals, [], "no new client was refused:\n\(proxy.log)")
        XCTAssertGreaterThan(counts.clients, 20)
        if !pgbouncer { XCTAssertEqual(try session.query("SELECT pg_backend_pid()"), backend, "the same backend throughout") }
        let since = String(proxy.log.dropFirst(routingSince))
        XCTAssertTrue(since.contains("lead master's key written again under a new lease"), "the log says what happened:\n\(proxy.log)")
        XCTAssertFalse(since.contains("lead master changed"), proxy.log)
        XCTAssertFalse(since.contains("waiting-for-writes"), "no new client was held:\n\(proxy.log)")
        if pgbouncer { XCTAssertFalse(since.contains("PAUSE"), "PgBouncer was never paused:\n\(proxy.log)") }
    }

    func testARestartOfTheLeadersPatroniKeepsEverySessionBuiltin() throws { try runPatroniRestarts(pgbouncer: false) }
    func testARestartOfTheLeadersPatroniKeepsEverySessionPgBouncer() throws { try runPatroniRestarts(pgbouncer: true) }

    /// The leader's postmaster killed -9 while writers run: Patroni starts it again read-only,
    /// then promotes it, and the key never changes. No write reaches it while it is read-only,
    /// and writes go on on the same leader.
    func runPostmasterCrashes(pgbouncer: Bool, checkDSN: String, crashes: Int) throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd, members: 1)
        defer { patroni.stop(); etcd.stop() }
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, checkDSN: checkDSN, pgbouncer: pgbouncer)
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        let pg1 = patroni.members[0].pgPort
        try PostgresServer.psql(host: "127.0.0.1", port: pg1, "CREATE TABLE writes (n int, port int DEFAULT current_setting('port')::int)")
        let conninfo = "host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=30 sslmode=disable"
        XCTAssertTrue(eventually(timeout: 20) { (try? PGSession(conninfo).query("SELECT current_setting('port')")) == "\(pg1)" }, proxy.log)
        let writers = (0..<4).map { _ in Writer(conninfo: conninfo) }
        for w in writers { Thread { w.run() }.start() }
        defer { for w in writers { w.stop() } }
        func written() -> Int { writers.reduce(0) { $0 + $1.counts.ok } }
        XCTAssertTrue(eventually(timeout: 20) { written() > 200 })
        for _ in 0..<crashes {
            patroni.killPostmaster(0)
            XCTAssertTrue(eventually(timeout: 5) { !patroni.accepts(0, writes: true) }, "the postmaster is gone")
            XCTAssertTrue(eventually(timeout: 60) { patroni.accepts(0, writes: true) }, "Patroni made pg1 take writes again")
            let now = written()
            // PgBouncer waits server_login_retry (15 s) after a failed login before it tries again.
            XCTAssertTrue(eventually(timeout: 60) { written() > now + 200 }, "writes go on through the proxy:\n\(proxy.log)")
        }
        for w in writers { w.stop() }
        XCTAssertTrue(eventually(timeout: 40) { writers.allSatisfy(\.stopped) })
        let failures = writers.flatMap { $0.counts.failures }
        XCTAssertEqual(failures.filter { $0.contains("read-only") }, [], "no write reached pg1 while it was read-only:\n\(proxy.log)")
        XCTAssertEqual(patroni.leader(), "pg1", "the key never moved")
        let stored = try PostgresServer.psql(host: "127.0.0.1", port: pg1, "SELECT count(*) FROM writes WHERE port = \(pg1)")
        XCTAssertGreaterThan(Int(stored) ?? 0, 200 * (crashes + 1))
        XCTAssertTrue(proxy.log.contains("does not take writes now"), "the proxy held new clients for a reason it says:\n\(proxy.log)")
    }

    func testACrashOfTheLeadersPostgresLetsNoWriteThroughWhileItIsReadOnlyBuiltin() throws {
        try runPostmasterCrashes(pgbouncer: false, checkDSN: "user=postgres dbname=postgres", crashes: 3)
    }

    /// PgBouncer connects to the leader itself: the leader's record (role replica, state
    /// starting) is what holds it; without a DSN, Patroni's REST API says when it takes writes.
    func testACrashOfTheLeadersPostgresLetsNoWriteThroughWhileItIsReadOnlyPgBouncer() throws {
        try runPostmasterCrashes(pgbouncer: true, checkDSN: "", crashes: 2)
    }

    /// A standby cluster's leader never takes writes: the instance says so (state, reason,
    /// naming the member), and a new client is refused at once with 57P03, not held.
    func testAStandbyClustersLeaderIsNamedAndClientsAreRefusedAtOnce() async throws {
        let etcd = try EtcdCluster()
        let primary = try PatroniCluster(etcd: etcd, scope: "dc1", members: 1)
        let standby = try PatroniCluster(etcd: etcd, scope: "dc2", members: 1, standbyOf: ("127.0.0.1", primary.members[0].pgPort))
        defer { standby.stop(); primary.stop(); etcd.stop() }
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port, scope: "dc2", holdTimeout: "60s")
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 20) {
            let status = parseObject((try? control(dir.path + "/control.sock", Array("status p1\n".utf8)))?.first ?? "")
            return status["state"] as? String == "standby-leader"
        }, proxy.log)
        let status = parseObject((try? control(dir.path + "/control.sock", Array("status p1\n".utf8)))?.first ?? "")
        let reason = status["reason"] as? String ?? ""
        XCTAssertTrue(reason.contains("pg1") && reason.contains("dc2") && reason.contains("standby"), "\(status)")
        let asked = ContinuousClock.now
        let refused = serverPort(through: port, timeout: 30)
        XCTAssertLessThan(ContinuousClock.now - asked, .seconds(30), "refused, not held for hold_timeout (60 s)")
        guard case .failure(let error) = refused else { return XCTFail("a standby leader served a client: \(refused)") }
        XCTAssertTrue("\(error)".contains("57P03") || "\(error)".contains("not accepting writes"), "\(error)")
        XCTAssertTrue("\(error)".contains("pg1") && "\(error)".contains("dc2"), "\(error)")
        XCTAssertTrue(proxy.log.contains("state=standby-leader"), proxy.log)
    }

    /// SIGTERM while a check waits on a lead master that never answers (accepts connections and
    /// says nothing, like a paused node): every check ends at once and the process exits within 2 s.
    func testSIGTERMDuringACheckExitsPromptly() async throws {
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let silent = try LoopbackListener(silent: .max, body: "")
        defer { silent.stop() }
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/service/dc1/leader", "pg1")
        try await client.put("/service/dc1/members/pg1", #"{"conn_url":"postgres://127.0.0.1:\#(silent.port)/postgres","api_url":"http://127.0.0.1:\#(silent.port)/patroni","role":"master","state":"running"}"#)
        let (proxy, dir) = try startProxy(etcd: etcd, port: freePort())
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 20) { proxy.log.contains("state=waiting-for-writes") && silent.accepted >= 1 }, proxy.log)
        let signalled = ContinuousClock.now
        proxy.signal(SIGTERM)
        XCTAssertTrue(eventually(timeout: 30) { !proxy.isRunning }, proxy.log)
        let took = ContinuousClock.now - signalled
        XCTAssertLessThan(took, .seconds(2), "stopped in \(took):\n\(proxy.log)")
        print("SIGTERM during a check: stopped in \(took)")
        XCTAssertTrue(proxy.log.contains("stopped"), proxy.log)
    }
}

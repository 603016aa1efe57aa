import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A replica instance (`route_to: replica`) following a real Patroni cluster of three members:
/// pg1 leads, pg2 and pg3 replicate.
final class PatroniReplicaTests: XCTestCase {
    func startProxy(etcd: EtcdCluster, port: Int, extra: String = "  hold_timeout: 20s\n") throws -> (TestProcess, TemporaryDirectory) {
        try startPatroniProxy(etcd: etcd, name: "r1", port: port, proxy: "  route_to: replica\n" + extra)
    }

    private func status(_ dir: TemporaryDirectory) -> [String: Any] {
        parseObject((try? control(dir.path + "/control.sock", Array("status r1\n".utf8)))?.first ?? "")
    }

    private func candidates(_ dir: TemporaryDirectory) -> [String] {
        (((status(dir)["replicas"] as? [String: Any])?["candidates"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }.sorted()
    }

    private func excluded(_ dir: TemporaryDirectory) -> [String: String] {
        let list = ((status(dir)["replicas"] as? [String: Any])?["excluded"] as? [[String: Any]]) ?? []
        return Dictionary(list.compactMap { e in (e["name"] as? String).map { ($0, e["reason"] as? String ?? "") } }) { $1 }
    }

    private func session(_ port: Int) throws -> PGSession {
        try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=20 sslmode=disable")
    }

    /// Clients spread across both replicas. pg3's postmaster killed: its sessions fail, and every
    /// new client is served (by pg2) with no refusal. pg3 behind by more than `max_replica_lag`
    /// (set live), then tagged `noloadbalance`: each time it gets no new client and keeps its
    /// session. A switchover to pg2: its read-only sessions are cut with the
    /// reason, and no new client of the replica port lands on it.
    func testReplicasOfAPatroniClusterThroughACrashALagATagAndASwitchover() async throws {
        let etcd = try EtcdCluster()
        let patroni = try PatroniCluster(etcd: etcd, members: 3)
        defer { patroni.stop(); etcd.stop() }
        let (pg1, pg2, pg3) = (patroni.members[0].pgPort, patroni.members[1].pgPort, patroni.members[2].pgPort)
        let port = freePort()
        let (proxy, dir) = try startProxy(etcd: etcd, port: port)
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 20) { self.candidates(dir) == ["pg2", "pg3"] }, "\(status(dir))\n\(proxy.log)")

        // Four clients: two on each replica, none on the leader.
        var sessions: [PGSession] = []
        for _ in 0..<4 { sessions.append(try session(port)) }
        let ports = try sessions.map { try $0.query("SELECT current_setting('port')") }
        XCTAssertEqual(ports.filter { $0 == "\(pg2)" }.count, 2, "\(ports)")
        XCTAssertEqual(ports.filter { $0 == "\(pg3)" }.count, 2, "\(ports)")

        // pg3's postmaster dies: its sessions fail; new clients are all served, none refused.
        patroni.killPostmaster(2)
        for (session, onPort) in zip(sessions, ports) where onPort == "\(pg3)" {
            // Its backend exits once it sees the postmaster gone.
            let failed = await eventuallyAsync(timeout: .seconds(10)) { if case .failure = await session.run("SELECT 1") { true } else { false } }
            XCTAssertTrue(failed, "a session on the dead replica still answers")
        }
        for i in 0..<10 {
            guard case .success(let served) = serverPort(through: port, timeout: 30) else { XCTFail("client \(i) refused"); continue }
            XCTAssertNotEqual(served, "\(pg1)", "a replica client on the leader")
        }
        let clients = status(dir)["clients"] as? [String: Any]
        XCTAssertEqual(clients?["refused"] as? Int, 0, "no client refused: \(proxy.log.suffix(2000))")

        // Patroni starts pg3 again; it is a candidate again, and gets a session.
        XCTAssertTrue(eventually(timeout: 60) { patroni.streams(2) && self.candidates(dir) == ["pg2", "pg3"] }, "\(status(dir))")
        var onPg3: PGSession?
        for _ in 0..<4 {
            let s = try session(port)
            if try s.query("SELECT current_setting('port')") == "\(pg3)" { onPg3 = s; break }
            sessions.append(s)
        }
        let kept = try XCTUnwrap(onPg3, "pg3 gets clients again")

        // pg3 falls behind, as Patroni 3 sees it (its received position, which its WAL receiver
        // stopped holds back) with max_replica_lag set live: no new client, its session stays.
        let layout = DCSLayout(cluster: "harp")
        try await EtcdClient(configuration: etcd.dcsConfiguration()).put(layout.proxyConfig("r1"), #"{"max_replica_lag": "1MB"}"#)
        let receiver = try XCTUnwrap(pid_t(try PostgresServer.psql(host: "127.0.0.1", port: pg3, "SELECT pid FROM pg_stat_wal_receiver")))
        kill(receiver, SIGSTOP)
        defer { kill(receiver, SIGCONT) }
        _ = try PostgresServer.psql(host: "127.0.0.1", port: pg1, "CREATE TABLE behind AS SELECT repeat('x', 1000) AS x FROM generate_series(1, 5000)")
        XCTAssertTrue(eventually(timeout: 30) { self.excluded(dir)["pg3"]?.hasPrefix("lags ") ?? false }, "\(patroni.memberRecord(2))\n\(status(dir))")
        for _ in 0..<4 { XCTAssertEqual(try serverPort(through: port).get(), "\(pg2)", "no new client for a lagging replica") }
        XCTAssertEqual(try kept.query("SELECT current_setting('port')"), "\(pg3)", "a lagging replica keeps its sessions")
        kill(receiver, SIGCONT)
        XCTAssertTrue(eventually(timeout: 30) { self.candidates(dir) == ["pg2", "pg3"] }, "caught up: \(status(dir))")

        // Tagged noloadbalance: no new client, its session stays.
        try patroni.setTags(2, "{noloadbalance: true}")
        XCTAssertTrue(eventually(timeout: 30) { self.excluded(dir)["pg3"] == "is tagged noloadbalance" }, "\(patroni.memberRecord(2))\n\(status(dir))")
        for _ in 0..<4 { XCTAssertEqual(try serverPort(through: port).get(), "\(pg2)") }
        XCTAssertEqual(try kept.query("SELECT current_setting('port')"), "\(pg3)", "a tagged replica keeps its sessions")
        XCTAssertTrue(proxy.log.contains("replica is no longer a candidate: its 1 sessions stay"), proxy.log)

        // A switchover to pg2: its sessions are cut; no replica client lands on it afterwards.
        let onPg2 = try session(port)
        XCTAssertEqual(try onPg2.query("SELECT current_setting('port')"), "\(pg2)")
        try patroni.switchover(from: "pg1", to: "pg2")
        XCTAssertTrue(eventually(timeout: 30) { patroni.leader() == "pg2" })
        XCTAssertTrue(eventually(timeout: 10) { self.excluded(dir)["pg2"] == "is the leader" }, "\(status(dir))")
        guard case .failure(let cut) = await onPg2.run("SELECT 1") else { return XCTFail("a replica session stayed on the new leader") }
        XCTAssertTrue(cut.description.contains("terminating connection because replica pg2 of dc1 is the leader (proxy r1)"), cut.description)
        for _ in 0..<4 {
            guard case .success(let served) = serverPort(through: port, timeout: 30) else { XCTFail("refused: \(status(dir))"); continue }
            XCTAssertEqual(served, "\(pg1)", "the old leader, now a replica, is the only candidate (pg3 is tagged out)")
        }
        withExtendedLifetime(sessions) {}
        XCTAssertTrue(proxy.isRunning)
    }

    /// `max_replica_lag` against Patroni's records as Patroni writes them (real etcd and
    /// PostgreSQL; the records written by the test, since Patroni 3 reports a replica's received
    /// position, which a paused replay does not hold back): a replica past the bound gets no new
    /// client and keeps its session; with every replica past it, a client is held, then refused
    /// with the reason; a replica that catches up gets clients again.
    func testALaggingReplicaGetsNoNewClientAndKeepsItsSessions() async throws {
        let (a, b) = (SharedPostgres.first, SharedPostgres.second)
        let etcd = try EtcdCluster()
        defer { etcd.stop() }
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        func member(_ port: Int, role: String, position: Int) -> String {
            #"{"conn_url":"postgres://127.0.0.1:\#(port)/postgres","state":"running","role":"\#(role)","version":"3.0.2","xlog_location":\#(position),"timeline":1}"#
        }
        try await client.put("/service/dc1/leader", "pg1")
        try await client.put("/service/dc1/members/pg1", member(freePort(), role: "master", position: 1_000_000))
        try await client.put("/service/dc1/status", #"{"optime":1000000}"#)
        try await client.put("/service/dc1/members/pg2", member(a.port, role: "replica", position: 1_000_000))
        try await client.put("/service/dc1/members/pg3", member(b.port, role: "replica", position: 990_000))
        let (port, http) = (freePort(), freePort())
        let (proxy, dir) = try startPatroniProxy(etcd: etcd, name: "r1", port: port,
                                                 proxy: "  route_to: replica\n  max_replica_lag: 64kB\n  hold_timeout: 1s\n",
                                                 top: "http: {enable: true, host: 127.0.0.1, port: \(http)}\n")
        defer { proxy.stop(); withExtendedLifetime(dir) {} }
        XCTAssertTrue(eventually(timeout: 20) { self.candidates(dir) == ["pg2", "pg3"] }, "\(status(dir))\n\(proxy.log)")

        // Two clients: one on each.
        let first = try session(port), second = try session(port)
        let onA = try first.query("SELECT current_setting('port')") == "\(a.port)"
        let onPg2 = onA ? first : second
        XCTAssertEqual(try onPg2.query("SELECT current_setting('port')"), "\(a.port)")
        // pg2 falls behind by 1 MB: no new client for it; its session stays.
        try await client.put("/service/dc1/status", #"{"optime":2000000}"#)
        try await client.put("/service/dc1/members/pg3", member(b.port, role: "replica", position: 1_990_000))
        XCTAssertTrue(eventually(timeout: 10) { self.excluded(dir)["pg2"] == "lags 1000000 bytes behind the leader (max_replica_lag 65536)" }, "\(status(dir))")
        for _ in 0..<3 { XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)") }
        XCTAssertEqual(try onPg2.query("SELECT current_setting('port')"), "\(a.port)", "a lagging replica keeps its sessions")
        // Sessions by member in /metrics: pg2 keeps its one, pg3 has the other; the leader has none.
        XCTAssertTrue(eventually(timeout: 10) {
            let body = httpGet(http, "/metrics").body
            return body.contains(#"harp_proxy_member_sessions{instance="r1",member="pg2"} 1"#)
                && body.contains(#"harp_proxy_member_sessions{instance="r1",member="pg3"} 1"#)
                && !body.contains(#"member="pg1""#)
        }, httpGet(http, "/metrics").body)

        // Both behind: held for hold_timeout, then refused with the reason.
        try await client.put("/service/dc1/status", #"{"optime":3000000}"#)
        XCTAssertTrue(eventually(timeout: 10) { self.candidates(dir).isEmpty }, "\(status(dir))")
        guard case .failure(let refusal) = serverPort(through: port) else { return XCTFail("served with every replica past the bound") }
        XCTAssertTrue(refusal.description.contains("no replica of dc1 within max_replica_lag (65536 bytes): pg2 lags 2000000 bytes behind the leader"), refusal.description)
        XCTAssertEqual(status(dir)["state"] as? String, "no-replica")

        // pg2 catches up: clients again.
        try await client.put("/service/dc1/members/pg2", member(a.port, role: "replica", position: 3_000_000))
        XCTAssertTrue(eventually(timeout: 10) { self.candidates(dir) == ["pg2"] }, "\(status(dir))")
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)")
        withExtendedLifetime((first, second)) {}
        XCTAssertTrue(proxy.isRunning)
    }
}

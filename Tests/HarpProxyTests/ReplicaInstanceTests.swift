import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
@testable import HarpProxy
import HarpTestFixtures
import XCTest

/// Replica instances (`route_to: replica`) on HARP's layout, through real etcd and real
/// PostgreSQL servers: the lead master's node is elsewhere; n1 and n2 are the replicas.
final class ReplicaInstanceTests: XCTestCase {
    var a: PostgresServer { SharedPostgres.first }
    var b: PostgresServer { SharedPostgres.second }

    private func replicaRig(port: Int, _ extra: [String: DirectiveValue] = [:]) async throws -> ProxyRig {
        var directives: [String: DirectiveValue] = ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                                    "route_to": .string("replica"), "hold_timeout": .duration(.milliseconds(400))]
        directives.merge(extra) { $1 }
        let rig = try ProxyRig([("r1", "dc1", directives)])
        stopAtTeardown(rig)
        try await rig.node("lead", location: "dc1", dsn: "host=127.0.0.1 port=\(freePort())")
        try await rig.leader("dc1", "lead")
        return rig
    }

    /// Waits until r1's plan satisfies `condition` and it listens.
    private func waitForPlan(_ rig: ProxyRig, _ condition: @escaping @Sendable (InstancePlan) -> Bool) async -> Bool {
        await eventuallyAsync(timeout: .seconds(10)) {
            guard let s = await rig.host.status().first(where: { $0.name == "r1" }), s.listen != nil, let plan = s.plan else { return false }
            return condition(plan)
        }
    }

    private func session(_ port: Int) throws -> PGSession {
        try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
    }

    /// Six clients spread three and three across the two replicas; a third replica that refuses
    /// every connect costs no client a refusal (each goes straight to the next). The lead master
    /// named a replica: its sessions are cut with the reason, the other replica's stay, and new
    /// clients go to the other one.
    func testClientsSpreadAcrossReplicasARefusingOneIsSkippedAndAPromotedOneIsCut() async throws {
        let port = freePort()
        let rig = try await replicaRig(port: port)
        try await rig.node("n1", location: "dc1", server: a)
        try await rig.node("n2", location: "dc1", server: b)
        try await rig.node("n3", location: "dc1", dsn: "host=127.0.0.1 port=\(freePort())")
        let ready = await waitForPlan(rig) { $0.replicas?.targets.map(\.name) == ["n1", "n2", "n3"] }
        XCTAssertTrue(ready)

        var sessions: [PGSession] = []
        for _ in 0..<6 { sessions.append(try session(port)) }
        let ports = try sessions.map { try $0.query("SELECT current_setting('port')") }
        XCTAssertEqual(ports.filter { $0 == "\(a.port)" }.count, 3, "\(ports)")
        XCTAssertEqual(ports.filter { $0 == "\(b.port)" }.count, 3, "\(ports)")
        let counters = await rig.counters("r1")
        XCTAssertEqual(counters.refused, 0, "no client refused: the refusing replica was skipped")
        XCTAssertEqual(counters.sessionsByMember["n1"], 3)
        XCTAssertEqual(counters.sessionsByMember["n2"], 3)
        XCTAssertEqual(counters.sessionsByMember["n3"], 0)

        // n1 becomes the lead master: read-only clients must not stay on it.
        try await rig.leader("dc1", "n1")
        let promoted = await waitForPlan(rig) { $0.replicas?.set.excluded.contains { $0.name == "n1" && $0.leads } ?? false }
        XCTAssertTrue(promoted)
        for (session, onPort) in zip(sessions, ports) {
            let result = await session.run("SELECT current_setting('port')")
            if onPort == "\(a.port)" {
                guard case .failure(let error) = result else { XCTFail("a session on the promoted replica still runs"); continue }
                XCTAssertTrue(error.description.contains("terminating connection because replica n1 of dc1 is the lead master (proxy r1)"), error.description)
            } else {
                XCTAssertEqual(try? result.get(), "\(b.port)", "a session on the other replica stays")
            }
        }
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "a new client goes to the remaining replica")
        let status = await rig.host.status().first { $0.name == "r1" }
        XCTAssertEqual(status?.state, "routing-replicas")
    }

    /// No replica: a client is held up to `hold_timeout`, then refused with the reason. With
    /// `replica_fallback: lead_master` (set live), it goes to the lead master instead; once a
    /// replica appears, new clients go to it.
    func testNoReplicaHoldsThenRefusesWithTheReasonOrFallsBackWhenAskedTo() async throws {
        let port = freePort()
        let rig = try await replicaRig(port: port)
        try await rig.node("lead", location: "dc1", server: a)
        let waiting = await waitForPlan(rig) { $0.stateName == "no-replica" }
        XCTAssertTrue(waiting)
        let started = Date()
        guard case .failure(let refusal) = serverPort(through: port) else { return XCTFail("served with no replica") }
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 0.3, "held for hold_timeout first")
        XCTAssertTrue(refusal.description.contains("no replica of dc1 in the DCS (proxy r1)"), refusal.description)
        let refusedNoReplica = await rig.counters("r1").refusedByReason["no_replica"]
        XCTAssertEqual(refusedNoReplica, 1)

        try await rig.client.put(rig.layout.proxyConfig("r1"), #"{"replica_fallback": "lead_master"}"#)
        let fellBack = await waitForPlan(rig) { $0.stateName == "replica-fallback" }
        XCTAssertTrue(fellBack)
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)", "the lead master, as asked")

        try await rig.node("n2", location: "dc1", server: b)
        let replica = await waitForPlan(rig) { $0.stateName == "routing-replicas" }
        XCTAssertTrue(replica)
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "the new replica gets the next client")
    }

    /// `route_to` set live in the DCS (as `harpctl set proxy` writes it): a lead-master
    /// instance's session is cut with the reason, and the next client goes to a replica; a bad
    /// value is refused with the key named, and the instance keeps routing as it did.
    func testRouteToIsTakenLiveAndABadValueIsRefusedNamingTheKey() async throws {
        let port = freePort()
        let rig = try await ProxyRig.routing(port: port, node1: a, node2: b)
        stopAtTeardown(rig)
        let held = try session(port)
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(a.port)")

        try await rig.client.put(rig.layout.proxyConfig("p1"), #"{"route_to": "replicas", "max_replica_lag": "16 MiB"}"#)
        let lines: @Sendable () -> [String] = { rig.capture.all.map { $0.message + " " + ($0.metadata["reason"] ?? "") } }
        let logged = await eventuallyAsync(timeout: .seconds(10)) {
            lines().contains { $0.contains("'route_to': expected one of lead_master, replica") }
                && lines().contains { $0.contains("'max_replica_lag': expected a size") }
        }
        XCTAssertTrue(logged, lines().suffix(20).joined(separator: "\n"))
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(a.port)", "a bad value changes nothing")

        try await rig.client.put(rig.layout.proxyConfig("p1"), #"{"route_to": "replica"}"#)
        let switched = await eventuallyAsync(timeout: .seconds(10)) {
            await rig.host.status().first { $0.name == "p1" }?.plan?.replicas?.targets.map(\.name) == ["node2"]
        }
        XCTAssertTrue(switched)
        guard case .failure(let cut) = await held.run("SELECT 1") else { return XCTFail("the lead master's session stays") }
        XCTAssertTrue(cut.description.contains("terminating connection because route_to changed to replica (proxy p1)"), cut.description)
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "the replica gets the next client")
    }
}

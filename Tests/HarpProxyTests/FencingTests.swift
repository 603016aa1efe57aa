import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
@testable import HarpProxy
import HarpTestFixtures
import XCTest

/// What the builtin mode does when etcd itself goes away: `dcs_failure_policy` fence or keep.
final class FencingTests: XCTestCase {
    static var pg: PostgresServer { SharedPostgres.first }

    /// A rig whose leader key sits on a 2 s lease that the test keeps alive until etcd dies, or
    /// (`leased` false) on no lease.
    func rig(policy: String, port: Int, leased: Bool = true, _ extra: [String: DirectiveValue] = [:]) async throws -> (ProxyRig, Task<Void, Never>) {
        var directives: [String: DirectiveValue] = ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                                    "dcs_failure_policy": .string(policy), "hold_timeout": .duration(.milliseconds(500))]
        directives.merge(extra) { $1 }
        let rig = try ProxyRig([("p1", "dc1", directives)], requestTimeout: .milliseconds(200), resyncInterval: .milliseconds(300))
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: Self.pg)
        let lease = leased ? try await rig.client.leaseGrant(ttl: 2).id : 0
        try await rig.leader("dc1", "node1", lease: lease)
        let client = rig.client
        let keeper = Task {
            while leased, !Task.isCancelled {
                _ = try? await client.leaseKeepAlive(lease)
                try? await Task.sleep(for: .milliseconds(400))  // renewals well within the 2 s TTL
            }
        }
        addTeardownBlock { keeper.cancel() }
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        if leased {
            // The host learns the lease's TTL before the outage (without it, it would assume leader_lease_duration).
            let host = rig.host
            let learned = await eventuallyAsync(timeout: .seconds(5)) { await host.leaseTTLs[lease] != nil }
            XCTAssertTrue(learned, "the host looked the lease's TTL up")
        }
        return (rig, keeper)
    }

    /// Opens a session tagged `tag` through the rig, kills etcd, and returns how long after the
    /// kill the session was closed (nil: not within 10 s), with the session.
    func fenceAfterKillingEtcd(_ rig: ProxyRig, port: Int, tag: String) throws -> (TimeInterval?, TestProcess) {
        let session = try openSession(through: port, tag: tag, logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: Self.pg, tag))
        rig.etcd.kill(0)
        let killedAt = Date()
        guard eventually(timeout: 10, { !session.isRunning }) else { return (nil, session) }
        return (Date().timeIntervalSince(killedAt), session)
    }

    func testFenceClosesConnectionsAfterTheLeaseTTLAndRoutingRecovers() async throws {
        let port = freePort()
        let (rig, _) = try await rig(policy: "fence", port: port)
        let (closed, session) = try fenceAfterKillingEtcd(rig, port: port, tag: "fence")
        guard let closedAfter = closed else { return XCTFail("fenced: connections close once the outage outlasts the lease") }
        XCTAssertGreaterThanOrEqual(closedAfter, 1.5, "not before the lease could have expired")
        XCTAssertLessThan(closedAfter, 5, "the key's 2 s lease, not the 6 s leader_lease_duration, which is for keys without one")
        XCTAssertTrue(session.log.contains("FATAL:  terminating connection because the proxy is fenced: DCS unreachable for"),
                      "the cut session, in the middle of a query, reads why: \(session.log)")
        guard case .failure(let refused) = serverPort(through: port) else { return XCTFail("a fenced proxy routed a client") }
        XCTAssertTrue(refused.description.contains("57P03") || refused.description.contains("no lead master"), refused.description)
        let warning = rig.capture.messages(at: .warning).first { $0.message.contains("fencing") }
        XCTAssertEqual(warning?.metadata["lease_s"].flatMap(Double.init), 2)
        XCTAssertGreaterThanOrEqual(warning?.metadata["outage_s"].flatMap(Double.init) ?? 0, 2, "the outage's duration: \(warning?.metadata ?? [:])")

        try rig.etcd.restart(0)
        let recovered = await rig.waitUntilRouting("p1", to: "node1", timeout: .seconds(15))
        XCTAssertTrue(recovered, "routing resumes when the DCS is back")
        XCTAssertEqual(try serverPort(through: port).get(), "\(Self.pg.port)")
    }

    /// A leader key without a lease: the proxy assumes `leader_lease_duration`.
    func testFenceWithoutALeaseUsesLeaderLeaseDuration() async throws {
        let port = freePort()
        let (rig, _) = try await rig(policy: "fence", port: port, leased: false, ["leader_lease_duration": .duration(.seconds(1))])
        let (closed, _) = try fenceAfterKillingEtcd(rig, port: port, tag: "fence-nolease")
        guard let closedAfter = closed else { return XCTFail("fenced once the outage outlasts leader_lease_duration") }
        // From the last answer of etcd, which a resync (every 300 ms) may have had up to 0.3 s
        // before the kill.
        XCTAssertGreaterThanOrEqual(closedAfter, 0.6, "not before leader_lease_duration")
        XCTAssertLessThan(closedAfter, 5, "leader_lease_duration is 1 s here, not the default 6 s")
        let warning = rig.capture.messages(at: .warning).first { $0.message.contains("fencing") }
        XCTAssertEqual(warning?.metadata["lease_s"].flatMap(Double.init), 1, "\(warning?.metadata ?? [:])")
    }

    func testKeepRoutesToTheLastKnownLeaderThroughAnOutage() async throws {
        let port = freePort()
        let (rig, _) = try await rig(policy: "keep", port: port)
        let session = try openSession(through: port, tag: "keep", logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "keep"))

        rig.etcd.kill(0)
        try await Task.sleep(for: .seconds(4))  // past the 2 s lease, when fencing would have cut the session
        XCTAssertTrue(session.isRunning, "keep: the session survives an outage longer than the lease")
        XCTAssertEqual(try serverPort(through: port).get(), "\(Self.pg.port)", "and new clients still reach the last known leader")
        XCTAssertTrue(rig.capture.messages(at: .warning).contains { $0.message.contains("dcs_failure_policy is keep") })

        try rig.etcd.restart(0)
        let recovered = await rig.waitUntilRouting("p1", to: "node1", timeout: .seconds(15))
        XCTAssertTrue(recovered)
    }
}

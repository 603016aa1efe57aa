import HarpConfig
import HarpDCS
import HarpTestFixtures
import Logging
import XCTest

/// The shared session: watch, resync, failover between members, health logging. Real etcd.
final class DCSSessionTests: XCTestCase {
    func testWatchDeliversPutsAndDeletesAsSnapshots() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/harp/c/nodes/node1", "before")
        // A long resync interval: what arrives here arrives through the watch.
        let session = DCSSession(configuration: etcd.dcsConfiguration(resyncInterval: .seconds(600)), prefix: "/harp/c/")
        session.start()
        defer { session.shutdown() }

        let first = await session.waitForSnapshot(timeout: .seconds(10)) { $0.synced }
        XCTAssertEqual(first?["/harp/c/nodes/node1"]?.value, "before")

        try await client.put("/harp/c/nodes/node2", "new")
        try await client.put("/harp/other/x", "not ours")
        let added = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/nodes/node2"] != nil }
        XCTAssertEqual(added?["/harp/c/nodes/node2"]?.value, "new")
        XCTAssertNil(added?["/harp/other/x"])

        try await client.delete("/harp/c/nodes/node1")
        let removed = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/nodes/node1"] == nil }
        XCTAssertNotNil(removed)
        XCTAssertGreaterThan(removed!.revision, first!.revision)
        XCTAssertEqual(session.statistics.resyncs, 1, "only the first read: the rest came through the watch")
    }

    /// Keys the caller says it never reads (the proxies' own status records) stay out of the
    /// snapshots, by watch and by resync alike: writing one publishes no snapshot.
    func testIgnoredKeysPublishNoSnapshot() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/harp/c/proxies/p1/status", "before")
        try await client.put("/harp/c/nodes/node1", "one")
        let session = DCSSession(configuration: etcd.dcsConfiguration(resyncInterval: .milliseconds(300)), prefix: "/harp/c/",
                                 ignoring: { $0.hasSuffix("/status") })
        session.start()
        defer { session.shutdown() }
        let first = await session.waitForSnapshot(timeout: .seconds(10)) { $0.synced }
        XCTAssertEqual(first?["/harp/c/nodes/node1"]?.value, "one")
        XCTAssertNil(first?["/harp/c/proxies/p1/status"], "not in the first read")

        var snapshots = session.snapshots().makeAsyncIterator()
        _ = await snapshots.next()  // the current one
        for i in 0..<3 { try await client.put("/harp/c/proxies/p1/status", "\(i)") }
        // Two resyncs too: neither may take the ignored writes for news.
        let resyncs = session.statistics.resyncs
        let resynced = await eventuallyAsync(timeout: .seconds(5)) { session.statistics.resyncs >= resyncs + 2 }
        XCTAssertTrue(resynced, "\(session.statistics)")
        try await client.put("/harp/c/nodes/node2", "two")
        let next = await snapshots.next()
        XCTAssertEqual(next?["/harp/c/nodes/node2"]?.value, "two", "the next snapshot is the one a relevant write made")
        XCTAssertNil(next?["/harp/c/proxies/p1/status"])
        XCTAssertEqual(session.statistics.repairs, 0, "the resyncs did not take the ignored writes for a dead watch")
    }

    func testAKeyOnALeaseThatNobodyRenewsDisappears() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let session = DCSSession(configuration: etcd.dcsConfiguration(resyncInterval: .seconds(600)), prefix: "/harp/c/")
        session.start()
        defer { session.shutdown() }
        let lease = try await client.leaseGrant(ttl: 1)
        try await client.put("/harp/c/locations/dc1/leader", #"{"name":"node1"}"#, lease: lease.id)
        let present = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/locations/dc1/leader"] != nil }
        XCTAssertEqual(present?["/harp/c/locations/dc1/leader"]?.lease, lease.id)
        let expired = await session.waitForSnapshot(timeout: .seconds(10)) { $0.synced && $0["/harp/c/locations/dc1/leader"] == nil }
        XCTAssertNotNil(expired, "the key goes when its lease expires, and the watch says so")
    }

    func testWatchSurvivesTheLossOfItsMember() async throws {
        let etcd = try EtcdCluster(members: 3)
        let writer = EtcdClient(configuration: etcd.dcsConfiguration())
        let session = DCSSession(configuration: etcd.dcsConfiguration(resyncInterval: .seconds(600)), prefix: "/harp/c/")
        session.start()
        defer { session.shutdown() }
        try await writer.put("/harp/c/a", "1")
        _ = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/c/a"] != nil }
        let streaming = await eventuallyAsync { session.health.watchEndpoint != nil }
        XCTAssertTrue(streaming)
        let watched = try XCTUnwrap(session.health.watchEndpoint)
        let victim = try XCTUnwrap(etcd.endpoints.firstIndex { $0.url == watched })

        etcd.kill(victim)
        // Written after the kill, through the survivors.
        var survivors = etcd.dcsConfiguration()
        survivors.endpoints.remove(at: victim)
        let after = EtcdClient(configuration: survivors)
        var written = false
        for _ in 0..<50 where !written {
            written = (try? await after.put("/harp/c/b", "after-kill")) != nil
            if !written { try await Task.sleep(for: .milliseconds(100)) }  // pacing while the survivors elect a leader
        }
        XCTAssertTrue(written)
        let seen = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/c/b"]?.value == "after-kill" }
        XCTAssertNotNil(seen, "events written after the kill still arrive, through another member")
        XCTAssertNotEqual(session.health.watchEndpoint, watched)
        XCTAssertEqual(session.statistics.resyncs, 1, "delivered by the watch, not by a resync")
    }

    func testResyncRepairsWhatASilentlyDeadWatchMissed() async throws {
        let etcd = try EtcdCluster()
        let relay = try FreezableRelay(to: etcd.members[0].clientPort, logDirectory: etcd.directory.path)
        let capture = LogCapture()
        var configuration = etcd.dcsConfiguration(requestTimeout: .milliseconds(300), resyncInterval: .seconds(1))
        // The relay first: the watch streams through it.
        configuration.endpoints = [DCSEndpoint(tls: false, host: "127.0.0.1", port: relay.port)] + configuration.endpoints
        let session = DCSSession(configuration: configuration, prefix: "/harp/c/", logger: capture.logger())
        session.start()
        defer { session.shutdown() }
        let direct = EtcdClient(configuration: etcd.dcsConfiguration())
        try await direct.put("/harp/c/k", "1")
        _ = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/k"]?.value == "1" }
        let streaming = await eventuallyAsync { session.health.watchEndpoint != nil }
        XCTAssertTrue(streaming)
        XCTAssertEqual(session.health.watchEndpoint, "http://127.0.0.1:\(relay.port)")

        // The watch's connection now stays open and says nothing, like a dropped network path.
        relay.freeze()
        try await direct.put("/harp/c/k", "2")
        let repaired = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/c/k"]?.value == "2" }
        XCTAssertNotNil(repaired, "the periodic re-read repairs the missed change")
        let restarted = await eventuallyAsync { session.statistics.repairs >= 1 && session.statistics.watchRestarts >= 1 }
        XCTAssertTrue(restarted, "\(session.statistics)")
        XCTAssertTrue(capture.messages(at: .warning).contains { $0.message.contains("watch had not delivered") })

        // The restarted watch streams again, through the member that answers.
        try await direct.put("/harp/c/k", "3")
        let live = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/k"]?.value == "3" }
        XCTAssertNotNil(live)
        relay.thaw()
    }

    func testCompactionWhileTheWatchIsAwayIsRepairedByARead() async throws {
        let etcd = try EtcdCluster()
        let relay = try FreezableRelay(to: etcd.members[0].clientPort, logDirectory: etcd.directory.path)
        var configuration = etcd.dcsConfiguration(resyncInterval: .seconds(600))
        configuration.endpoints = [DCSEndpoint(tls: false, host: "127.0.0.1", port: relay.port)]
        let session = DCSSession(configuration: configuration, prefix: "/harp/c/")
        session.start()
        defer { session.shutdown() }
        let direct = EtcdClient(configuration: etcd.dcsConfiguration())
        try await direct.put("/harp/c/k", "1")
        _ = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/k"]?.value == "1" }
        let streaming = await eventuallyAsync { session.health.watchEndpoint != nil }
        XCTAssertTrue(streaming)

        relay.stop()  // the watch breaks and cannot come back yet
        try await direct.put("/harp/c/k", "2")
        let last = try await direct.put("/harp/c/j", "new")
        try await direct.compact(revision: last)
        try relay.start()

        let seen = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/c/k"]?.value == "2" && $0["/harp/c/j"] != nil }
        XCTAssertNotNil(seen)
        XCTAssertEqual(session.statistics.compactions, 1)
    }

    func testOutageIsLoggedOnceAndRecoveryOnce() async throws {
        let etcd = try EtcdCluster()
        let capture = LogCapture()
        let session = DCSSession(configuration: etcd.dcsConfiguration(requestTimeout: .milliseconds(200), resyncInterval: .milliseconds(300)),
                                 prefix: "/harp/c/", logger: capture.logger())
        session.start()
        defer { session.shutdown() }
        _ = await session.waitForSnapshot(timeout: .seconds(5)) { $0.synced }

        etcd.kill(0)
        let down = await session.waitForSnapshot(timeout: .seconds(10)) { !$0.reachable }
        XCTAssertNotNil(down?.unreachableSince)
        try await Task.sleep(for: .seconds(2))  // many failed retries meanwhile, none of which may log again
        XCTAssertEqual(capture.messages(at: .warning).filter { $0.message.contains("DCS unreachable") }.count, 1)

        try etcd.restart(0)
        let up = await session.waitForSnapshot(timeout: .seconds(15)) { $0.reachable }
        XCTAssertNotNil(up)
        let logged = await eventuallyAsync { capture.messages(at: .info).contains { $0.message.contains("DCS reachable again") } }
        XCTAssertTrue(logged)
        XCTAssertEqual(capture.messages(at: .info).filter { $0.message.contains("DCS reachable again") }.count, 1)
        XCTAssertEqual(capture.messages(at: .warning).filter { $0.message.contains("DCS unreachable") }.count, 1)

        // And the watch works again.
        try await EtcdClient(configuration: etcd.dcsConfiguration()).put("/harp/c/back", "yes")
        let seen = await session.waitForSnapshot(timeout: .seconds(5)) { $0["/harp/c/back"] != nil }
        XCTAssertNotNil(seen)
    }
}

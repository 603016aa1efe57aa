import HarpConfig
import HarpDCS
import HarpTestFixtures
import XCTest

/// The etcd client against a real etcd 3.4 that the test starts.
final class EtcdClientTests: XCTestCase {
    func testPutRangeTxnAndDeleteOnARealEtcd() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())

        let r1 = try await client.put("/harp/t/nodes/node1", #"{"name":"node1"}"#)
        try await client.put("/harp/t/nodes/node2", #"{"name":"node2"}"#)
        try await client.put("/harp/u/other", "x")

        let one = try await client.range("/harp/t/nodes/node1")
        XCTAssertEqual(one.kvs.map(\.value), [#"{"name":"node1"}"#])
        XCTAssertEqual(one.kvs.first?.modRevision, r1)

        let prefix = try await client.range("/harp/t/", prefix: true)
        XCTAssertEqual(prefix.kvs.map(\.key), ["/harp/t/nodes/node1", "/harp/t/nodes/node2"], "a prefix read must not reach /harp/u/")

        // Compare-and-swap: the first holds, the second loses because the value moved on.
        let leader = "/harp/t/locations/dc1/leader"
        let created = try await client.txn(compare: [.absent(leader)], success: [.put(key: leader, value: #"{"name":"node1"}"#)])
        XCTAssertTrue(created.succeeded)
        let swapped = try await client.txn(compare: [EtcdCompare(key: leader, .equal, .value(#"{"name":"node1"}"#))],
                                           success: [.put(key: leader, value: #"{"name":"node2"}"#)])
        XCTAssertTrue(swapped.succeeded)
        let lost = try await client.txn(compare: [EtcdCompare(key: leader, .equal, .value(#"{"name":"node1"}"#))],
                                        success: [.put(key: leader, value: #"{"name":"node3"}"#)],
                                        failure: [.range(key: leader)])
        XCTAssertFalse(lost.succeeded)
        XCTAssertEqual(lost.ranges.first?.first?.value, #"{"name":"node2"}"#, "the failure branch reads the current value")

        let deleted = try await client.delete("/harp/t/nodes/", prefix: true)
        XCTAssertEqual(deleted, 2)
        let after = try await client.range("/harp/t/nodes/", prefix: true)
        XCTAssertTrue(after.kvs.isEmpty)
    }

    func testLeaseKeepsKeyWhileRenewedAndDropsItWhenRevoked() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let lease = try await client.leaseGrant(ttl: 2)
        XCTAssertEqual(lease.ttl, 2)
        try await client.put("/harp/t/leased", "v", lease: lease.id)
        let stored = try await client.range("/harp/t/leased")
        XCTAssertEqual(stored.kvs.first?.lease, lease.id)

        // Renewed for 3 s, longer than the TTL: the key must still be there.
        for _ in 0..<6 {
            let ttl = try await client.leaseKeepAlive(lease.id)
            XCTAssertGreaterThan(ttl, 0)
            try await Task.sleep(for: .milliseconds(500))
        }
        let renewed = try await client.range("/harp/t/leased")
        XCTAssertEqual(renewed.kvs.count, 1)
        let ttl = try await client.leaseTimeToLive(lease.id)
        XCTAssertEqual(ttl.granted, 2)

        try await client.leaseRevoke(lease.id)
        let revoked = try await client.range("/harp/t/leased")
        XCTAssertTrue(revoked.kvs.isEmpty, "revoking the lease deletes its keys at once")
        let again = try await client.leaseKeepAlive(lease.id)
        XCTAssertEqual(again, 0, "a revoked lease cannot be renewed")
    }

    func testADeadEndpointIsSkipped() async throws {
        let etcd = try EtcdCluster()
        var configuration = etcd.dcsConfiguration(requestTimeout: .milliseconds(300))
        configuration.endpoints.insert(DCSEndpoint(tls: false, host: "127.0.0.1", port: freePort()), at: 0)
        let client = EtcdClient(configuration: configuration)
        try await client.put("/harp/t/k", "v")
        let value = try await client.range("/harp/t/k")
        XCTAssertEqual(value.kvs.first?.value, "v")
    }

    func testEveryEndpointDownIsOneClearError() async throws {
        var configuration = DCSConfiguration(endpoints: [DCSEndpoint(tls: false, host: "127.0.0.1", port: freePort()),
                                                          DCSEndpoint(tls: false, host: "127.0.0.1", port: freePort())])
        configuration.requestTimeout = .milliseconds(200)
        let client = EtcdClient(configuration: configuration)
        do {
            _ = try await client.range("/x")
            XCTFail("no etcd is listening")
        } catch {
            guard case .unreachable(let failures) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(failures.count, 2, "each endpoint's reason is reported")
            XCTAssertTrue("\(error)".contains("127.0.0.1"), "\(error)")
        }
    }
}

import HarpCluster
import HarpConfig
import HarpDCS
import HarpTestFixtures
import XCTest

/// The cluster as the daemon sees it through a real etcd.
final class ClusterViewTests: XCTestCase {
    func testPrecedenceAndLeaderFromARealEtcd() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "prod")
        try await client.put(layout.node("node1"), #"{"name":"node1","location":"dc1","dsn":"host=127.0.0.1 port=5601"}"#)
        try await client.put(layout.node("node2"), #"{"name":"node2","location":"dc1","dsn":"host=127.0.0.1 port=5602"}"#)
        try await client.put(layout.leader(location: "dc1"), #"{"name":"node1"}"#)
        try await client.put(layout.globalProxyConfig, #"{"max_client_conn": 300, "listen_port": 7000}"#)

        let session = DCSSession(configuration: etcd.dcsConfiguration(), prefix: layout.prefix)
        session.start()
        defer { session.shutdown() }
        let capture = LogCapture()
        let view = ClusterView(layout: layout, logger: capture.logger())
        let local = InstanceConfiguration(name: "p1", location: "dc1", directives: DirectiveSet(["listen_port": .integer(6000)]),
                                          source: SourceLocation(file: "x", line: 1, column: 1))

        let waited = await session.waitForSnapshot(timeout: .seconds(10)) { $0.synced }
        let first = try XCTUnwrap(waited)
        var state = view.state(of: first)
        XCTAssertEqual(state.leader(of: "dc1").target?.address, .tcp(host: "127.0.0.1", port: 5601))
        XCTAssertEqual(state.effectiveDirectives(for: local).listenPort, 7000)
        XCTAssertEqual(state.effectiveDirectives(for: local).maxClientConn, 300)

        try await client.put(layout.proxyConfig("p1"), #"{"listen_port": 7100}"#)
        try await client.put(layout.leader(location: "dc1"), #"{"name":"node2"}"#)
        let changed = await session.waitForSnapshot(timeout: .seconds(5)) {
            ClusterState(snapshot: $0, layout: layout).leader(of: "dc1").target?.name == "node2" && $0[layout.proxyConfig("p1")] != nil
        }
        let moved = try XCTUnwrap(changed)
        state = view.state(of: moved)
        XCTAssertEqual(state.effectiveDirectives(for: local).listenPort, 7100, "the instance's own DCS config wins")
        XCTAssertEqual(state.leader(of: "dc1").target?.address.port, 5602)
    }

    func testAMalformedValueIsLoggedOnceWithItsKeyAndReason() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "prod")
        let session = DCSSession(configuration: etcd.dcsConfiguration(), prefix: layout.prefix)
        session.start()
        defer { session.shutdown() }
        let capture = LogCapture()
        let view = ClusterView(layout: layout, logger: capture.logger())

        try await client.put(layout.node("node1"), "{broken")
        try await client.put(layout.node("node2"), #"{"name":"node2","location":"dc1","dsn":"host=h"}"#)
        let arrived = await session.waitForSnapshot(timeout: .seconds(5)) { $0[layout.node("node2")] != nil }
        let snapshot = try XCTUnwrap(arrived)
        _ = view.state(of: snapshot)
        _ = view.state(of: snapshot)  // the same snapshot again: no second warning
        let state = view.state(of: session.snapshot)
        XCTAssertEqual(Array(state.nodes.keys), ["node2"], "the malformed node is absent, the good one is there")
        let warnings = capture.messages(at: .warning)
        XCTAssertEqual(warnings.count, 1, "\(warnings.map(\.message))")
        XCTAssertEqual(warnings.first?.metadata["key"], "/harp/prod/nodes/node1")
        XCTAssertTrue(warnings.first?.metadata["reason"]?.contains("not JSON") == true)
    }
}

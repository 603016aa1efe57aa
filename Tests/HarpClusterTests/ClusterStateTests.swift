import HarpCluster
import HarpConfig
import HarpDCS
import HarpTestFixtures
import XCTest

/// Decoding the DCS layout: leader resolution, directive precedence, malformed values.
final class ClusterStateTests: XCTestCase {
    let layout = DCSLayout(cluster: "c")

    func snapshot(_ pairs: [String: String], lease: [String: Int64] = [:]) -> DCSSnapshot {
        var values: [String: KeyValue] = [:]
        for (i, (k, v)) in pairs.enumerated() {
            values["/harp/c/" + k] = KeyValue(key: "/harp/c/" + k, value: v, modRevision: Int64(i + 1), lease: lease[k] ?? 0)
        }
        return DCSSnapshot(revision: Int64(pairs.count), values: values)
    }

    func instance(_ name: String = "p1", location: String = "dc1", _ local: [String: DirectiveValue] = [:]) -> InstanceConfiguration {
        InstanceConfiguration(name: name, location: location, directives: DirectiveSet(local), source: SourceLocation(file: "x", line: 1, column: 1))
    }

    func testLeaderResolutionThroughTheNodeRecord() {
        let state = ClusterState(snapshot: snapshot([
            "nodes/node1": #"{"name":"node1","location":"dc1","dsn":"host=10.0.0.1 port=5433 dbname=app"}"#,
            "nodes/node2": #"{"name":"node2","location":"dc2","dsn":"postgresql://app@[fd00::2]:5434/app?sslmode=require"}"#,
            "nodes/node3": #"{"name":"node3","location":"dc3","dsn":"host=/var/run/postgresql port=5435"}"#,
            "locations/dc1/leader": #"{"name":"node1"}"#,
            "locations/dc2/leader": #"{"name":"node2"}"#,
            "locations/dc3/leader": #"{"name":"node3"}"#,
            "locations/dc4/leader": #"{"name":"ghost"}"#,
            "locations/dc5/leader": #"{"name":"node1"}"#,
        ], lease: ["locations/dc1/leader": 77]), layout: layout)
        XCTAssertEqual(state.leader(of: "dc1"), .leader(LeaderTarget(name: "node1", address: .tcp(host: "10.0.0.1", port: 5433), database: "app", lease: 77)))
        XCTAssertEqual(state.leader(of: "dc2").target?.address, .tcp(host: "fd00::2", port: 5434))
        XCTAssertEqual(state.leader(of: "dc2").target?.database, "app", "the database of a URI DSN")
        XCTAssertNil(state.leader(of: "dc3").target?.database)
        XCTAssertEqual(state.leader(of: "dc3").target?.address, .unixSocket(directory: "/var/run/postgresql", port: 5435))
        XCTAssertEqual(state.leader(of: "nowhere"), .none)
        guard case .unresolvable(_, let ghost) = state.leader(of: "dc4") else { return XCTFail() }
        XCTAssertTrue(ghost.contains("has no record"), ghost)
        guard case .unresolvable(_, let wrongPlace) = state.leader(of: "dc5") else { return XCTFail() }
        XCTAssertTrue(wrongPlace.contains("belongs to location 'dc1'"), wrongPlace)
    }

    func testDSNForms() {
        XCTAssertEqual(try DSN.address("host=db1 port=6000").get(), .tcp(host: "db1", port: 6000))
        XCTAssertEqual(try DSN.address("hostaddr=10.1.1.1 host=db1").get(), .tcp(host: "10.1.1.1", port: 5432), "hostaddr wins, 5432 by default")
        XCTAssertEqual(try DSN.address("dbname='my app' host = 'db 2' port=1").get(), .tcp(host: "db 2", port: 1))
        XCTAssertEqual(try DSN.address("dbname=app").get(), .unixSocket(directory: "/var/run/postgresql", port: 5432))
        XCTAssertEqual(try DSN.address("postgres://u:p%40ss@db3/app").get(), .tcp(host: "db3", port: 5432))
        XCTAssertEqual(try DSN.address("postgresql:///app?host=%2Ftmp&port=5999").get(), .unixSocket(directory: "/tmp", port: 5999))
        XCTAssertEqual(try DSN.parameters("postgres://u:p%40ss@db3/app").get()["password"], "p@ss")
        XCTAssertThrowsError(try DSN.address("host=a,b").get())
        XCTAssertThrowsError(try DSN.address("host=a port=none").get())
        XCTAssertThrowsError(try DSN.address("host").get())
        XCTAssertThrowsError(try DSN.address("host='unterminated").get())
        XCTAssertThrowsError(try DSN.address("postgresql://db1/app?=").get(), "a parameter without a name is an error, not a crash")
    }

    func testDirectivePrecedenceInstanceThenGlobalThenLocalThenDefault() {
        let state = ClusterState(snapshot: snapshot([
            "proxies/global/config": #"{"listen_port": 7000, "max_client_conn": 500, "keepalive": "10s"}"#,
            "proxies/p1/config": #"{"listen_port": 7001}"#,
        ]), layout: layout)
        let local: [String: DirectiveValue] = ["listen_port": .integer(6000), "max_client_conn": .integer(50), "hold_timeout": .duration(.seconds(1)), "listen_address": .string("127.0.0.1")]
        let p1 = state.effectiveDirectives(for: instance("p1", local))
        XCTAssertEqual(p1.listenPort, 7001)
        XCTAssertEqual(p1.sources["listen_port"], .instanceDCS)
        XCTAssertEqual(p1.maxClientConn, 500)
        XCTAssertEqual(p1.sources["max_client_conn"], .globalDCS)
        XCTAssertEqual(p1[DirectiveKeys.keepalive], .seconds(10))
        XCTAssertEqual(p1[DirectiveKeys.holdTimeout], .seconds(1))
        XCTAssertEqual(p1.sources["hold_timeout"], .localFile)
        XCTAssertEqual(p1.listenAddress, "127.0.0.1")
        XCTAssertEqual(p1[DirectiveKeys.timeout], .seconds(1))
        XCTAssertEqual(p1.sources["timeout"], .defaultValue)
        XCTAssertEqual(p1.type, "builtin")
        XCTAssertEqual(p1.dcsFailurePolicy, .fence)
        XCTAssertEqual(p1.leaderLeaseDuration, .seconds(6))
        XCTAssertEqual(p1.monitorInterval, .seconds(5))

        let p2 = state.effectiveDirectives(for: instance("p2", local))
        XCTAssertEqual(p2.listenPort, 7000, "p2 has no DCS config of its own: global wins over the file")
    }

    func testMalformedValuesAreTreatedAsAbsent() {
        let state = ClusterState(snapshot: snapshot([
            "nodes/node1": "not json",
            "nodes/node2": #"{"name":"node2","location":"dc1"}"#,
            "nodes/node3": #"{"name":"other","location":"dc1","dsn":"host=a"}"#,
            "locations/dc1/leader": #"["node1"]"#,
            "proxies/global/config": #"{"listen_port": "seven", "max_client_conn": true, "maxclientconn": 1, "keepalive": 3}"#,
            "proxies/p1/managed": #""perhaps""#,
            "proxies/p2/managed": #""false""#,
        ]), layout: layout)
        XCTAssertTrue(state.nodes.isEmpty)
        XCTAssertEqual(state.leader(of: "dc1"), .none)
        XCTAssertEqual(state.globalDirectives.values, ["keepalive": .duration(.seconds(3))], "the good value is kept, the bad ones dropped")
        XCTAssertTrue(state.isManaged("p1"), "an unreadable managed flag leaves the instance managed")
        XCTAssertFalse(state.isManaged("p2"))
        let reasons = state.problems.map(\.description)
        XCTAssertTrue(reasons.contains { $0.contains("/harp/c/nodes/node1") && $0.contains("not JSON") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("needs \"dsn\"") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("\"name\" is \"other\" but the key says \"node3\"") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("expected a JSON object") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("invalid value 'seven' for 'listen_port'") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("invalid value true for 'max_client_conn'") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("unknown directive 'maxclientconn'; did you mean 'max_client_conn'?") }, "\(reasons)")
        XCTAssertTrue(reasons.contains { $0.contains("/harp/c/proxies/p1/managed") }, "\(reasons)")
    }

    func testProxyStatusKeysAreRecognised() {
        let layout = DCSLayout(cluster: "c")
        XCTAssertTrue(layout.isProxyStatus(layout.proxyStatus("p1")))
        XCTAssertFalse(layout.isProxyStatus(layout.proxyConfig("p1")))
        XCTAssertFalse(layout.isProxyStatus(layout.proxiesPrefix + "status"), "no proxy name")
        XCTAssertFalse(layout.isProxyStatus(layout.proxiesPrefix + "a/b/status"), "one name, no deeper keys")
        XCTAssertFalse(layout.isProxyStatus("/harp/other/proxies/p1/status"), "another cluster's")
        XCTAssertFalse(layout.isProxyStatus(layout.leader(location: "status")))
    }

    // MARK: - The location of an instance that names none

    func testAnInstanceWithoutALocationFollowsTheOnlyOneAndKeepsIt() {
        let empty = ClusterState(snapshot: snapshot([:]), layout: layout)
        guard case .wait(let waiting) = empty.location(following: nil) else { return XCTFail("\(empty.location(following: nil))") }
        XCTAssertTrue(waiting.contains("no location in the DCS yet"), waiting)

        // A node's location counts, and so does a key under locations/ (a leader, or harpctl apply's record).
        let one = ClusterState(snapshot: snapshot(["nodes/n1": #"{"name":"n1","location":"dc1","dsn":"host=a"}"#]), layout: layout)
        XCTAssertEqual(one.location(following: nil), .follow("dc1", warnAbout: []))
        let byKey = ClusterState(snapshot: snapshot(["locations/dc7/leader": #"{"name":"x"}"#]), layout: layout)
        XCTAssertEqual(byKey.locations, ["dc7"])

        let two = ClusterState(snapshot: snapshot([
            "nodes/n1": #"{"name":"n1","location":"dc1","dsn":"host=a"}"#,
            "locations/dc2/leader": #"{"name":"n2"}"#,
        ]), layout: layout)
        guard case .ambiguous(let reason) = two.location(following: nil) else { return XCTFail("\(two.location(following: nil))") }
        XCTAssertTrue(reason.contains("several locations (dc1, dc2)") && reason.contains("set proxy.location"), reason)
        XCTAssertEqual(two.location(following: "dc1"), .follow("dc1", warnAbout: ["dc2"]), "once chosen, kept; the newcomer is named")
        XCTAssertEqual(empty.location(following: "dc1"), .follow("dc1", warnAbout: []), "kept even while the DCS holds none")
    }
}

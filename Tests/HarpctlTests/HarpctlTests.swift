import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest

/// harpctl, the real binary, against a real etcd.
final class HarpctlTests: XCTestCase {
    var etcd: EtcdCluster!
    var dir: TemporaryDirectory!
    let layout = DCSLayout(cluster: "c1")

    override func setUpWithError() throws {
        etcd = try EtcdCluster()
        dir = TemporaryDirectory()
        dir.write("config.yml", "cluster: {name: c1}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n")
        dir.write("boot.yml", """
            cluster:
              name: c1
            locations:
              - location: dc1
              - location: dc2
            nodes:
              - name: node1
                location: dc1
                dsn: host=10.0.0.1 port=5432 password=secret
                priority: 100
              - name: node2
                location: dc1
                dsn: postgresql://app:pw@10.0.0.2:5433/app
              - name: node3
                location: dc2
                dsn: host=/var/run/postgresql port=5434
            proxies:
              max_client_conn: 500
              type: builtin
              instances:
                - name: proxy1
                  listen_port: 6500
                - name: proxy2
                  listen_port: 6501
                  hold_timeout: 2s

            """)
    }

    override func tearDown() {
        etcd?.stop()
        etcd = nil
        dir = nil
        super.tearDown()
    }

    @discardableResult
    func harpctl(_ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        try runCommand(builtExecutable("harpctl"), ["-f", dir.file("config.yml")] + arguments, environment: environment)
    }

    func json(_ text: String) -> Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8)) }

    func value(_ key: String) async throws -> String? {
        try await EtcdClient(configuration: etcd.dcsConfiguration()).range(key).kvs.first?.value
    }

    func testApplyThenGetShowsTheBootstrap() async throws {
        let applied = try harpctl(["apply", dir.file("boot.yml")])
        XCTAssertEqual(applied.status, 0, applied.output)
        XCTAssertTrue(applied.output.contains("created  /harp/c1/nodes/node1"), applied.output)
        XCTAssertTrue(applied.output.contains("9 keys written in one transaction"), applied.output)
        let again = try harpctl(["apply", dir.file("boot.yml")])
        XCTAssertTrue(again.output.contains("0 keys written"), "applying the same file changes nothing: \(again.output)")

        let proxies = try harpctl(["get", "proxies", "-o", "json"])
        XCTAssertEqual(proxies.status, 0, proxies.output)
        let rows = try XCTUnwrap(json(proxies.output) as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["name"] as? String }, ["global", "proxy1", "proxy2"], "global first")
        let proxy2 = rows[2]
        XCTAssertEqual(proxy2["max_client_conn"] as? Int, 500, "global directive in effect")
        XCTAssertEqual((proxy2["directives"] as? [String: Any])?["hold_timeout"] as? String, "2s")
        XCTAssertEqual((proxy2["directives"] as? [String: Any])?["listen_port"] as? Int, 6501)
        XCTAssertEqual(proxy2["state"] as? String, "down", "no live status record")

        let table = try harpctl(["get", "proxies"]).output.split(separator: "\n").map(String.init)
        XCTAssertTrue(table[0].hasPrefix("Cluster  Name"), table.joined(separator: "\n"))
        XCTAssertTrue(table[1].allSatisfy { $0 == "-" || $0 == " " }, "a dashed rule under the headers")
        XCTAssertEqual(table.count, 5)

        let yaml = try harpctl(["get", "proxy", "proxy1", "-o", "yaml"]).output
        XCTAssertTrue(yaml.contains("name: \"proxy1\""), yaml)
        XCTAssertTrue(yaml.contains("  listen_port: 6500"), yaml)

        let nodes = try harpctl(["get", "nodes"]).output
        XCTAssertTrue(nodes.contains("password=***") && nodes.contains("app:***@"), "passwords are masked:\n\(nodes)")
        XCTAssertFalse(nodes.contains("secret") || nodes.contains(":pw@"), nodes)
        let node = try XCTUnwrap(json(try harpctl(["get", "node", "node3", "-o", "json"]).output) as? [String: Any])
        XCTAssertEqual(node["location"] as? String, "dc2")
        let locations = try harpctl(["get", "locations", "-o", "json"]).output
        XCTAssertEqual((json(locations) as? [[String: Any]])?.map { $0["location"] as? String }, ["dc1", "dc2"])
        let location = try XCTUnwrap(json(try harpctl(["get", "location", "dc2", "-o", "json"]).output) as? [String: Any])
        XCTAssertEqual(location["location"] as? String, "dc2")
        XCTAssertEqual(try harpctl(["get", "location", "dc9"]).status, 1)
        let otherCluster = try harpctl(["-c", "other", "get", "nodes", "-o", "json"])
        XCTAssertEqual((json(otherCluster.output) as? [Any])?.count, 0,
                       "-c reads another cluster's keys: \(otherCluster.output)")
        let cluster = try XCTUnwrap(json(try harpctl(["get", "cluster", "-o", "json"]).output) as? [String: Any])
        XCTAssertEqual(cluster["is_managed"] as? Bool, true)
    }

    func testPromoteMovesTheLeaderWithCompareAndSwap() async throws {
        try harpctl(["apply", dir.file("boot.yml")])
        let first = try harpctl(["promote", "node1"])
        XCTAssertEqual(first.status, 0, first.output)
        XCTAssertTrue(first.output.contains("dc1: lead master none -> node1"), first.output)
        let leader = try harpctl(["get", "leader", "dc1", "-o", "json"])
        XCTAssertEqual((json(leader.output) as? [String: Any])?["address"] as? String, "10.0.0.1:5432")

        let leased = try harpctl(["promote", "node2", "--ttl", "30"])
        XCTAssertEqual(leased.status, 0, leased.output)
        let kv = try await EtcdClient(configuration: etcd.dcsConfiguration()).range(layout.leader(location: "dc1")).kvs.first
        XCTAssertEqual(kv?.value, #"{"name":"node2"}"#)
        XCTAssertNotEqual(kv?.lease, 0, "--ttl puts the key on a lease")

        let missing = try harpctl(["promote", "node9"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.output.contains("no node 'node9'"), missing.output)
        let elsewhere = try harpctl(["promote", "node3", "--location", "dc1"])
        XCTAssertEqual(elsewhere.status, 1)
        XCTAssertTrue(elsewhere.output.contains("belongs to location 'dc2'"), elsewhere.output)
    }

    /// Two promotes that read the same leader, then write: the compare-and-swap lets exactly
    /// one win, and the other names the leader that won. (The two are interleaved through
    /// `LeaderPromotion`, harpctl's own code, rather than timed.)
    func testTwoConcurrentPromotesExactlyOneWins() async throws {
        try harpctl(["apply", dir.file("boot.yml")])
        try harpctl(["promote", "node1"])
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let read = try await client.range(layout.prefix, prefix: true)
        let snapshot = DCSSnapshot(revision: read.revision, values: Dictionary(read.kvs.map { ($0.key, $0) }, uniquingKeysWith: { $1 }))
        let state = ClusterState(snapshot: snapshot, layout: layout)
        let first = try LeaderPromotion.prepare(node: "node2", location: nil, state: state, snapshot: snapshot).get()
        let second = try LeaderPromotion.prepare(node: "node1", location: "dc1", state: state, snapshot: snapshot).get()
        XCTAssertEqual(first.previous, "node1")
        let won = try await first.commit(client)
        let lost = try await second.commit(client)
        XCTAssertEqual(won, .promoted(previous: "node1"))
        XCTAssertEqual(lost, .raced(now: "node2"), "the second saw node1 lead; node2 does now")
        let leader = try await value(layout.leader(location: "dc1"))
        XCTAssertEqual((json(leader ?? "") as? [String: Any])?["name"] as? String, "node2", "the race did not overwrite the winner")
        if case .failure(let e) = LeaderPromotion.prepare(node: "node3", location: "dc1", state: state, snapshot: snapshot) {
            XCTAssertTrue(e.description.contains("belongs to location 'dc2'"), e.description)
        } else { XCTFail("node3 is in dc2") }
    }

    func testSetManageAndUnmanage() async throws {
        try harpctl(["apply", dir.file("boot.yml")])
        let set = try harpctl(["set", "proxy", "global", "max_client_conn=800", "dcs_failure_policy=keep"])
        XCTAssertEqual(set.status, 0, set.output)
        let global = try await value(layout.globalProxyConfig)
        XCTAssertEqual((json(global ?? "") as? [String: Any])?["max_client_conn"] as? Int, 800)
        XCTAssertEqual((json(global ?? "") as? [String: Any])?["type"] as? String, "builtin", "other directives kept")

        let unknown = try harpctl(["set", "proxy", "proxy1", "max_clien_conn=5"])
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.output.contains("did you mean 'max_client_conn'") && unknown.output.contains("valid directives: type,"), unknown.output)
        let badValue = try harpctl(["set", "proxy", "proxy1", "listen_port=99999"])
        XCTAssertEqual(badValue.status, 2)
        XCTAssertTrue(badValue.output.contains("expected an integer from 1 to 65535"), badValue.output)

        let node = try harpctl(["set", "node", "node1", "priority=5", "dsn=host=10.0.0.9 port=5432"])
        XCTAssertEqual(node.status, 0, node.output)
        let record = try await value(layout.node("node1"))
        XCTAssertEqual((json(record ?? "") as? [String: Any])?["priority"] as? Int, 5)
        XCTAssertEqual((json(record ?? "") as? [String: Any])?["dsn"] as? String, "host=10.0.0.9 port=5432")
        XCTAssertEqual(try harpctl(["set", "node", "ghost", "priority=1"]).status, 1)
        XCTAssertEqual(try harpctl(["set", "node", "node3", "location=02"]).status, 0)
        let renamed = try await value(layout.node("node3"))
        XCTAssertEqual((json(renamed ?? "") as? [String: Any])?["location"] as? String, "02", "a location stays a string")

        XCTAssertEqual(try harpctl(["unmanage", "proxy", "proxy1"]).status, 0)
        let unmanaged = try await value(layout.proxyManaged("proxy1"))
        XCTAssertEqual(unmanaged, #""false""#)
        let shown = try XCTUnwrap(json(try harpctl(["get", "proxy", "proxy1", "-o", "json"]).output) as? [String: Any])
        XCTAssertEqual(shown["managed"] as? Bool, false)
        XCTAssertEqual(try harpctl(["manage", "proxy", "proxy1"]).status, 0)
        let managed = try await value(layout.proxyManaged("proxy1"))
        XCTAssertEqual(managed, #""true""#)
    }

    func testExitCodes() throws {
        XCTAssertEqual(try harpctl(["frobnicate"]).status, 2, "usage error")
        XCTAssertEqual(try harpctl(["promote"]).status, 2, "missing argument")
        XCTAssertEqual(try harpctl(["get", "leader", "dc9"]).status, 1, "operation failed")
        let down = try runCommand(builtExecutable("harpctl"), ["--dcs", "127.0.0.1:\(freePort())", "-f", dir.file("config.yml"), "get", "nodes"])
        XCTAssertEqual(down.status, 1)
        XCTAssertTrue(down.output.contains("etcd unreachable"), down.output)
        let version = try harpctl(["version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertTrue(version.output.hasPrefix("harpctl "), version.output)

        dir.write("bad.yml", "nodes:\n  - name: x\n    location: dc1\nproxies:\n  max_clients: 5\n")
        let bad = try harpctl(["apply", dir.file("bad.yml")])
        XCTAssertEqual(bad.status, 2, bad.output)
        XCTAssertTrue(bad.output.contains("a node needs name, location and dsn"), bad.output)
        XCTAssertTrue(bad.output.contains("bad.yml:5:16: unknown directive 'max_clients'"), bad.output)
    }
}

import HarpCluster
import HarpConfig
import HarpDCS
import XCTest

/// The leader-source registry: the setting picks a source by name, and each source decodes its
/// own records.
final class LeaderSourceTests: XCTestCase {
    let patroni = LeaderSourceSetting(name: "patroni", options: ["patroni_namespace": "/pg"])

    func testTheSettingPicksTheSourceByName() {
        XCTAssertEqual(LeaderSources.all.map { $0.name }, ["harp", "patroni"])
        XCTAssertEqual(Set(LeaderSources.all.map { $0.name }).count, LeaderSources.all.count, "names are unique")
        XCTAssertEqual(type(of: LeaderSources.make(.harp)).name, "harp")
        XCTAssertEqual(type(of: LeaderSources.make(patroni)).name, "patroni")
    }

    func testHarpReadsTheClustersOwnKeysAndMayBePromoted() {
        let layout = DCSLayout(cluster: "c")
        let values = [layout.node("n1"): #"{"name":"n1","location":"dc1","dsn":"host=10.0.0.1 port=5432"}"#,
                      layout.leader(location: "dc1"): #"{"name":"n1"}"#]
        let snapshot = DCSSnapshot(revision: 2, values: Dictionary(uniqueKeysWithValues: values.map { ($0.key, KeyValue(key: $0.key, value: $0.value, modRevision: 1)) }))
        let source = LeaderSources.make(.harp)
        XCTAssertNil(source.ownPrefix)
        XCTAssertNil(source.promotionRefusal)
        let leaders = source.leaders(cluster: ClusterState(snapshot: snapshot, layout: layout), own: DCSSnapshot(revision: 0, values: [:]))
        XCTAssertEqual(leaders.leader(of: "dc1").target?.name, "n1")
    }

    func testPatroniWatchesItsNamespaceAndLeavesPromotionToPatroni() {
        let source = LeaderSources.make(patroni)
        XCTAssertEqual(source.ownPrefix, "/pg/")
        XCTAssertTrue(source.promotionRefusal?.contains("patronictl switchover") == true)
        let own = DCSSnapshot(revision: 2, values: [
            "/pg/dc1/leader": KeyValue(key: "/pg/dc1/leader", value: "m1", modRevision: 1),
            "/pg/dc1/members/m1": KeyValue(key: "/pg/dc1/members/m1", value: #"{"conn_url":"postgres://10.0.0.9:5433/postgres"}"#, modRevision: 2),
        ])
        let empty = ClusterState(snapshot: DCSSnapshot(revision: 0, values: [:]), layout: DCSLayout(cluster: "c"))
        let leaders = source.leaders(cluster: empty, own: own)
        XCTAssertEqual(leaders.leader(of: "dc1").target?.address, .tcp(host: "10.0.0.9", port: 5433))
        XCTAssertEqual(leaders.locations, ["dc1"])
    }
}

import HarpCluster
import HarpDCS
import XCTest

/// Patroni's keys as Patroni 3 and 4 write them, and the ways they can be wrong.
final class PatroniStateTests: XCTestCase {
    func state(_ pairs: [String: String], lease: [String: Int64] = [:]) -> PatroniState {
        var values: [String: KeyValue] = [:]
        for (i, (k, v)) in pairs.sorted(by: { $0.key < $1.key }).enumerated() {
            values["/service/" + k] = KeyValue(key: "/service/" + k, value: v, modRevision: Int64(i + 1), lease: lease[k] ?? 0)
        }
        return PatroniState(snapshot: DCSSnapshot(revision: Int64(pairs.count), values: values), namespace: "/service")
    }

    let pg1 = #"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331648,"timeline":1}"#
    let pg2 = #"{"conn_url":"postgresql://app:secret@10.0.0.2:5433/app","state":"running","role":"primary","version":"4.0.4"}"#

    func testTheLeaderKeyNamesAMemberWhoseConnURLGivesTheAddress() {
        let s = state(["dc1/leader": "pg1\n", "dc1/members/pg1": pg1, "dc1/members/pg2": pg2, "dc1/initialize": "7714996740824051277",
                       "dc1/status": #"{"optime":1}"#, "dc2/config": "{}"], lease: ["dc1/leader": 99])
        XCTAssertEqual(s.leader(of: "dc1"), .leader(LeaderTarget(name: "pg1", address: .tcp(host: "127.0.0.1", port: 5432), lease: 99)))
        XCTAssertEqual(s.locations, ["dc1", "dc2"], "a scope is a location, with or without a leader")
        XCTAssertEqual(s.leader(of: "dc2"), .none)
        XCTAssertEqual(s.members["dc1"]?["pg2"]?.role, "primary", "Patroni 4's role")
        XCTAssertTrue(s.problems.isEmpty, "\(s.problems)")

        // Patroni 4's member as the leader: user and database in the URL are ignored.
        let four = state(["dc1/leader": "pg2", "dc1/members/pg2": pg2])
        XCTAssertEqual(four.leader(of: "dc1").target?.address, .tcp(host: "10.0.0.2", port: 5433))
        XCTAssertNil(four.leader(of: "dc1").target?.database)
    }

    func testALeaderWithoutAUsableMemberRecordIsNoLeader() {
        let missing = state(["dc1/leader": "pg3", "dc1/members/pg1": pg1])
        guard case .unresolvable(let name, let reason) = missing.leader(of: "dc1") else { return XCTFail("\(missing.leader(of: "dc1"))") }
        XCTAssertEqual(name, "pg3")
        XCTAssertTrue(reason.contains("/service/dc1/members/pg3"), reason)

        for (bad, why) in [("not json", "not JSON"), (#"{"role":"master"}"#, "conn_url"), (#"{"conn_url":42}"#, "conn_url"),
                           (#"{"conn_url":"host=10.0.0.1 port=5432"}"#, "postgres:// URL"), (#"{"conn_url":"postgres://h:5432/x","role":7}"#, "role")] {
            let s = state(["dc1/leader": "pg1", "dc1/members/pg1": bad])
            XCTAssertNil(s.leader(of: "dc1").target, bad)
            XCTAssertTrue(s.problems.contains { $0.key == "/service/dc1/members/pg1" && $0.reason.contains(why) }, "\(bad): \(s.problems)")
        }
        let badPort = state(["dc1/leader": "pg1", "dc1/members/pg1": #"{"conn_url":"postgres://10.0.0.1:99999/postgres"}"#])
        guard case .unresolvable(_, let portReason) = badPort.leader(of: "dc1") else { return XCTFail() }
        XCTAssertTrue(portReason.contains("bad conn_url for member 'pg1'"), portReason)
        let empty = state(["dc1/leader": "  "])
        XCTAssertEqual(empty.leader(of: "dc1"), .none)
        XCTAssertEqual(empty.problems.first?.key, "/service/dc1/leader")
    }

    func testOnlyOneNamespaceIsRead() {
        var values: [String: KeyValue] = [:]
        for key in ["/service/dc1/leader", "/other/dc9/leader", "/servicex/dc8/leader"] {
            values[key] = KeyValue(key: key, value: "pg1", modRevision: 1, lease: 0)
        }
        XCTAssertEqual(PatroniState(snapshot: DCSSnapshot(revision: 1, values: values), namespace: "/service").locations, ["dc1"])
    }

    func testTheRecordIsTakenAtItsWordOnlyWithoutAnAPIToAsk() {
        let withAPI = state(["dc1/leader": "pg1", "dc1/members/pg1": pg1])
        let check = withAPI.writability(of: "dc1")
        XCTAssertEqual(check?.record, .writable)
        XCTAssertEqual(check?.probes, [.httpJSON(url: "http://127.0.0.1:8008/patroni", expect: ["role": ["master", "primary"], "state": ["running"]],
                                                 label: "Patroni's REST API")], "Patroni writes role master before the promotion has finished: ask")
        XCTAssertEqual(check?.key, "dc1|pg1", "the leadership is the scope and the member, whatever the key's revision or lease")
        let noAPI = state(["dc1/leader": "pg2", "dc1/members/pg2": pg2])
        XCTAssertEqual(noAPI.writability(of: "dc1")?.record, .writable, "Patroni 4's primary")
        XCTAssertEqual(noAPI.writability(of: "dc1")?.probes, [], "no api_url")
        XCTAssertNil(state([:]).writability(of: "dc1"))
    }

    /// The leader's record is read for what it says of the node now: Patroni restarting a crashed
    /// leader writes role replica, state starting; a standby cluster's leader is standby_leader.
    func testTheLeadersRecordSaysWhetherItMayTakeWrites() {
        func says(_ record: String) -> WritabilityCheck.RecordSays? {
            state(["dc1/leader": "pg1", "dc1/members/pg1": record]).writability(of: "dc1")?.record
        }
        let url = #""conn_url":"postgres://127.0.0.1:5432/postgres""#
        XCTAssertEqual(says(#"{\#(url),"role":"replica","state":"starting"}"#), .notWritable("its record says role replica, state starting"))
        XCTAssertEqual(says(#"{\#(url),"role":"master","state":"restarting"}"#), .notWritable("its record says state restarting"))
        XCTAssertEqual(says(#"{\#(url),"role":"primary","state":"running"}"#), .writable)
        guard case .neverWritable(let why)? = says(#"{\#(url),"role":"standby_leader","state":"running"}"#) else { return XCTFail() }
        XCTAssertTrue(why.contains("standby"), why)
        let check = state(["dc1/leader": "pg1", "dc1/members/pg1": #"{\#(url),"role":"master"}"#]).writability(of: "dc1")
        XCTAssertEqual(check?.recordRevision, 2, "the member record's own revision (the leader key is 1)")
    }

    /// Replica candidates: the members other than the leader that replicate and run, not tagged
    /// `noloadbalance`, within the lag bound by the leader's `optime` and their own position
    /// (Patroni 3's `xlog_location`, 4's `replay_lsn`); the others with why, and whether their
    /// sessions are cut (promoted, stopped) or kept (lagging, tagged out).
    func testReplicasAreTheRunningReplicasWithinTheLagBound() {
        func member(_ port: Int, role: String, state: String = "running", position: String = "", tags: String = "") -> String {
            #"{"conn_url":"postgres://127.0.0.1:\#(port)/postgres","role":"\#(role)","state":"\#(state)""# + position + tags + "}"
        }
        let s = state(["dc1/leader": "pg1", "dc1/members/pg1": pg1, "dc1/status": #"{"optime":50331648}"#,
                       "dc1/members/pg2": member(5433, role: "replica", position: #","xlog_location":50331648"#),
                       "dc1/members/pg3": member(5434, role: "sync_standby", state: "streaming", position: #","replay_lsn":50000000"#),
                       "dc1/members/pg4": member(5435, role: "replica", position: #","xlog_location":40000000"#),
                       "dc1/members/pg5": member(5436, role: "replica", state: "stopped"),
                       "dc1/members/pg6": member(5437, role: "replica", position: #","xlog_location":50331648"#, tags: #","tags":{"noloadbalance":true}"#),
                       "dc1/members/pg7": member(5438, role: "master"),
                       "dc1/members/pg8": member(5439, role: "replica")])
        let bounded = s.replicas(of: "dc1", maxLag: 1 << 20)
        XCTAssertEqual(bounded.candidates.map(\.name), ["pg2", "pg3"])
        XCTAssertEqual(bounded.candidates.map(\.lag), [0, 331648])
        XCTAssertEqual(bounded.candidates.first?.target.address, .tcp(host: "127.0.0.1", port: 5433))
        let excluded = Dictionary(uniqueKeysWithValues: bounded.excluded.map { ($0.name, $0) })
        XCTAssertEqual(excluded["pg4"]?.reason, "lags 10331648 bytes behind the leader (max_replica_lag 1048576)")
        XCTAssertEqual(excluded["pg4"]?.cutsSessions, false, "a lagging replica keeps its sessions")
        XCTAssertEqual(excluded["pg5"]?.reason, "is stopped")
        XCTAssertEqual(excluded["pg5"]?.cutsSessions, true)
        XCTAssertEqual(excluded["pg6"]?.reason, "is tagged noloadbalance")
        XCTAssertEqual(excluded["pg6"]?.cutsSessions, false)
        XCTAssertEqual(excluded["pg7"]?.reason, "has role master")
        XCTAssertEqual(excluded["pg7"]?.cutsSessions, true, "read-only clients do not stay on a primary")
        XCTAssertEqual(excluded["pg8"]?.reason, "has no replication position in its record, so its lag is unknown")
        XCTAssertEqual(excluded["pg1"]?.reason, "is the leader")
        XCTAssertEqual(excluded["pg1"]?.cutsSessions, true, "a replica promoted: its read-only sessions are cut")

        let unbounded = s.replicas(of: "dc1", maxLag: nil)
        XCTAssertEqual(unbounded.candidates.map(\.name), ["pg2", "pg3", "pg4", "pg8"], "no bound: lag does not exclude")
        XCTAssertEqual(s.replicas(of: "dc2", maxLag: nil), ReplicaSet())

        let none = state(["dc1/leader": "pg1", "dc1/members/pg1": pg1, "dc1/members/pg5": member(5436, role: "replica", state: "stopped")])
        XCTAssertEqual(none.replicas(of: "dc1", maxLag: nil).noCandidateReason(location: "dc1", maxLag: nil),
                       "no replica of dc1 is a candidate: pg5 is stopped")
        XCTAssertEqual(s.replicas(of: "dc1", maxLag: 0).noCandidateReason(location: "dc1", maxLag: 0).prefix(26), "no replica of dc1 is a can")
    }
}

import HarpCluster
import HarpConfig
import HarpDCS
@testable import HarpProxy
import XCTest

/// The planner with plain values: a DCS snapshot, the configuration, and a made-up clock.
final class PlannerTests: XCTestCase {
    let layout = DCSLayout(cluster: "c")
    let t0 = ContinuousClock.now

    func state(_ pairs: [String: String], lease: [String: Int64] = [:]) -> ClusterState {
        var values: [String: KeyValue] = [:]
        for (i, (k, v)) in pairs.sorted(by: { $0.key < $1.key }).enumerated() {
            values["/harp/c/" + k] = KeyValue(key: "/harp/c/" + k, value: v, modRevision: Int64(i + 1), lease: lease[k] ?? 0)
        }
        return ClusterState(snapshot: DCSSnapshot(revision: Int64(pairs.count), values: values), layout: layout)
    }

    func instance(_ name: String, _ location: String?, _ local: [String: DirectiveValue] = [:]) -> InstanceConfiguration {
        InstanceConfiguration(name: name, location: location, directives: DirectiveSet(local), source: SourceLocation(file: "x", line: 1, column: 1))
    }

    var dc1: [String: String] {
        ["nodes/n1": #"{"name":"n1","location":"dc1","dsn":"host=10.0.0.1 port=5432"}"#, "locations/dc1/leader": #"{"name":"n1"}"#]
    }

    func input(_ instances: [InstanceConfiguration], _ state: ClusterState, reachable: Bool = true, synced: Bool = true,
               lastContact: Duration = .zero, leaseTTLs: [Int64: Duration] = [:], previous: [String: InstancePlan] = [:]) -> Planner.Input {
        Planner.Input(instances: instances, state: state, leaders: state, synced: synced, reachable: reachable, now: t0 + .seconds(100),
                      lastContactAt: t0 + .seconds(100) - lastContact, leaseTTLs: leaseTTLs, descriptorLimit: 1 << 20,
                      previous: previous, observedAt: t0)
    }

    func testALocationWithALeaderIsRoutedAndNothingBeforeTheFirstRead() {
        let out = Planner.plan(input([instance("p1", "dc1")], state(dc1)))
        XCTAssertEqual(out.plans["p1"]?.routing.target?.name, "n1")
        XCTAssertEqual(out.plans["p1"]?.stateName, "routing")
        XCTAssertNil(out.nextDeadline)

        let unread = Planner.plan(input([instance("p1", "dc1")], state(dc1), synced: false))
        XCTAssertEqual(unread.plans["p1"]?.routing, .noLeader(reason: "the DCS has not been read yet"))
        XCTAssertEqual(unread.plans["p1"]?.dcsRead, false)
    }

    func testFencingCountsTheOutageFromTheLastAnswerAgainstTheLease() {
        let leased = state(dc1, lease: ["locations/dc1/leader": 42])
        // Within the lease (its TTL known: 10 s): still routing, and re-planned when it runs out.
        let within = Planner.plan(input([instance("p1", "dc1")], leased, reachable: false, lastContact: .seconds(4), leaseTTLs: [42: .seconds(10)]))
        XCTAssertEqual(within.plans["p1"]?.routing.target?.name, "n1")
        XCTAssertEqual(within.nextDeadline, t0 + .seconds(106))
        XCTAssertEqual(within.plans["p1"]?.dcsUnreachable, true)
        // Past it: fenced, with the figures in the reason.
        let past = Planner.plan(input([instance("p1", "dc1")], leased, reachable: false, lastContact: .seconds(11), leaseTTLs: [42: .seconds(10)]))
        XCTAssertEqual(past.plans["p1"]?.routing, .fenced(reason: "DCS unreachable for 11.0 s, longer than the 10.0 s lease"))
        XCTAssertEqual(past.plans["p1"]?.stateName, "fenced")
        XCTAssertNil(past.nextDeadline)
        // A lease whose TTL is unknown: leader_lease_duration (default 6 s) stands for it.
        let unknown = Planner.plan(input([instance("p1", "dc1")], leased, reachable: false, lastContact: .seconds(7)))
        XCTAssertEqual(unknown.plans["p1"]?.stateName, "fenced")
        // keep: routes on, no deadline.
        let keep = Planner.plan(input([instance("p1", "dc1", ["dcs_failure_policy": .string("keep")])], leased, reachable: false, lastContact: .seconds(60)))
        XCTAssertEqual(keep.plans["p1"]?.routing.target?.name, "n1")
        XCTAssertNil(keep.nextDeadline)
    }

    func testAnUnknownLeaseIsAskedForOnlyWhileTheDCSAnswers() {
        let leased = state(dc1, lease: ["locations/dc1/leader": 42])
        XCTAssertEqual(Planner.plan(input([instance("p1", "dc1")], leased)).unknownLeases, [42])
        XCTAssertEqual(Planner.plan(input([instance("p1", "dc1")], leased, leaseTTLs: [42: .seconds(5)])).unknownLeases, [])
        XCTAssertEqual(Planner.plan(input([instance("p1", "dc1")], leased, reachable: false)).unknownLeases, [])
    }

    func testListenersFromTheDCSClashOnlyWithTheirOwnInstance() {
        var pairs = dc1
        pairs["proxies/p1/config"] = #"{"listen_port":7001}"#
        pairs["proxies/p2/config"] = #"{"listen_port":7001}"#
        let first = Planner.plan(input([instance("p1", "dc1"), instance("p2", "dc1")], state(pairs)))
        XCTAssertNil(first.plans["p1"]?.listenBlocked)
        XCTAssertTrue(first.plans["p2"]?.listenBlocked?.contains("address in use by instance 'p1'") == true)
        XCTAssertEqual(first.plans["p2"]?.routing.target?.name, "n1", "a clash does not change where the instance routes")

        // p2 held 7002; p1 is then moved onto it: p2 keeps it.
        pairs["proxies/p1/config"] = #"{"listen_port":7002}"#
        pairs["proxies/p2/config"] = #"{"listen_port":7002}"#
        var held = first.plans
        held["p2"]?.listenBlocked = nil
        held["p2"] = Planner.plan(input([instance("p2", "dc1")], state(["proxies/p2/config": #"{"listen_port":7002}"#]))).plans["p2"]
        let moved = Planner.plan(input([instance("p1", "dc1"), instance("p2", "dc1")], state(pairs), previous: held))
        XCTAssertNil(moved.plans["p2"]?.listenBlocked)
        XCTAssertTrue(moved.plans["p1"]?.listenBlocked?.contains("by instance 'p2'") == true)
    }

    func testAnInstanceWithoutALocationTakesTheOnlyOneAndKeepsIt() {
        let one = Planner.plan(input([instance("p", nil)], state(dc1)))
        XCTAssertEqual(one.plans["p"]?.location, "dc1")
        XCTAssertEqual(one.plans["p"]?.locationChoice, .follow("dc1", warnAbout: []))
        XCTAssertEqual(one.plans["p"]?.routing.target?.name, "n1")

        var two = dc1
        two["nodes/n2"] = #"{"name":"n2","location":"dc2","dsn":"host=10.0.0.2"}"#
        two["locations/dc2/leader"] = #"{"name":"n2"}"#
        let kept = Planner.plan(input([instance("p", nil)], state(two), previous: one.plans))
        XCTAssertEqual(kept.plans["p"]?.location, "dc1")
        XCTAssertEqual(kept.plans["p"]?.locationChoice, .follow("dc1", warnAbout: ["dc2"]))

        let fresh = Planner.plan(input([instance("p", nil)], state(two)))
        XCTAssertNil(fresh.plans["p"]?.location)
        XCTAssertEqual(fresh.plans["p"]?.stateName, "no-location")
        XCTAssertNil(fresh.plans["p"]?.routing.target)
    }

    func testMaxClientConnIsLoweredToWhatTheDescriptorLimitHolds() {
        var i = input([instance("a", "dc1", ["max_client_conn": .integer(5000)]), instance("b", "dc1", ["max_client_conn": .integer(5000)])], state(dc1))
        i.descriptorLimit = 4096
        let out = Planner.plan(i)
        XCTAssertEqual(out.plans["a"]?.maxClientConn, 1008)
        XCTAssertEqual(out.lowered["a"]?.wanted, 5000)
        XCTAssertEqual(out.lowered["b"]?.granted, 1008)
    }

    /// A source whose leader may not take writes (Patroni's): its record, and what the host has seen.
    struct Promoting: LeaderView {
        func replicas(of location: String, maxLag: Int?) -> ReplicaSet { ReplicaSet() }
        var record = WritabilityCheck.RecordSays.writable
        var recordRevision: Int64 = 7
        var probes: [WritabilityProbe] = [.httpJSON(url: "http://10.0.0.2:8008/patroni", expect: ["role": ["master"]], label: "API")]
        var problems: [RecordProblem] = []
        var locations: Set<String> = ["dc1"]
        func leader(of location: String) -> LeaderResolution {
            .leader(LeaderTarget(name: "pg2", address: .tcp(host: "10.0.0.2", port: 5432), lease: 99))
        }
        func writability(of location: String) -> WritabilityCheck? {
            WritabilityCheck(location: location, member: "pg2", record: record, recordRevision: recordRevision, probes: probes)
        }
    }

    func testANamedLeaderThatMayStillBePromotingIsHeldUntilItTakesWrites() {
        var i = input([instance("p1", "dc1")], state([:]))
        i.leaders = Promoting()
        let held = Planner.plan(i)
        XCTAssertNil(held.plans["p1"]?.routing.serving)
        XCTAssertEqual(held.plans["p1"]?.routing.target?.name, "pg2", "its sessions are pg2's")
        XCTAssertEqual(held.plans["p1"]?.routing.reason, "lead master pg2 named, not yet accepting writes (still promoting)")
        XCTAssertEqual(Array(held.uncheckedLeaders.keys), ["dc1|pg2"])
        XCTAssertEqual(held.liveLeaderships, ["dc1|pg2"])
        XCTAssertEqual(held.liveLeases, [99])

        i.readiness = ["dc1|pg2": .takesWrites(recordRevision: 7)]
        let released = Planner.plan(i)
        XCTAssertEqual(released.plans["p1"]?.routing.serving?.name, "pg2")
        XCTAssertTrue(released.uncheckedLeaders.isEmpty)
    }

    /// A crash in place: the leader's record, written after it was seen to take writes, says it
    /// is a replica starting; new clients wait (its sessions stay its own), the node is asked
    /// again. A record as old as the answer, or one that says primary, does not hold anyone.
    func testALaterRecordThatSaysNotWritableHoldsNewClientsUntilTheNodeSaysSoAgain() {
        var i = input([instance("p1", "dc1")], state([:]))
        var view = Promoting(record: .notWritable("its record says role replica, state starting"), recordRevision: 9)
        i.leaders = view
        i.readiness = ["dc1|pg2": .takesWrites(recordRevision: 7)]
        let held = Planner.plan(i)
        guard case .waitingForWrites(let target, let reason)? = held.plans["p1"]?.routing else { return XCTFail("\(String(describing: held.plans["p1"]))") }
        XCTAssertEqual(target.name, "pg2")
        XCTAssertEqual(reason, "lead master pg2 does not take writes now: its record says role replica, state starting")
        XCTAssertEqual(held.plans["p1"]?.stateName, "waiting-for-writes")
        XCTAssertEqual(Array(held.uncheckedLeaders.keys), ["dc1|pg2"])

        i.readiness = ["dc1|pg2": .takesWrites(recordRevision: 9)]
        XCTAssertEqual(Planner.plan(i).plans["p1"]?.routing.serving?.name, "pg2", "the node said so after that record")
        view.record = .writable
        view.recordRevision = 12
        i.leaders = view
        i.readiness = ["dc1|pg2": .takesWrites(recordRevision: 9)]
        XCTAssertEqual(Planner.plan(i).plans["p1"]?.routing.serving?.name, "pg2")

        i.readiness = ["dc1|pg2": .doubted("it refused a connection")]
        XCTAssertEqual(Planner.plan(i).plans["p1"]?.routing.reason, "lead master pg2 does not take writes now: it refused a connection")
    }

    /// With no way to ask the node, its record decides alone; a standby cluster's leader never
    /// takes writes, and clients are not held for it.
    func testTheRecordDecidesWithoutProbesAndAStandbyLeaderIsRefused() {
        var i = input([instance("p1", "dc1")], state([:]))
        i.leaders = Promoting(record: .writable, probes: [])
        XCTAssertEqual(Planner.plan(i).plans["p1"]?.routing.serving?.name, "pg2")
        i.leaders = Promoting(record: .notWritable("its record says state starting"), probes: [])
        XCTAssertEqual(Planner.plan(i).plans["p1"]?.stateName, "waiting-for-writes")
        XCTAssertTrue(Planner.plan(i).uncheckedLeaders.isEmpty, "nothing to ask with")
        i.leaders = Promoting(record: .neverWritable("a standby cluster's leader"))
        let standby = Planner.plan(i)
        XCTAssertEqual(standby.plans["p1"]?.routing, .readOnlyLeader(name: "pg2", reason: "lead master pg2 of dc1 is a standby cluster's leader"))
        XCTAssertEqual(standby.plans["p1"]?.stateName, "standby-leader")
        XCTAssertNil(standby.plans["p1"]?.routing.target, "sessions of the lead master before it are cut")
        XCTAssertTrue(standby.uncheckedLeaders.isEmpty)
    }

    func testAnHTTPAnswerIsReadForTheExpectedFields() {
        let head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
        let primary = ["role": ["master", "primary"], "state": ["running"]]
        XCTAssertTrue(HTTPProbe.answers(head + #"{"state": "running", "role": "master", "timeline": 2}"#, primary))
        XCTAssertTrue(HTTPProbe.answers(head + #"{"state": "running", "role": "primary"}"#, primary))
        XCTAssertFalse(HTTPProbe.answers(head + #"{"state": "running", "role": "replica"}"#, primary), "still in recovery")
        XCTAssertFalse(HTTPProbe.answers("HTTP/1.0 503 Service Unavailable\r\n\r\n" + #"{"state": "stopped", "role": "master"}"#, primary))
        XCTAssertFalse(HTTPProbe.answers(head + #"{"role": "master"}"#, primary), "a field missing is not a yes")
        XCTAssertFalse(HTTPProbe.answers(head + "not json", primary))
        XCTAssertEqual(HTTPProbe.parse("http://127.0.0.1:8008/patroni")?.port, "8008")
        XCTAssertEqual(HTTPProbe.parse("http://[::1]:8008/patroni")?.host, "::1")
        XCTAssertNil(HTTPProbe.parse("https://10.0.0.1:8008/patroni"))
    }

    /// A replica instance (HARP's layout): the location's other data nodes are its candidates
    /// (not a witness); with none, it waits with the reason, or goes to the lead master only
    /// when `replica_fallback` says so; fenced, it has none.
    func testAReplicaInstanceRoutesToTheOtherDataNodes() {
        var pairs = dc1
        pairs["nodes/n2"] = #"{"name":"n2","location":"dc1","dsn":"host=10.0.0.2 port=5432 dbname=app"}"#
        pairs["nodes/w1"] = #"{"name":"w1","location":"dc1","dsn":"host=10.0.0.3 port=5432","node_type":"witness"}"#
        pairs["nodes/x1"] = #"{"name":"x1","location":"dc2","dsn":"host=10.0.0.4 port=5432"}"#
        let replica = instance("r1", "dc1", ["route_to": .string("replica")])
        let out = Planner.plan(input([replica, instance("p1", "dc1")], state(pairs)))
        let plan = try! XCTUnwrap(out.plans["r1"])
        XCTAssertEqual(plan.replicas?.targets.map(\.name), ["n2"])
        XCTAssertEqual(plan.replicas?.targets.first?.database, "app")
        XCTAssertEqual(plan.stateName, "routing-replicas")
        XCTAssertNil(out.plans["p1"]?.replicas, "a lead-master instance has no replica route")

        let alone = Planner.plan(input([replica], state(dc1))).plans["r1"]!
        XCTAssertEqual(alone.stateName, "no-replica")
        XCTAssertEqual(alone.replicas?.reason, "no replica of dc1 in the DCS")
        let fallback = instance("r1", "dc1", ["route_to": .string("replica"), "replica_fallback": .string("lead_master")])
        let fell = Planner.plan(input([fallback], state(dc1))).plans["r1"]!
        XCTAssertEqual(fell.stateName, "replica-fallback")
        XCTAssertEqual(fell.replicas?.targets.map(\.name), ["n1"])

        let fenced = Planner.plan(input([replica], state(pairs), reachable: false, lastContact: .seconds(60))).plans["r1"]!
        XCTAssertEqual(fenced.stateName, "fenced")
        XCTAssertEqual(fenced.replicas?.targets, [])
    }
}

import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import HarpProxy
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The builtin layer-4 mode, through real etcd and real PostgreSQL servers.
final class BuiltinModeTests: XCTestCase {
    var a: PostgresServer { SharedPostgres.first }
    var b: PostgresServer { SharedPostgres.second }

    private func routingRig(port: Int, _ extra: [String: DirectiveValue] = [:]) async throws -> ProxyRig {
        let rig = try await ProxyRig.routing(port: port, extra, node1: a, node2: b)
        stopAtTeardown(rig)
        return rig
    }

    /// p1 on `port`, routing to node1 at 127.0.0.1:`nodePort`, where nothing may listen.
    private func rig(port: Int, node1At nodePort: Int, _ extra: [String: DirectiveValue]) async throws -> ProxyRig {
        var directives = extra
        directives["listen_address"] = .string("127.0.0.1")
        directives["listen_port"] = .integer(port)
        let rig = try ProxyRig([("p1", "dc1", directives)])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", dsn: "host=127.0.0.1 port=\(nodePort)")
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        return rig
    }

    func testTwoInstancesFollowTheirLocations() async throws {
        let (p1, p2) = (freePort(), freePort())
        let rig = try ProxyRig([("proxy-dc1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(p1)]),
                                ("proxy-dc2", "dc2", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(p2)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc2", server: b)
        try await rig.leader("dc1", "node1")
        try await rig.leader("dc2", "node2")
        let routed1 = await rig.waitUntilRouting("proxy-dc1", to: "node1")
        let routed2 = await rig.waitUntilRouting("proxy-dc2", to: "node2")
        XCTAssertTrue(routed1 && routed2)
        XCTAssertEqual(try serverPort(through: p1).get(), "\(a.port)")
        XCTAssertEqual(try serverPort(through: p2).get(), "\(b.port)")
    }

    func testSwitchoverCutsTheOpenSessionAndTheNextConnectionLandsOnTheNewLeader() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)

        let session = try openSession(through: port, tag: "switchover", logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "switchover"), "the transaction is open on node1")
        let cutAt = Date()
        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning }, "the open session is cut when the leader key changes")
        XCTAssertLessThan(Date().timeIntervalSince(cutAt), 5)
        XCTAssertNotEqual(session.waitForExit(), 0)
        XCTAssertTrue(session.log.contains("FATAL:  terminating connection because the lead master of location dc1 moved from node1 to node2 (proxy p1)"),
                      "psql, cut in the middle of a query, shows why: \(session.log)")
        XCTAssertTrue(waitForActivity(on: a, "switchover", count: 0, timeout: 5), "node1's side is closed too")

        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "the next connection lands on node2")
        let line = rig.capture.all.first { $0.message.contains("lead master changed") }
        XCTAssertEqual(line?.metadata["closed"], "1", "one line for the change, with what it closed")
        XCTAssertTrue(line?.metadata["from"]?.hasPrefix("node1") ?? false, "\(line?.metadata ?? [:])")
        XCTAssertTrue(line?.metadata["to"]?.hasPrefix("node2") ?? false, "\(line?.metadata ?? [:])")
        let ms = line?.metadata["ms_since_dcs_event"].flatMap(Double.init)
        XCTAssertNotNil(ms, "the milliseconds from the DCS event to the last close")
        XCTAssertLessThan(ms ?? 1e9, 5000)
    }

    /// Level-triggered: a leader change whose watch event never arrives (the watch's connection
    /// stays open and says nothing, like a dropped network path) still moves the instance, at
    /// the next re-read of the DCS, and the open session to the old lead master is cut.
    func testALeaderChangeTheWatchMissedIsFollowedAfterTheReread() async throws {
        let port = freePort()
        let etcd = try EtcdCluster()
        let relay = try FreezableRelay(to: etcd.members[0].clientPort, logDirectory: etcd.directory.path)
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])], etcd: etcd,
                               endpointsFirst: [DCSEndpoint(tls: false, host: "127.0.0.1", port: relay.port)])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc1", server: b)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let streaming = await eventuallyAsync { rig.session.health.watchEndpoint == "http://127.0.0.1:\(relay.port)" }
        XCTAssertTrue(streaming, "the watch streams through the relay")
        let session = try openSession(through: port, tag: "missed-event", logDirectory: etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "missed-event"), "a transaction is open on node1")

        relay.freeze()
        try await rig.leader("dc1", "node2")
        let moved = await rig.waitUntilRouting("p1", to: "node2", timeout: .seconds(10))
        XCTAssertTrue(moved, "the re-read repairs what the watch missed")
        // Counted once the watch has had its grace to deliver it (a second or so).
        let repaired = await eventuallyAsync(timeout: .seconds(5)) { rig.session.statistics.repairs >= 1 }
        XCTAssertTrue(repaired, "found by a re-read, not by the watch: \(rig.session.statistics)")
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning }, "the session on node1 is cut")
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "the next connection lands on node2")
        relay.thaw()
    }

    /// Sessions cut by a switchover or a stop read why (see `sessionsCutBetweenMessagesAreToldWhy`).
    func testASessionCutByASwitchoverOrAStopIsToldWhy() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)
        try await sessionsCutBetweenMessagesAreToldWhy(rig: rig, port: port, node1: a, node2: b)
    }

    /// A TLS session passes through, and when it is cut nothing is added to it: an ErrorResponse
    /// in the clear would corrupt the encrypted stream.
    func testATLSSessionPassesThroughAndIsCutWithNothingAdded() async throws {
        try await tlsSessionPassesThroughAndIsCutWithNothingAdded(port: freePort(), newLeader: b)
    }

    /// `keepalive` on both sides of a session: keepalive on, idle time and probe interval set to
    /// it (HARP's keepalive period), so that a peer gone silent is found in minutes, not hours.
    func testKeepaliveIsSetOnTheClientAndTheLeaderSide() async throws {
        let port = freePort()
        _ = try await routingRig(port: port, ["keepalive": .duration(.seconds(7))])
        let session = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
        XCTAssertEqual(try session.query("SELECT current_setting('port')"), "\(a.port)")
        let sockets = connectedTCPSockets()
        let clientSide = sockets.filter { $0.local == port }
        let leaderSide = sockets.filter { $0.remote == a.port }
        XCTAssertEqual(clientSide.count, 1, "the proxy's side of the client's connection")
        XCTAssertEqual(leaderSide.count, 1, "the proxy's connection to the lead master")
        for (side, fd) in [("client", clientSide.first?.fd), ("lead master", leaderSide.first?.fd)] {
            guard let fd else { continue }
            XCTAssertEqual(socketOption(fd, SOL_SOCKET, SO_KEEPALIVE), 1, side)
            XCTAssertEqual(socketOption(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE), 7, side)
            XCTAssertEqual(socketOption(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL), 7, side)
        }
        withExtendedLifetime(session) {}
    }

    func testTheStatusRecordFollowsALeaderChangeWithoutWaitingForMonitorInterval() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "monitor_interval": .duration(.seconds(60))])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc1", server: b)
        try await rig.leader("dc1", "node1")
        @Sendable func recordedLeader() async -> String? {
            guard let value = try? await rig.client.range(rig.layout.proxyStatus("p1")).kvs.first?.value,
                  let object = try? JSONSerialization.jsonObject(with: Data(value.utf8)) as? [String: Any] else { return nil }
            return (object["leader"] as? [String: Any])?["name"] as? String
        }
        let first = await eventuallyAsync(timeout: .seconds(10)) { await recordedLeader() == "node1" }
        XCTAssertTrue(first)
        try await rig.leader("dc1", "node2")
        let second = await eventuallyAsync(timeout: .seconds(5)) { await recordedLeader() == "node2" }
        XCTAssertTrue(second, "written at the change, not a minute later")
    }

    func testTheSameLeaderOnANewLeaseCutsNobody() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1", lease: try await rig.client.leaseGrant(ttl: 30).id)
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: port, tag: "release", logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: a, "release"))
        let newLease = try await rig.client.leaseGrant(ttl: 30)
        try await rig.leader("dc1", "node1", lease: newLease.id)
        let seen = await eventuallyAsync { await rig.host.status().first?.plan?.routing.target?.lease == newLease.id }
        XCTAssertTrue(seen)
        // The new plan is applied: time for a wrong cut to reach the session, which must not come.
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertTrue(session.isRunning, "the leader did not move: its session stays")
    }

    func testExpiredLeaseClosesConnectionsAndHeldClientsGet57P03() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "hold_timeout": .duration(.milliseconds(700))])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        let lease = try await rig.client.leaseGrant(ttl: 2)
        try await rig.leader("dc1", "node1", lease: lease.id)
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: port, tag: "lease", logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "lease"))

        // Nobody renews the lease: the key goes, and the session with it.
        XCTAssertTrue(eventually(timeout: 10) { !session.isRunning }, "connections close once the lease expires")
        let started = Date()
        let refused = serverPort(through: port)
        guard case .failure(let error) = refused else { return XCTFail("a client got through with no lead master") }
        XCTAssertTrue(error.description.contains("no lead master for location dc1 (proxy p1)"), error.description)
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 0.6, "the client was held for hold_timeout first")
        let counters = await rig.counters("p1")
        XCTAssertGreaterThanOrEqual(counters.refused, 1)
    }

    func testAClientConnectingDuringALeaderGapIsServedWhenTheLeaderAppears() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        let listening = await rig.waitUntilRouting("p1", to: nil)
        XCTAssertTrue(listening)
        // Several, so that some wait on the instance's loop and some on the other: each one's
        // connect may finish before the instance is done with the DCS event that freed it.
        let clients = (0..<6).map { _ in Task.detached { serverPort(through: port) } }
        try await Task.sleep(for: .seconds(1))  // the gap the test is about: the clients come and wait in it
        try await rig.leader("dc1", "node1")
        for client in clients {
            let result = await client.value
            XCTAssertEqual(try result.get(), "\(a.port)")
        }
    }

    /// An unplanned failover: clients connecting to a lead master that is down go to the new one.
    func testClientsConnectingToALeaderThatIsDownGoToTheNewOneWhenItIsNamed() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "timeout": .duration(.seconds(60))])])
        stopAtTeardown(rig)
        try await rig.node("node2", location: "dc1", server: b)
        try await clientsConnectingToADownLeaderGoToTheNewOne(rig: rig, port: port, newLeader: "node2", newPort: b.port)
    }

    /// Clients started again with the new lead master (see above) whose connect to it fails in
    /// turn read 08006 naming the new one, not the node they first waited on, and are counted
    /// as refused; nobody is left waiting out the old connects' `timeout`.
    func testClientsStartedAgainWhoseNewLeaderRefusesGet08006NamingIt() async throws {
        let port = freePort()
        let dead = freePort()  // nothing listens there
        let down = try SilentHost()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "timeout": .duration(.seconds(60)), "hold_timeout": .duration(.milliseconds(500))])])
        stopAtTeardown(rig)
        try await rig.node("down", location: "dc1", dsn: "host=127.0.0.1 port=\(down.port)")
        try await rig.node("dead", location: "dc1", dsn: "host=127.0.0.1 port=\(dead)")
        try await rig.leader("dc1", "down")
        let routed = await rig.waitUntilRouting("p1", to: "down")
        XCTAssertTrue(routed)
        let clients = (0..<4).map { _ in Task { await onOwnThread { serverPort(through: port, timeout: 30) } } }
        let waiting = await eventuallyAsync(timeout: .seconds(10)) { await rig.counters("p1").current == 4 }
        XCTAssertTrue(waiting, "four clients wait on their connects to the node that is down")
        // The outage the test is about: the connects hang a while before the new leader is named.
        try await Task.sleep(for: .milliseconds(300))
        let moved = Date()
        try await rig.leader("dc1", "dead")
        for client in clients {
            guard case .failure(let error) = await client.value else { XCTFail("nothing listens at the new leader's address"); continue }
            XCTAssertTrue(error.description.contains("cannot connect to the lead master dead (127.0.0.1:\(dead)): Connection refused"), error.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(moved), 10, "refused after hold_timeout, not after the 60 s timeout")
        let counters = await rig.counters("p1")
        XCTAssertEqual(counters.startedAgain, 4)
        XCTAssertEqual(counters.refused, 4)
        XCTAssertEqual(counters.cut, 0)
        let gone = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(gone)
        withExtendedLifetime(down) {}
    }

    /// User space: a client that half-closes, then reads a large answer late, gets all of it.
    func testAClientThatHalfClosesAndReadsLateGetsTheWholeAnswer() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await halfCloseThenReadLate(rig: rig, port: port)
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained, "the connection ends once both sides have closed")
    }

    /// The glue passes a client's FIN on only after every byte it sent before: 6 MB and a
    /// half-close to an echo server that ends on the FIN; all of it comes back, then the EOF.
    func testAHalfCloseIsPassedOnOnlyAfterEveryByteBeforeIt() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)
        let (fd, echo) = try await echoClient(rig: rig, port: port)
        try await echoBack(indexedBytes(6 << 20), readAfter: .zero, fd: fd, echo: echo, rig: rig)
    }

    /// Backpressure both ways at once: 24 MB streamed to an echo server, with a half-close, by a
    /// client that reads only after 2 s. Every byte comes back, in order, then the EOF.
    func testAFloodBothWaysWithALateReaderLosesNothing() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)
        let (fd, echo) = try await echoClient(rig: rig, port: port)
        try await echoBack(indexedBytes(24 << 20), readAfter: .seconds(2), fd: fd, echo: echo, rig: rig)
    }

    /// A client that does not read holds the lead master back (the backend waits in
    /// ClientWrite) instead of the proxy taking the 60 MB result into its memory; a reset from it
    /// ends both sides at once.
    func testALeadMasterIsHeldBackWhileTheClientDoesNotReadAndAResetEndsBothSides() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)
        let fd = try await copyNotRead(through: port, tag: "glue-held", on: a)
        try await Task.sleep(for: .seconds(1))  // time for the proxy to wrongly take the result in, which it must not
        XCTAssertTrue(heldBack(on: a, tag: "glue-held"), "still held back a second later")
        resetAndClose(fd)
        XCTAssertTrue(waitForActivity(on: a, "glue-held", count: 0, timeout: 5), "the backend ends")
        let ended = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(ended)
    }

    /// A lead master that refuses connections for longer than `hold_timeout`: 08006 naming it.
    func testALeaderThatDoesNotAnswerGives08006NamingItsAddress() async throws {
        let port = freePort()
        let dead = freePort()  // nothing listens there
        let rig = try await rig(port: port, node1At: dead, ["hold_timeout": .duration(.milliseconds(300))])
        guard case .failure(let error) = serverPort(through: port) else { return XCTFail("no server listens at the leader's address") }
        XCTAssertTrue(error.description.contains("cannot connect to the lead master node1 (127.0.0.1:\(dead)): Connection refused"), error.description)
        XCTAssertFalse(error.description.contains("SingleConnectionFailure"), "a DBA reads a reason, not an error dump: \(error)")
        let fields = refusal(through: port).fields
        XCTAssertEqual(fields?["S"], "FATAL")
        XCTAssertEqual(fields?["C"], "08006")
        XCTAssertEqual(fields?["M"], "cannot connect to the lead master node1 (127.0.0.1:\(dead)): Connection refused")
        let counters = await rig.counters("p1")
        XCTAssertEqual(counters.refused, 2)
        let gone = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(gone, "the refused client is closed and forgotten")
    }

    /// A lead master whose postmaster refuses connections (stopping for a switchover before the
    /// key moves, or starting again) is asked again for up to `hold_timeout`: a client that comes
    /// meanwhile waits, is served once the lead master listens, and is not refused.
    func testAClientWaitsForALeadMasterThatRefusesConnectionsUntilItListens() async throws {
        let (port, later) = (freePort(), freePort())
        let rig = try await rig(port: port, node1At: later, ["hold_timeout": .duration(.seconds(20))])
        let client = Task { await onOwnThread { serverPort(through: port, timeout: 30) } }
        let waiting = await eventuallyAsync(timeout: .seconds(10)) { await rig.counters("p1").current == 1 }
        XCTAssertTrue(waiting)
        try await Task.sleep(for: .seconds(1))  // refused many times by now, none of which may reach the client
        XCTAssertFalse(canConnect(port: later), "nothing listens at node1's address yet")
        let listening = try TestProcess(name: "listening", executable: "/usr/bin/socat",
                                        arguments: ["TCP-LISTEN:\(later),bind=127.0.0.1,reuseaddr,fork", "TCP:127.0.0.1:\(a.port)"],
                                        logDirectory: rig.etcd.directory.path)
        defer { listening.stop() }
        let result = await client.value
        XCTAssertEqual(try result.get(), "\(a.port)", "served once node1 listens")
        let counters = await rig.counters("p1")
        XCTAssertEqual(counters.refused, 0)
    }

    /// `timeout`: a lead master that never answers the connect (its accept queue full, so the
    /// SYN is dropped) gives 08006 once the timeout has passed, saying so.
    func testALeaderThatNeverAnswersTheConnectGives08006AfterTimeout() async throws {
        let port = freePort()
        let silent = try SilentHost()
        _ = try await rig(port: port, node1At: silent.port, ["timeout": .duration(.milliseconds(600))])
        let started = Date()
        let fields = refusal(through: port).fields
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 0.5, "refused only once the timeout passed")
        XCTAssertEqual(fields?["S"], "FATAL")
        XCTAssertEqual(fields?["C"], "08006")
        XCTAssertEqual(fields?["M"], "cannot connect to the lead master node1 (127.0.0.1:\(silent.port)): no answer within 600 ms (timeout)")
        withExtendedLifetime(silent) {}
    }

    /// With no lead master a client is held for `hold_timeout`, then reads FATAL 57P03. One that
    /// opens with an SSLRequest or a GSSENCRequest is answered 'N' first, as libpq expects, so
    /// that it reads the message. A `hold_timeout` set in the DCS (a bare number: milliseconds)
    /// applies to the next client; a held client that hangs up is forgotten, not refused.
    func testNoLeaderGivesFATAL57P03AfterAnNToSSLOrGSSENCRequests() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "hold_timeout": .duration(.milliseconds(300))])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        let listening = await rig.waitUntilRouting("p1", to: nil)
        XCTAssertTrue(listening)
        for request: UInt32? in [nil, 80877103, 80877104] {
            let started = Date()
            let (answer, fields) = refusal(through: port, request: request)
            if let request { XCTAssertEqual(answer, UInt8(ascii: "N"), "the answer to request \(request)") }
            XCTAssertEqual(fields?["S"], "FATAL")
            XCTAssertEqual(fields?["V"], "FATAL")
            XCTAssertEqual(fields?["C"], "57P03")
            XCTAssertEqual(fields?["M"], "no lead master for location dc1 (proxy p1)")
            XCTAssertGreaterThan(Date().timeIntervalSince(started), 0.25, "held for hold_timeout first")
        }
        let refused = await rig.counters("p1").refused
        XCTAssertEqual(refused, 3)

        try await rig.client.put(rig.layout.proxyConfig("p1"), #"{"hold_timeout": 4000}"#)
        let applied = await eventuallyAsync { await rig.host.status().first?.plan?.directives[DirectiveKeys.holdTimeout] == .milliseconds(4000) }
        XCTAssertTrue(applied)
        let fd = connectedLoopbackSocket(port: port)!
        writeAll(fd, startupMessage())
        let held = await eventuallyAsync { await rig.counters("p1").current == 1 }
        XCTAssertTrue(held)
        try await Task.sleep(for: .seconds(1))  // past the old 300 ms, when a wrong refusal would come
        let stillHeld = await rig.counters("p1")
        XCTAssertEqual(stillHeld.current, 1, "held past the old 300 ms: the new hold_timeout applies")
        XCTAssertEqual(stillHeld.refused, 3)
        close(fd)
        let forgotten = await eventuallyAsync(timeout: .seconds(2)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(forgotten, "a held client that hangs up is forgotten before its hold_timeout")
        let after = await rig.counters("p1")
        XCTAssertEqual(after.refused, 3, "a client that left is not counted as refused")
    }

    /// A client being refused when the lead master moves (its lead master did not answer; it has
    /// been answered 'N' and its startup message is still to come) still reads its error, and
    /// counts neither as a session cut nor as a client started again.
    func testAClientBeingRefusedWhenTheLeaderMovesIsNeitherCutNorStartedAgain() async throws {
        let (port, dead) = (freePort(), freePort())
        let rig = try await rig(port: port, node1At: dead, ["hold_timeout": .duration(.milliseconds(200))])
        try await rig.node("node2", location: "dc1", server: a)
        guard let fd = connectedLoopbackSocket(port: port) else { return XCTFail("cannot connect to the proxy") }
        defer { close(fd) }
        writeAll(fd, wireMessage(nil, [0x04, 0xD2, 0x16, 0x2F]))  // SSLRequest
        var answer: UInt8 = 0
        XCTAssertEqual(recv(fd, &answer, 1, 0), 1)
        XCTAssertEqual(answer, UInt8(ascii: "N"))
        let refusing = await eventuallyAsync { await rig.counters("p1").refused == 1 }
        XCTAssertTrue(refusing, "the connect to node1 failed and the client is being refused")

        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { rig.capture.all.contains { $0.message.contains("lead master changed") } })
        let line = rig.capture.all.first { $0.message.contains("lead master changed") }
        XCTAssertEqual(line?.metadata["closed"], "0", "\(line?.metadata ?? [:])")
        XCTAssertNil(line?.metadata["started_again"], "\(line?.metadata ?? [:])")
        let counters = await rig.counters("p1")
        XCTAssertEqual(counters.cut, 0)
        XCTAssertEqual(counters.startedAgain, 0)

        writeAll(fd, startupMessage())
        let reply = readToEOF(fd, atMost: 1 << 16)
        XCTAssertTrue(String(decoding: reply, as: UTF8.self).contains("08006"), "it reads its error: \(String(decoding: reply, as: UTF8.self))")
    }

    func testMaxClientConnRefusesOnlyTheExtraClient() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "max_client_conn": .integer(2)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let s1 = try openSession(through: port, tag: "max-1", seconds: 20, logDirectory: rig.etcd.directory.path)
        let s2 = try openSession(through: port, tag: "max-2", seconds: 20, logDirectory: rig.etcd.directory.path)
        defer { s1.killNow(); s2.killNow() }
        XCTAssertTrue(waitForActivity(on: a, "max-1") && waitForActivity(on: a, "max-2"))
        guard case .failure(let error) = serverPort(through: port) else { return XCTFail("a third client got in") }
        XCTAssertTrue(error.description.contains("too many connections for proxy p1"), error.description)
        XCTAssertTrue(s1.isRunning && s2.isRunning, "the two admitted clients are unaffected")
        let refusedBefore = await rig.counters("p1").refused
        for _ in 0..<10 {
            let fields = refusal(through: port).fields
            XCTAssertEqual(fields?["S"], "FATAL")
            XCTAssertEqual(fields?["C"], "53300")
            XCTAssertEqual(fields?["M"], "too many connections for proxy p1")
        }
        let refusedAfter = await rig.counters("p1").refused
        XCTAssertEqual(refusedAfter - refusedBefore, 10)
        // The log: the first refusal at once, then one line for the burst that followed it
        // within five seconds, with its count: never a burst reported as one refusal.
        func refusalLines() -> [String] {
            rig.capture.messages(at: .warning).filter { $0.message.contains("client refused: too many connections") }.map { $0.metadata["refused"] ?? "" }
        }
        XCTAssertTrue(eventually(timeout: 8) { refusalLines().count == 2 }, "\(refusalLines())")
        XCTAssertEqual(refusalLines(), ["\(refusedBefore)", "10"])
        XCTAssertTrue(s1.isRunning && s2.isRunning)
    }

    /// A lead master on a Unix socket (both ends of such a connection look alike from outside).
    func testALeaderWhoseDSNIsAUnixSocket() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", dsn: "host=\(b.socketDirectory) port=\(b.port) dbname=postgres")
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)")

        // Two sessions at once, both ends of each relayed: one ended (its backend terminated),
        // the other goes on, on its own backend.
        let conninfo = "host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=disable"
        let (first, second) = (try PGSession(conninfo), try PGSession(conninfo))
        let firstPID = try first.query("SELECT pg_backend_pid()"), secondPID = try second.query("SELECT pg_backend_pid()")
        XCTAssertNotEqual(firstPID, secondPID)
        XCTAssertEqual(try second.query("SELECT pg_terminate_backend(\(firstPID))::text"), "true")
        XCTAssertTrue(eventually(timeout: 10) { (try? first.query("SELECT 1")) == nil }, "the first session ended")
        for _ in 0..<20 { XCTAssertEqual(try second.query("SELECT pg_backend_pid()"), secondPID, "the second goes on, on its own backend") }
    }

    func testGarbageAndHalfStartedClientsDoNotDisturbOthers() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: port, tag: "bystander", seconds: 20, logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: a, "bystander"))

        for payload in [Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), [0, 0, 0, 8], (0..<4096).map { UInt8($0 % 251) }, []] {
            loopbackConnect(port: port, send: payload)
        }
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)")
        XCTAssertTrue(session.isRunning, "the open session is untouched")
        XCTAssertEqual(sessions(on: a, tagged: "bystander"), 1)
    }

    func testAnUnmanagedInstanceKeepsItsSessionAndTargetWhileTheManagedOneMoves() async throws {
        let (pm, pu) = (freePort(), freePort())
        let rig = try ProxyRig([("managed", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(pm)]),
                                ("unmanaged", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(pu)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc1", server: b)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("unmanaged", to: "node1")
        XCTAssertTrue(routed)
        try await rig.client.put(rig.layout.proxyManaged("unmanaged"), #""false""#)
        let unmanaged = await eventuallyAsync { await rig.host.status().first { $0.name == "unmanaged" }?.plan?.stateName == "unmanaged" }
        XCTAssertTrue(unmanaged)
        let onManaged = try openSession(through: pm, tag: "um-m", logDirectory: rig.etcd.directory.path)
        let onUnmanaged = try openSession(through: pu, tag: "um-u", logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "um-m") && waitForActivity(on: a, "um-u"))

        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { !onManaged.isRunning }, "the managed instance cuts and moves")
        XCTAssertEqual(try serverPort(through: pm).get(), "\(b.port)")
        XCTAssertTrue(onUnmanaged.isRunning, "the unmanaged instance keeps its open session")
        XCTAssertEqual(try serverPort(through: pu).get(), "\(a.port)", "and its old target")

        try await rig.client.put(rig.layout.proxyManaged("unmanaged"), #""true""#)
        XCTAssertTrue(eventually(timeout: 5) { !onUnmanaged.isRunning }, "managed again, it follows the leader at once")
        XCTAssertEqual(try serverPort(through: pu).get(), "\(b.port)")
    }

    func testEachInstanceWritesItsStatusRecordOnALease() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "monitor_interval": .duration(.milliseconds(300)), "hold_timeout": .duration(.milliseconds(300))])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        _ = try serverPort(through: port).get()

        let key = rig.layout.proxyStatus("p1")
        var record: [String: Any] = [:]
        let written = await eventuallyAsync {
            guard let kv = try? await rig.client.range(key).kvs.first,
                  let object = try? JSONSerialization.jsonObject(with: Data(kv.value.utf8)) as? [String: Any],
                  object["state"] as? String == "routing", (object["clients"] as? [String: Any])?["total"] as? Int == 1 else { return false }
            return true
        }
        XCTAssertTrue(written)
        let kv = try await rig.client.range(key).kvs.first
        record = try JSONSerialization.jsonObject(with: Data(kv!.value.utf8)) as! [String: Any]
        XCTAssertEqual(record["name"] as? String, "p1")
        XCTAssertEqual(record["location"] as? String, "dc1")
        XCTAssertEqual(record["type"] as? String, "builtin")
        XCTAssertEqual(record["managed"] as? Bool, true)
        XCTAssertEqual(record["listen"] as? String, "127.0.0.1:\(port)")
        XCTAssertEqual((record["leader"] as? [String: Any])?["name"] as? String, "node1")
        XCTAssertEqual((record["leader"] as? [String: Any])?["address"] as? String, "127.0.0.1:\(a.port)")
        XCTAssertEqual(record["max_client_conn"] as? Int, 100)
        let since = (record["since"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) }
        XCTAssertNotNil(since, "since is an RFC 3339 time: \(record["since"] ?? "none")")
        XCTAssertLessThan(abs(since?.timeIntervalSinceNow ?? 100), 60)
        XCTAssertNotEqual(kv!.lease, 0, "the record sits on a lease")
        let ttl = try await rig.client.leaseTimeToLive(kv!.lease)
        XCTAssertEqual(ttl.granted, 2, "three intervals, at least two seconds")

        @Sendable func current() async -> [String: Any]? {
            guard let kv = try? await rig.client.range(key).kvs.first else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(kv.value.utf8)) as? [String: Any]
        }
        @Sendable func clients(_ record: [String: Any]?) -> [String: Int] { record?["clients"] as? [String: Int] ?? [:] }
        let session = try openSession(through: port, tag: "record", seconds: 30, logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "record"))
        let counted = await eventuallyAsync { clients(await current())["current"] == 1 }
        let whileOpen = await current()
        XCTAssertTrue(counted, "clients.current counts the open session: \(whileOpen ?? [:])")

        try await rig.leader("dc1", nil)
        let noLeader = await eventuallyAsync { await current()?["state"] as? String == "no-leader" }
        XCTAssertTrue(noLeader)
        let withoutLeader = await current()
        XCTAssertTrue(withoutLeader?["leader"] is NSNull, "leader is null: \(withoutLeader ?? [:])")
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning })
        let refusedClient = serverPort(through: port)  // held for hold_timeout, then refused
        guard case .failure = refusedClient else { return XCTFail("a client got through with no lead master") }
        let refused = await eventuallyAsync {
            let record = clients(await current())
            return record["refused"] == 1 && record["current"] == 0
        }
        let afterRefusal = await current()
        XCTAssertTrue(refused, "\(afterRefusal ?? [:])")

        await rig.stop()
        let stopped = await current()
        XCTAssertEqual(stopped?["state"] as? String, "stopped", "a stopped proxy says so: \(stopped ?? [:])")
        XCTAssertTrue(stopped?["leader"] is NSNull)
        XCTAssertEqual(clients(stopped)["current"], 0)
        XCTAssertEqual(clients(stopped)["total"], 3)
        let gone = await eventuallyAsync(timeout: .seconds(5)) { await current() == nil }
        XCTAssertTrue(gone, "then, its lease no longer renewed, the record goes")
    }

    /// A client pipelines queries with large results (20 MB each), reads none, and dies with a
    /// reset: PostgreSQL, blocked writing to the proxy, reads nothing more, and the proxy keeps
    /// the queries it could not pass on. Its backend is
    /// freed at once (not kept with its transaction and slot for good, as HAProxy keeps it), and
    /// the proxy holds no descriptor of the session.
    func testADeadClientsBackendIsFreedAtOnce() async throws {
        let port = freePort()
        let rig = try await routingRig(port: port)
        _ = try serverPort(through: port).get()
        let warmedUp = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(warmedUp)
        let before = openDescriptors()
        let tag = "dead-client-\(port)"
        let client = connectedLoopbackSocket(port: port)!
        let startup = wireMessage(nil, [0, 3, 0, 0] + Array("user\0postgres\0database\0postgres\0application_name\0\(tag)\0\0".utf8))
        let query = wireMessage("Q", Array("SELECT repeat('x', 1000000) FROM generate_series(1, 20)\0".utf8))
        writeAll(client, startup)
        // Queries until nothing more is taken: what PostgreSQL does not read is kept by the proxy.
        _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
        let batch = Array((0..<100).map { _ in query }.joined())
        var idleSince = ContinuousClock.now, sent = 0
        while ContinuousClock.now - idleSince < .milliseconds(500) {
            let n = batch.withUnsafeBytes { send(client, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; idleSince = .now } else { usleep(10_000) }  // pacing while the proxy moves bytes
        }
        XCTAssertGreaterThan(sent, 1 << 20, "queries pipelined")
        func backends() -> Int {
            Int((try? PostgresServer.psql(host: "127.0.0.1", port: a.port, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(tag)'")) ?? "-1") ?? -1
        }
        // PostgreSQL has sent what the proxy and the client's socket hold, and waits to send more.
        XCTAssertTrue(eventually(timeout: 20) {
            (try? PostgresServer.psql(host: "127.0.0.1", port: self.a.port,
                                      "SELECT wait_event FROM pg_stat_activity WHERE application_name = '\(tag)'")) == "ClientWrite"
        }, "the backend blocks writing results no one reads")
        resetAndClose(client)
        XCTAssertTrue(eventually(timeout: 10) { backends() == 0 }, "the backend left pg_stat_activity")
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained)
        XCTAssertTrue(eventually(timeout: 5) { openDescriptors() <= before }, "no descriptor of the session is left: \(openDescriptors()) > \(before)")
    }

    /// A client that vanishes without a word (no reset, no FIN: its host gone silent), idle in a
    /// transaction: TCP keepalive finds it within 10 × `keepalive` (the idle time, then the
    /// kernel's 9 probes), and its backend is freed at once then. The client sits in a network
    /// namespace of the test's own, behind a veth pair; the test takes its address away, so that
    /// every packet to it is dropped unanswered. (A link taken down fails the probes locally,
    /// and Linux does not count a probe it could not send.)
    func testAClientGoneSilentIsFoundByKeepaliveAndItsBackendFreed() async throws {
        guard getuid() == 0 else { throw XCTSkip("network namespaces need root (CI runs as root)") }
        let id = String(UInt32.random(in: 0..<1_000_000), radix: 36)
        let (ns, near, far) = ("harp-t-\(id)", "hvn\(id)", "hvf\(id)")
        let subnet = "10.231.\(Int.random(in: 0..<64) * 4)"
        func ip(_ arguments: String...) throws {
            let result = try runCommand("/usr/sbin/ip", arguments)
            guard result.status == 0 else { throw FixtureError("ip \(arguments.joined(separator: " ")): \(result.output)") }
        }
        try ip("netns", "add", ns)
        defer { _ = try? runCommand("/usr/sbin/ip", ["netns", "delete", ns]); _ = try? runCommand("/usr/sbin/ip", ["link", "delete", near]) }
        try ip("link", "add", near, "type", "veth", "peer", "name", far, "netns", ns)
        try ip("addr", "add", "\(subnet).1/30", "dev", near)
        try ip("link", "set", near, "up")
        try ip("-n", ns, "addr", "add", "\(subnet).2/30", "dev", far)
        try ip("-n", ns, "link", "set", far, "up")
        try ip("-n", ns, "link", "set", "lo", "up")

        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("\(subnet).1"), "listen_port": .integer(port), "keepalive": .duration(.seconds(1))])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let tag = "vanished-\(id)"
        // psql in the namespace: a transaction opened, then idle, its input kept open.
        let client = try TestProcess(name: "psql-\(id)", executable: "/usr/sbin/ip", arguments: [
            "netns", "exec", ns, "sh", "-c",
            "(echo 'BEGIN;'; echo 'SELECT 1;'; sleep 600) | \(PostgresServer.binDirectory)/psql -h \(subnet).1 -p \(port) -U postgres -d postgres -v ON_ERROR_STOP=1",
        ], logDirectory: rig.etcd.directory.path, environment: ["PGAPPNAME": tag, "PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"])
        defer { client.killNow() }
        func state() -> String? {
            try? PostgresServer.psql(host: "127.0.0.1", port: a.port,
                                     "SELECT coalesce(string_agg(state || ' ' || query, ','), '') FROM pg_stat_activity WHERE application_name = '\(tag)'")
        }
        XCTAssertTrue(eventually(timeout: 20) { state() == "idle in transaction SELECT 1;" }, "the session is open: \(state() ?? "?")\n\(client.log)")
        try ip("-n", ns, "addr", "flush", "dev", far)
        let downAt = ContinuousClock.now
        XCTAssertTrue(eventually(timeout: 60) { state() == "" }, "the backend was freed: \(state() ?? "?")")
        let took = ContinuousClock.now - downAt
        XCTAssertGreaterThan(took, .seconds(1), "not before keepalive could have found the client gone")
        print("client gone silent to backend freed: \(took) (keepalive 1 s: at most about 10 s)")
    }

    func testNoDescriptorLeakAfterManyConnections() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
                                               "max_client_conn": .integer(2000)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        _ = try serverPort(through: port).get()  // warm up: the first connection sets up what stays
        // Its session over: the relay has closed both its descriptors by then.
        let warmedUp = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(warmedUp)
        let before = openDescriptors()
        for _ in 0..<1000 { loopbackConnect(port: port, send: []) }
        let drained = await eventuallyAsync(timeout: .seconds(20)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained)
        // Closes may still be under way: wait for them (a leak stays, and still fails this).
        _ = eventually(timeout: 5) { openDescriptors() <= before + 4 }
        let after = openDescriptors()
        XCTAssertLessThanOrEqual(after, before + 4, "descriptors before: \(before), after 1,000 connections: \(after)")
        let total = await rig.counters("p1").total
        XCTAssertGreaterThanOrEqual(total, 1000)
    }
}

func openDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

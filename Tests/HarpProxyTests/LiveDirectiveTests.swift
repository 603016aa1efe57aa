import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
@testable import HarpProxy
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Directive changes in the DCS take effect without a restart.
final class LiveDirectiveTests: XCTestCase {
    static var pg: PostgresServer { SharedPostgres.first }

    func testANewListenPortRebindsAndExistingConnectionsStay() async throws {
        let (first, second) = (freePort(), freePort())
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(first)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: Self.pg)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: first, tag: "rebind", logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "rebind"))

        try await rig.client.put(rig.layout.proxyConfig("p1"), #"{"listen_port": \#(second)}"#)
        XCTAssertTrue(eventually(timeout: 5) { (try? serverPort(through: second).get()) == "\(Self.pg.port)" }, "the new port serves")
        XCTAssertTrue(eventually(timeout: 5) { !canConnect(port: first) }, "the old port is closed")
        XCTAssertTrue(session.isRunning, "the session opened on the old port stays")
        XCTAssertEqual(sessions(on: Self.pg, tagged: "rebind"), 1)
    }

    func testMovingToAnotherAddressOnTheSamePort() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("0.0.0.0"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: Self.pg)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: port, tag: "move", logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "move"))

        // The wildcard listener holds the port: the move must free it first, not retry forever.
        try await rig.client.put(rig.layout.proxyConfig("p1"), #"{"listen_address": "127.0.0.2"}"#)
        let moved = await eventuallyAsync { await rig.host.status().first?.listen == "127.0.0.2:\(port)" }
        XCTAssertTrue(moved, "\(rig.capture.messages(at: .error).map(\.metadata))")
        let through = Result { try PostgresServer.psql(host: "127.0.0.2", port: port, "SELECT current_setting('port')") }
        XCTAssertEqual(try through.get(), "\(Self.pg.port)")
        XCTAssertTrue(session.isRunning, "the established session stays")
    }

    func testAListenerThatCannotBindIsRetriedWhileOtherInstancesRun() async throws {
        let (taken, free) = (freePort(), freePort())
        let squatter = try listen(on: taken)
        let rig = try ProxyRig([("blocked", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(taken)]),
                                ("fine", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(free)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: Self.pg)
        try await rig.leader("dc1", "node1")
        let fineRouted = await rig.waitUntilRouting("fine", to: "node1")
        XCTAssertTrue(fineRouted)
        XCTAssertEqual(try serverPort(through: free).get(), "\(Self.pg.port)", "the other instance runs")
        let logged = await eventuallyAsync { rig.capture.messages(at: .error).contains { $0.message.contains("cannot listen") && $0.metadata["instance"] == "blocked" } }
        XCTAssertTrue(logged)

        close(squatter)
        let blockedRouted = await rig.waitUntilRouting("blocked", to: "node1", timeout: .seconds(5))
        XCTAssertTrue(blockedRouted, "bound once the port is free")
        XCTAssertEqual(try serverPort(through: taken).get(), "\(Self.pg.port)")
        XCTAssertEqual(rig.capture.messages(at: .error).filter { $0.message.contains("cannot listen") }.count, 1, "one ERROR, not one per retry")
    }

    func testMaxClientConnChangesApplyToNewClients() async throws {
        let port = freePort()
        let rig = try ProxyRig([("p1", "dc1", ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)])])
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: Self.pg)
        try await rig.leader("dc1", "node1")
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed)
        let session = try openSession(through: port, tag: "limit", logDirectory: rig.etcd.directory.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "limit"))

        try await rig.client.put(rig.layout.globalProxyConfig, #"{"max_client_conn": 1}"#)
        let applied = await eventuallyAsync { await rig.host.status().first?.plan?.maxClientConn == 1 }
        XCTAssertTrue(applied)
        guard case .failure(let error) = serverPort(through: port) else { return XCTFail("the limit did not apply") }
        XCTAssertTrue(error.description.contains("too many connections for proxy p1"), error.description)
        XCTAssertTrue(session.isRunning, "the client already in stays")
    }

    func testMaxClientConnIsLoweredToWhatDescriptorsAllow() {
        XCTAssertEqual(DescriptorBudget.caps(for: ["a": 100, "b": 300], limit: 65536), ["a": 100, "b": 300])
        // (1024 - 64) / 2 = 480 clients fit; 400 + 1200 are asked for: each is scaled by 480/1600.
        XCTAssertEqual(DescriptorBudget.caps(for: ["a": 400, "b": 1200], limit: 1024), ["a": 120, "b": 360])
        XCTAssertEqual(DescriptorBudget.caps(for: ["a": 5], limit: 10), ["a": 1], "never below one")
    }

    /// A plain socket listening on a loopback port, to take it from the proxy.
    func listen(on port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let bound = withLoopbackAddress(port: port) { bind(fd, $0, $1) }
        guard bound == 0, Glibc.listen(fd, 1) == 0 else { throw FixtureError("cannot take port \(port)") }
        return fd
    }
}

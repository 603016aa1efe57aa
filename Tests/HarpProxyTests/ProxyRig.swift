import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import HarpProxy
import HarpTestFixtures
import Logging
import NIOPosix
import XCTest

/// A proxy host in the test process, with its own etcd, talking to real PostgreSQL servers.
final class ProxyRig: @unchecked Sendable {
    let etcd: EtcdCluster
    let layout = DCSLayout(cluster: "t")
    let client: EtcdClient
    let session: DCSSession
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    /// The relay threads of its builtin sessions, stopped with it.
    let relays = RelayGroup(threads: 2)
    let host: ProxyHost
    let capture = LogCapture()
    private var routing: Task<Void, Never>?
    /// Things that must live as long as the rig, such as the folder its PgBouncers write to.
    var keepAlive: [AnyObject] = []

    /// - Parameter instances: name, location and local directives of each instance.
    /// - Parameter configDirectory: where config.yml would be: pgbouncer instances write their files there.
    /// - Parameter endpointsFirst: DCS endpoints the proxy's session tries before etcd's own (a relay).
    init(_ instances: [(String, String, [String: DirectiveValue])], etcd: EtcdCluster? = nil,
         requestTimeout: Duration = .milliseconds(300), resyncInterval: Duration = .seconds(1), configDirectory: String = ".",
         endpointsFirst: [DCSEndpoint] = []) throws {
        self.etcd = try etcd ?? EtcdCluster()
        client = EtcdClient(configuration: self.etcd.dcsConfiguration())
        let layout = self.layout
        var configuration = self.etcd.dcsConfiguration(requestTimeout: requestTimeout, resyncInterval: resyncInterval)
        configuration.endpoints = endpointsFirst + configuration.endpoints
        session = DCSSession(configuration: configuration,
                             prefix: layout.prefix, logger: capture.logger("harp.dcs"), ignoring: { layout.isProxyStatus($0) })
        let configs = instances.map { name, location, directives in
            var instance = InstanceConfiguration(name: name, location: location, directives: DirectiveSet(directives),
                                                 source: SourceLocation(file: "test", line: 1, column: 1))
            instance.configDirectory = configDirectory
            return instance
        }
        host = ProxyHost(instances: configs, session: session, group: group, relays: relays, layout: layout, logger: capture.logger("harp.proxy"))
        session.start()
        let host = self.host
        routing = Task { await host.run() }
    }

    func node(_ name: String, location: String, dsn: String) async throws {
        try await client.put(layout.node(name), #"{"name":"\#(name)","location":"\#(location)","dsn":"\#(dsn)"}"#)
    }

    func node(_ name: String, location: String, server: PostgresServer) async throws {
        try await node(name, location: location, dsn: "host=127.0.0.1 port=\(server.port) dbname=postgres")
    }

    func leader(_ location: String, _ node: String?, lease: Int64 = 0) async throws {
        if let node { try await client.put(layout.leader(location: location), #"{"name":"\#(node)"}"#, lease: lease) }
        else { try await client.delete(layout.leader(location: location)) }
    }

    /// Waits until the instance's plan routes to `node` (nil: to no one) and it listens.
    func waitUntilRouting(_ instance: String, to node: String?, timeout: Duration = .seconds(10)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let s = await host.status().first(where: { $0.name == instance }), s.listen != nil,
               s.plan?.routing.target?.name == node { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func counters(_ instance: String) async -> ClientCounters {
        await host.status().first { $0.name == instance }?.clients ?? ClientCounters()
    }

    /// Stops the host, its DCS session and its event loops; a second call does nothing.
    func stop() async {
        guard let routing else { return }
        self.routing = nil
        routing.cancel()
        await routing.value  // nothing may come back to the host's event loop once the group stops
        await host.shutdown()
        relays.stop()
        session.shutdown()
        try? await group.shutdownGracefully()
    }
}

extension XCTestCase {
    /// Stops `rig` once the test has ended, however it ended (an assertion failed, a step threw,
    /// a guard returned early): `stop` is async, which a `defer` cannot call. The block then lets
    /// go of the rig, so that its etcd stops too (XCTest keeps a test's teardown blocks until the
    /// run ends). A rig the test stopped itself is left as it is.
    func stopAtTeardown(_ rig: ProxyRig) {
        let held = HeldRig(rig)
        addTeardownBlock { await held.take()?.stop() }
    }
}

/// A rig a teardown block holds until it stops it (`stopAtTeardown`).
final class HeldRig: @unchecked Sendable {
    private let lock = NSLock()
    private var rig: ProxyRig?

    init(_ rig: ProxyRig) { self.rig = rig }

    func take() -> ProxyRig? {
        lock.withLock {
            let taken = rig
            rig = nil
            return taken
        }
    }
}

/// psql through a proxy port: the value of `SELECT current_setting('port')`, or libpq's error.
extension ProxyRig {
    /// One instance, p1 on 127.0.0.1:`port` with `extra` directives, following dc1, where node1
    /// leads and node2 stands by; ready for clients.
    static func routing(port: Int, _ extra: [String: DirectiveValue] = [:], node1: PostgresServer, node2: PostgresServer,
                        file: StaticString = #filePath, line: UInt = #line) async throws -> ProxyRig {
        var directives: [String: DirectiveValue] = ["listen_address": .string("127.0.0.1"), "listen_port": .integer(port)]
        directives.merge(extra) { $1 }
        let rig = try ProxyRig([("p1", "dc1", directives)])
        do {
            try await rig.node("node1", location: "dc1", server: node1)
            try await rig.node("node2", location: "dc1", server: node2)
            try await rig.leader("dc1", "node1")
        } catch {
            await rig.stop()  // the caller never gets it: nothing else would stop it
            throw error
        }
        let routed = await rig.waitUntilRouting("p1", to: "node1")
        XCTAssertTrue(routed, file: file, line: line)
        return rig
    }
}

func serverPort(through port: Int, timeout: Int = 10) -> Result<String, FixtureError> {
    Result { try PostgresServer.psql(host: "127.0.0.1", port: port, "SELECT current_setting('port')", timeout: timeout) }
        .mapError { $0 as? FixtureError ?? FixtureError("\($0)") }
}

/// A psql session kept open in the background (inside a transaction, sleeping), through `port`.
/// `tag` marks its query so that `waitForActivity` finds this session and no other.
func openSession(through port: Int, tag: String, seconds: Int = 30, logDirectory: String) throws -> TestProcess {
    try TestProcess(name: "psql-\(tag)", executable: "\(PostgresServer.binDirectory)/psql",
                    arguments: ["-X", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres",
                                "-c", "BEGIN; SELECT 'session-open'; SELECT pg_sleep(\(seconds)) /* \(tag) */; COMMIT;"],
                    logDirectory: logDirectory, environment: ["PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"])
}

/// How many sessions on `server` run a query tagged `tag`.
func sessions(on server: PostgresServer, tagged tag: String) -> Int {
    Int((try? server.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* \(tag) */%' AND pid <> pg_backend_pid()")) ?? "") ?? -1
}

/// Waits until `server` runs `count` sessions tagged `tag`.
func waitForActivity(on server: PostgresServer, _ tag: String, count: Int = 1, timeout: TimeInterval = 10) -> Bool {
    eventually(timeout: timeout) { sessions(on: server, tagged: tag) == count }
}

/// Sessions through `port` cut by a switchover from `node1` to `node2` read why (57P01, as from
/// PostgreSQL's own termination), not "server closed the connection unexpectedly": in plain text
/// from the start, after an SSLRequest answered 'N', and inside a transaction. So does one cut
/// because the proxy stops.
func sessionsCutBetweenMessagesAreToldWhy(rig: ProxyRig, port: Int, node1: PostgresServer, node2: PostgresServer,
                                          file: StaticString = #filePath, line: UInt = #line) async throws {
    func session(_ sslmode: String, on server: PostgresServer) throws -> PGSession {
        let session = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=\(sslmode) gssencmode=disable")
        session.verboseErrors()
        XCTAssertEqual(try session.query("SELECT current_setting('port')"), "\(server.port)", file: file, line: line)
        return session
    }
    let plain = try session("disable", on: node1)
    let afterN = try session("prefer", on: node1)
    let inTransaction = try session("disable", on: node1)
    _ = try inTransaction.query("BEGIN")
    try await rig.leader("dc1", "node2")
    let cut = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
    XCTAssertTrue(cut, "the sessions are cut", file: file, line: line)
    let counted = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").cut == 3 }
    XCTAssertTrue(counted, "the instance counts the three cut sessions", file: file, line: line)
    for (name, session) in [("plain", plain), ("after 'N'", afterN), ("in a transaction", inTransaction)] {
        let result = await session.run("SELECT 1")
        guard case .failure(let error) = result else { return XCTFail("\(name): the session was cut", file: file, line: line) }
        XCTAssertTrue(error.description.contains("FATAL:  57P01: terminating connection because the lead master of location dc1 moved from node1 to node2 (proxy p1)"),
                      "\(name): \(error)", file: file, line: line)
    }

    let open = try session("disable", on: node2)
    await rig.stop()
    let result = await open.run("SELECT 1")
    guard case .failure(let error) = result else { return XCTFail("the session ends with the proxy", file: file, line: line) }
    XCTAssertTrue(error.description.contains("57P01: terminating connection because proxy p1 is stopping"), "\(error)", file: file, line: line)
}

extension XCTestCase {
    /// A TLS session (verify-full) through `port` to a TLS-enabled PostgreSQL, cut when the leader
    /// moves to `newLeader`: its end must be a clean end of the TLS stream, with nothing added in
    /// the clear. `directives` are the instance's beyond its listener; `joined` looks at the
    /// instance's counters while the session is open.
    func tlsSessionPassesThroughAndIsCutWithNothingAdded(port: Int, newLeader: PostgresServer, _ directives: [String: DirectiveValue] = [:],
                                                         joined: (ClientCounters) -> Void = { _ in },
                                                         file: StaticString = #filePath, line: UInt = #line) async throws {
        let tls = try PostgresServer()
        defer { tls.stop() }
        let certificates = try TestCertificates.make(in: tls.directory.path)
        try tls.enableTLS(certificates)
        let rig = try await ProxyRig.routing(port: port, directives, node1: tls, node2: newLeader, file: file, line: line)
        stopAtTeardown(rig)
        let session = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres connect_timeout=10 sslmode=verify-full sslrootcert=\(certificates.caFile) gssencmode=disable")
        XCTAssertEqual(try session.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "t", "TLS from the client to PostgreSQL", file: file, line: line)
        joined(await rig.counters("p1"))
        try await rig.leader("dc1", "node2")
        let cut = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(cut, file: file, line: line)
        let result = await session.run("SELECT 1")
        guard case .failure(let error) = result else { return XCTFail("the session was cut", file: file, line: line) }
        XCTAssertTrue(error.description.contains("SSL SYSCALL error: EOF detected") || error.description.contains("server closed the connection unexpectedly"),
                      "a clean end of the TLS stream, not a corrupted one: \(error)", file: file, line: line)
        await rig.stop()
    }
}

/// An unplanned failover: the lead master's host is down (connects to it hang), and six clients
/// that connect meanwhile wait on those connects (the instance's `timeout` must be long). When the
/// DCS names `newLeader` they go to it, neither cut nor left waiting out `timeout`: nothing of
/// theirs reached the old one.
func clientsConnectingToADownLeaderGoToTheNewOne(rig: ProxyRig, port: Int, newLeader: String, newPort: Int,
                                                 file: StaticString = #filePath, line: UInt = #line) async throws {
    let down = try SilentHost()
    try await rig.node("down", location: "dc1", dsn: "host=127.0.0.1 port=\(down.port)")
    try await rig.leader("dc1", "down")
    let routed = await rig.waitUntilRouting("p1", to: "down")
    XCTAssertTrue(routed, file: file, line: line)
    // On threads of their own, so that all six are under way at once, on both event loops.
    let clients = (0..<6).map { _ in Task { await onOwnThread { serverPort(through: port, timeout: 30) } } }
    let waiting = await eventuallyAsync(timeout: .seconds(10)) { await rig.counters("p1").current == 6 }
    XCTAssertTrue(waiting, "six clients wait on their connects to the node that is down", file: file, line: line)
    // The outage the test is about: the connects hang a while before the new leader is named.
    try await Task.sleep(for: .milliseconds(300))
    try await rig.leader("dc1", newLeader)
    for client in clients {
        let result = await client.value
        XCTAssertEqual(try result.get(), "\(newPort)", file: file, line: line)
    }
    let logged = rig.capture.all.contains { $0.message.contains("lead master changed") && $0.metadata["started_again"] == "6" }
    XCTAssertTrue(logged, "the leader change says six clients started again", file: file, line: line)
    let counters = await rig.counters("p1")
    XCTAssertEqual(counters.refused, 0, file: file, line: line)
    XCTAssertEqual(counters.startedAgain, 6, file: file, line: line)
    XCTAssertEqual(counters.cut, 0, file: file, line: line)
    withExtendedLifetime(down) {}
}

/// A client that asks for a large answer, half-closes and reads late, through `port` to a
/// server (socat) that answers "ok" to a first line, then 20 MiB once the second line comes:
/// the client's FIN is passed on first, then the answer piles up in front of it. It must
/// arrive whole, in order, then the EOF. (Not PostgreSQL: in these tests it cancels a query
/// once the client has half-closed; and socat's `-t`: by default it ends the whole connection
/// 0.5 s after one direction's EOF.)
func halfCloseThenReadLate(rig: ProxyRig, port: Int, size: Int = 20 << 20,
                           file: StaticString = #filePath, line: UInt = #line) async throws {
    let directory = rig.etcd.directory.path
    let payload = indexedBytes(size)
    _ = FileManager.default.createFile(atPath: "\(directory)/answer", contents: Data(payload))
    let serverPort = freePort()
    let server = try TestProcess(name: "answer", executable: "/usr/bin/socat",
                                 arguments: ["-t", "60", "TCP-LISTEN:\(serverPort),bind=127.0.0.1,reuseaddr,fork",
                                             "SYSTEM:read a; echo ok; read b; cat \(directory)/answer"],
                                 logDirectory: directory)
    defer { server.stop() }
    XCTAssertTrue(eventually(timeout: 5) { canConnect(port: serverPort) }, file: file, line: line)
    try await rig.node("answer", location: "dc1", dsn: "host=127.0.0.1 port=\(serverPort)")
    try await rig.leader("dc1", "answer")
    let routed = await rig.waitUntilRouting("p1", to: "answer")
    XCTAssertTrue(routed, file: file, line: line)

    let fd = try XCTUnwrap(connectedLoopbackSocket(port: port), file: file, line: line)
    defer { close(fd) }
    writeAll(fd, Array("hello\n".utf8))
    var ok = [UInt8](repeating: 0, count: 3)
    XCTAssertEqual(recv(fd, &ok, 3, CInt(MSG_WAITALL)), 3, file: file, line: line)

    writeAll(fd, Array("go\n".utf8))
    shutdown(fd, CInt(SHUT_WR))
    try await Task.sleep(for: .seconds(2))  // reading late is the point: the answer piles up meanwhile
    let (received, _) = readToEnd(fd, atMost: size + 1)
    assertWhole(received, payload, file: file, line: line)
}

/// Checks that a client read all of `sent`, in order; says where it differs if not.
@discardableResult
func assertWhole(_ received: [UInt8], _ sent: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> Bool {
    XCTAssertEqual(received.count, sent.count, "all of it, then the EOF", file: file, line: line)
    guard sameBytes(received, sent) else {
        let prefix = (0..<min(received.count, sent.count)).first { received[$0] != sent[$0] } ?? min(received.count, sent.count)
        XCTFail("not as sent, in order: the first \(prefix) bytes were; \(streamDifference(received, sent, at: prefix))", file: file, line: line)
        return false
    }
    return true
}

/// How `received` differs from `sent` from byte `at` on, for a failure message: the bytes there,
/// and whether the rest is `sent`'s, shifted by a few bytes (some inserted, or lost).
func streamDifference(_ received: [UInt8], _ sent: [UInt8], at start: Int) -> String {
    func hex(_ bytes: ArraySlice<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined(separator: " ") }
    let from = max(0, start - 8)
    var said = "received[\(from)...]: \(hex(received[from..<min(received.count, start + 16)])); sent[\(from)...]: \(hex(sent[from..<min(sent.count, start + 16)]))"
    for shift in 1...64 {
        let rest = min(received.count - start - shift, sent.count - start)
        if rest > 0, memcmp(received.withUnsafeBufferPointer { $0.baseAddress! + start + shift }, sent.withUnsafeBufferPointer { $0.baseAddress! + start }, rest) == 0 {
            said += "; then the rest as sent, after \(shift) bytes inserted"
        }
        let lostRest = min(received.count - start, sent.count - start - shift)
        if lostRest > 0, memcmp(received.withUnsafeBufferPointer { $0.baseAddress! + start }, sent.withUnsafeBufferPointer { $0.baseAddress! + start + shift }, lostRest) == 0 {
            said += "; then the rest as sent, after \(shift) bytes lost"
        }
    }
    return said
}

/// A PostgreSQL protocol-3 message as a client sends it: `type` (none for the startup
/// message), the length, the body.
func wireMessage(_ type: Character?, _ body: [UInt8]) -> [UInt8] {
    let length = UInt32(body.count + 4)
    return (type.map { [UInt8(ascii: $0.unicodeScalars.first!)] } ?? [])
        + [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
}

/// The startup message of user postgres to database postgres, protocol 3.0.
func startupMessage() -> [UInt8] {
    wireMessage(nil, [0, 3, 0, 0] + Array("user\0postgres\0database\0postgres\0\0".utf8))
}

/// `count` bytes in which each 4-byte word holds its own index: a byte lost, doubled or moved
/// shows. (Built a word at a time: a debug build is slow at millions of bytes one by one.)
func indexedBytes(_ count: Int) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        buffer.withMemoryRebound(to: UInt32.self) { words in
            for i in words.indices { words[i] = UInt32(truncatingIfNeeded: i) }
        }
        initialized = count
    }
}

/// Everything `fd` yields until its EOF (or `atMost` bytes), straight into one buffer. A
/// receive that waits 15 s ends it, so that a stall fails a test instead of hanging it.
func readToEOF(_ fd: CInt, atMost limit: Int) -> [UInt8] {
    readToEnd(fd, atMost: limit).received
}

/// `readToEOF`, and whether a reset (ECONNRESET) ended it.
func readToEnd(_ fd: CInt, atMost limit: Int) -> (received: [UInt8], reset: Bool) {
    var timeout = timeval(tv_sec: 15, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var received = [UInt8](repeating: 0, count: limit)
    var reset = false
    let total = received.withUnsafeMutableBytes { buffer -> Int in
        var total = 0
        while total < buffer.count {
            let n = recv(fd, buffer.baseAddress! + total, buffer.count - total, 0)
            if n < 0, errno == ECONNRESET { reset = true }
            if n <= 0 { break }
            total += n
        }
        return total
    }
    received.removeSubrange(total...)
    return (received, reset)
}

/// Whether `a` and `b` hold the same bytes (memcmp: a debug build compares arrays slowly).
func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && memcmp(a, b, a.count) == 0
}

/// What a raw client reads from the proxy at `port` when it opens with the 8-byte request
/// `request` (SSLRequest 80877103, GSSENCRequest 80877104, or none), then sends a StartupMessage:
/// the one-byte answer to the request, and the fields of the ErrorResponse that ends the
/// connection, by field type ("S", "V", "C", "M"); nil when something else came.
func refusal(through port: Int, request: UInt32? = nil) -> (answer: UInt8?, fields: [Character: String]?) {
    guard let fd = connectedLoopbackSocket(port: port) else { return (nil, nil) }
    defer { close(fd) }
    var answer: UInt8?
    if let request {
        writeAll(fd, wireMessage(nil, [UInt8(request >> 24), UInt8(request >> 16 & 0xFF), UInt8(request >> 8 & 0xFF), UInt8(request & 0xFF)]))
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        guard recv(fd, &byte, 1, 0) == 1 else { return (nil, nil) }
        answer = byte
    }
    writeAll(fd, startupMessage())
    let reply = readToEOF(fd, atMost: 1 << 16)
    guard reply.count >= 5, reply[0] == UInt8(ascii: "E") else { return (answer, nil) }
    let length = Int(reply[1]) << 24 | Int(reply[2]) << 16 | Int(reply[3]) << 8 | Int(reply[4])
    guard reply.count == 1 + length else { return (answer, nil) }  // one message, then the end
    var fields: [Character: String] = [:]
    var i = 5
    while i < reply.count, reply[i] != 0 {
        let type = Character(UnicodeScalar(reply[i]))
        guard let end = reply[(i + 1)...].firstIndex(of: 0) else { return (answer, nil) }
        fields[type] = String(decoding: reply[(i + 1)..<end], as: UTF8.self)
        i = end + 1
    }
    return (answer, fields)
}

/// A raw client through instance p1 at `port`, whose lead master (dc1's) is now an echo server
/// (socat running `cat`, which ends on the client's FIN): "hello" has been sent and echoed.
func echoClient(rig: ProxyRig, port: Int) async throws -> (CInt, TestProcess) {
    let echoPort = freePort()
    let echo = try TestProcess(name: "echo", executable: "/usr/bin/socat",
                               arguments: ["-t", "60", "TCP-LISTEN:\(echoPort),bind=127.0.0.1,reuseaddr,fork", "SYSTEM:sleep 0.3; exec cat"],
                               logDirectory: rig.etcd.directory.path)
    XCTAssertTrue(eventually(timeout: 5) { canConnect(port: echoPort) })
    try await rig.node("echo", location: "dc1", dsn: "host=127.0.0.1 port=\(echoPort)")
    try await rig.leader("dc1", "echo")
    let routed = await rig.waitUntilRouting("p1", to: "echo")
    XCTAssertTrue(routed)
    guard let fd = connectedLoopbackSocket(port: port) else {
        echo.stop()
        throw FixtureError("cannot connect to the proxy")
    }
    writeAll(fd, Array("hello".utf8))
    var answer = [UInt8](repeating: 0, count: 5)
    XCTAssertEqual(recv(fd, &answer, 5, CInt(MSG_WAITALL)), 5)
    XCTAssertEqual(String(decoding: answer, as: UTF8.self), "hello")
    return (fd, echo)
}

/// Sends `payload` on `fd` (an `echoClient`) and half-closes, reads after `readAfter`, and checks
/// that every byte came back, in order, before the EOF (the echo ends only on the client's FIN,
/// passed on after everything sent before it), and that the connection then ends. Stops the rig.
func echoBack(_ payload: [UInt8], readAfter: Duration, fd: CInt, echo: TestProcess, rig: ProxyRig,
              file: StaticString = #filePath, line: UInt = #line) async throws {
    defer { close(fd); echo.stop() }
    let writer = Thread {
        writeAll(fd, payload)
        shutdown(fd, CInt(SHUT_WR))
    }
    writer.start()
    try await Task.sleep(for: readAfter)  // a late reader, on purpose: the echo backs up meanwhile
    let received = readToEOF(fd, atMost: payload.count + 1)
    if assertWhole(received, payload, file: file, line: line) {
        var byte: UInt8 = 0
        XCTAssertEqual(recv(fd, &byte, 1, CInt(MSG_DONTWAIT)), 0, "then the EOF (not a receive timeout)", file: file, line: line)
    }
    let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
    XCTAssertTrue(drained, "the connection ends once both sides have closed", file: file, line: line)
    await rig.stop()
}

/// A raw client through `port` that starts a 60 MB COPY tagged `tag` on `server` and reads none
/// of it; returns once the backend waits to write: the proxy holds it back instead of taking
/// the result into its memory.
func copyNotRead(through port: Int, tag: String, on server: PostgresServer, file: StaticString = #filePath, line: UInt = #line) async throws -> CInt {
    guard let fd = connectedLoopbackSocket(port: port) else { throw FixtureError("cannot connect to the proxy") }
    writeAll(fd, startupMessage())
    let copy = "COPY (SELECT g, md5(g::text) FROM generate_series(1, 1500000) g) TO STDOUT /* \(tag) */"
    writeAll(fd, wireMessage("Q", Array(copy.utf8) + [0]))
    XCTAssertTrue(heldBack(on: server, tag: tag), "the result piles up in front of the client, and the lead master is held back", file: file, line: line)
    return fd
}

/// Whether the backend running the COPY tagged `tag` waits to write to its client.
func heldBack(on server: PostgresServer, tag: String) -> Bool {
    eventually(timeout: 10) {
        (try? server.query("SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'COPY%\(tag)%' AND pid <> pg_backend_pid()")) == "ClientWrite"
    }
}

/// Closes `fd` with a reset (SO_LINGER 0), as a client that crashes or is killed does.
func resetAndClose(_ fd: CInt) {
    var reset = linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
    close(fd)
}

/// Sends `input` (raw bytes) to the control socket with socat (as `user`, if given) and
/// returns the reply lines.
func control(_ socket: String, _ input: [UInt8], as user: String? = nil) throws -> [String] {
    let file = NSTemporaryDirectory() + "/harp-control-\(UUID().uuidString)"
    _ = FileManager.default.createFile(atPath: file, contents: Data(input), attributes: [.posixPermissions: 0o644])
    defer { unlink(file) }
    let command = ["/bin/sh", "-c", "socat -t 3 - UNIX-CONNECT:\(socket) < \(file)"]
    let result = user == nil ? try runCommand(command[0], Array(command.dropFirst()))
                             : try runCommand("/usr/sbin/runuser", ["-u", user!, "--"] + command)
    return result.output.split(separator: "\n").map(String.init)
}

func parseObject(_ line: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? ["unparsed": line]
}

/// One HTTP/1.1 GET over loopback: the status code and the body.
func httpGet(_ port: Int, _ path: String) -> (status: Int, body: String) {
    guard let fd = connectedLoopbackSocket(port: port) else { return (0, "") }
    defer { close(fd) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
    writeAll(fd, request)
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
    let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    return (status, body.trimmingCharacters(in: .whitespacesAndNewlines))
}


/// harp-proxy following Patroni (`leader_source: patroni`) with one builtin instance `name` on
/// `scope`: `dcs` and `proxy` are lines added to those stanzas (two spaces in, each ending in a
/// newline), `top` lines at the top level. Keep the folder for as long as the process runs.
func startPatroniProxy(etcd: EtcdCluster, name: String = "p1", scope: String = "dc1", port: Int, dcs: String = "", proxy: String = "",
                       top: String = "") throws -> (TestProcess, TemporaryDirectory) {
    let dir = TemporaryDirectory()
    dir.write("config.yml", """
        cluster: {name: harp}
        dcs:
          driver: etcd
          endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]
          leader_source: patroni
        \(dcs)control: {socket: \(dir.path)/control.sock}
        proxy:
          name: \(name)
          location: \(scope)
          listen_address: 127.0.0.1
          listen_port: \(port)
        \(proxy)\(top)
        """)
    let process = try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                  logDirectory: dir.path)
    return (process, dir)
}

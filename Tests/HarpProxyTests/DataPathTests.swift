@testable import HarpProxy
import Foundation
import HarpTestFixtures
import Logging
import NIOCore
import NIOPosix
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The relay on its own, over real sockets: a client's socket accepted and one connected to the
/// lead master (TCP, and a Unix socket), joined by it: the kept bytes first, a half-close passed
/// on after every byte before it, the cut's ErrorResponse between two messages, and `closed`
/// once both sides are.
final class DataPathTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    /// A joined session: the test's client socket, the lead master's accepted socket, and the session.
    private struct Joined {
        let client: CInt
        let backend: CInt
        let session: any DataPathSession
    }

    private func join(_ path: any DataPath, kept: [UInt8], unixBackend: Bool = false) throws -> Joined {
        // The lead master: a plain listening socket, TCP or Unix.
        let directory = TemporaryDirectory()
        let socketPath = directory.path + "/.s.PGSQL.5432"
        let backendPort = freePort()
        let listener: CInt
        if unixBackend {
            listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            XCTAssertEqual(withUnixAddress(path: socketPath) { bind(listener, $0, $1) }, 0)
        } else {
            listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            XCTAssertEqual(withLoopbackAddress(port: backendPort) { bind(listener, $0, $1) }, 0)
        }
        XCTAssertEqual(listen(listener, 4), 0)
        defer { close(listener) }

        // The proxy's side: the client's socket accepted, and one connected to the lead master,
        // as the mode makes them.
        let front = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let frontPort = freePort()
        XCTAssertEqual(withLoopbackAddress(port: frontPort) { bind(front, $0, $1) }, 0)
        XCTAssertEqual(listen(front, 4), 0)
        defer { close(front) }
        guard let client = connectedLoopbackSocket(port: frontPort) else { throw FixtureError("no client") }
        let clientSide = accept(front, nil, nil)
        let serverSide = socket(unixBackend ? AF_UNIX : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let connected = unixBackend ? withUnixAddress(path: socketPath) { connect(serverSide, $0, $1) }
                                    : withLoopbackAddress(port: backendPort) { connect(serverSide, $0, $1) }
        XCTAssertEqual(connected, 0)
        for fd in [clientSide, serverSide] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let backend = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(backend, 0)
        var buffer = ByteBuffer()
        buffer.writeBytes(kept)
        let session = path.join(client: clientSide, server: serverSide, kept: buffer, loop: group.next())
        session.start()
        return Joined(client: client, backend: backend, session: session)
    }

    private func read(_ fd: CInt, _ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let n = recv(fd, &bytes, count, CInt(MSG_WAITALL))
        return Array(bytes.prefix(max(0, n)))
    }

    /// Whether `session` is closed within 10 s (a session that never closes fails, not hangs).
    private func closes(_ session: any DataPathSession) -> Bool {
        let done = DispatchSemaphore(value: 0)
        session.closed.whenComplete { _ in done.signal() }
        return done.wait(timeout: .now() + 10) == .success
    }

    /// The relay threads of this suite's sessions.
    static let relays = RelayGroup(threads: 2)

    private func paths() -> [(String, any DataPath)] {
        let traffic = Traffic()
        return [("relay", RelayDataPath(traffic: traffic, relays: Self.relays))]
    }

    /// The kept bytes reach the lead master first; bytes pass both ways; a client's half-close
    /// reaches the lead master after all it sent; the lead master's last bytes, then its end,
    /// reach the client; then the session is closed.
    func testBytesBothWaysHalfCloseAndEnd() throws {
        for (name, path) in paths() {
            for unix in [false, true] {
                let joined = try join(path, kept: Array("kept".utf8), unixBackend: unix)
                defer { close(joined.client); close(joined.backend) }
                writeAll(joined.client, Array("hello".utf8))
                XCTAssertEqual(String(decoding: read(joined.backend, 9), as: UTF8.self), "kepthello", name)
                let big = indexedBytes(3 << 20)
                let writer = Thread { writeAll(joined.client, big); shutdown(joined.client, CInt(SHUT_WR)) }
                writer.start()
                XCTAssertTrue(readToEOF(joined.backend, atMost: big.count + 1) == big, "\(name): every byte, then the end (unix: \(unix))")
                writeAll(joined.backend, Array("bye".utf8))
                shutdown(joined.backend, CInt(SHUT_WR))
                XCTAssertEqual(readToEOF(joined.client, atMost: 16), Array("bye".utf8), "\(name): the last bytes, then the end")
                XCTAssertTrue(closes(joined.session), name)
            }
        }
    }

    /// A cut between two of the lead master's messages reaches the client as an ErrorResponse
    /// after everything before it; both sides then end.
    func testACutBetweenMessagesEndsWithTheError() throws {
        for (name, path) in paths() {
            let joined = try join(path, kept: startupMessage())
            defer { close(joined.client); close(joined.backend) }
            XCTAssertEqual(read(joined.backend, startupMessage().count), startupMessage(), name)
            let ready = wireMessage("Z", Array("I".utf8))
            writeAll(joined.backend, ready)
            XCTAssertEqual(read(joined.client, ready.count), ready, name)
            let error = PostgresWire.errorResponse(sqlstate: "57P01", message: "cut by the test", allocator: ByteBufferAllocator())
            joined.session.cut(with: error)
            XCTAssertTrue(closes(joined.session), name)
            XCTAssertEqual(readToEOF(joined.client, atMost: 4096), Array(error.readableBytesView), "\(name): the error, then the end")
            XCTAssertEqual(readToEOF(joined.backend, atMost: 16), [], "\(name): the lead master's side ends too")
        }
    }

    /// A client that resets an idle session (a crash, a kill) ends it: the lead master's side
    /// closes too, and `closed` completes. The same when the lead master goes.
    func testAResetOnEitherSideEndsTheSession() throws {
        for (name, path) in paths() {
            for clientGoes in [true, false] {
                let joined = try join(path, kept: startupMessage())
                let (goer, survivor) = clientGoes ? (joined.client, joined.backend) : (joined.backend, joined.client)
                defer { close(survivor) }
                XCTAssertEqual(read(joined.backend, startupMessage().count), startupMessage(), name)
                resetAndClose(goer)
                XCTAssertTrue(closes(joined.session), "\(name): closed (client goes: \(clientGoes))")
                XCTAssertEqual(readToEnd(survivor, atMost: 16).received, [], "\(name): the other side ends with nothing more (client goes: \(clientGoes))")
            }
        }
    }

    /// Inside a message, a cut adds nothing: the client would read it as part of the message.
    func testACutInsideAMessageAddsNothing() throws {
        for (name, path) in paths() {
            let joined = try join(path, kept: startupMessage())
            defer { close(joined.client); close(joined.backend) }
            _ = read(joined.backend, startupMessage().count)
            let partial = Array(wireMessage("D", Array(repeating: 1, count: 100)).prefix(50))
            writeAll(joined.backend, partial)
            XCTAssertEqual(read(joined.client, partial.count), partial, name)
            joined.session.cut(with: PostgresWire.errorResponse(sqlstate: "57P01", message: "cut", allocator: ByteBufferAllocator()))
            XCTAssertTrue(closes(joined.session), name)
            XCTAssertEqual(readToEOF(joined.client, atMost: 4096), [], "\(name): nothing after the partial message")
        }
    }

    /// Writes to `fd` (made non-blocking) until it takes nothing more for 300 ms: the peer, and
    /// whatever sits between, hold all they will. The number of bytes taken.
    private func fill(_ fd: CInt) -> Int {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let chunk = [UInt8](repeating: 7, count: 65536)
        var total = 0, idleSince = ContinuousClock.now
        while ContinuousClock.now - idleSince < .milliseconds(300) {
            let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            if n > 0 {
                total += n
                idleSince = ContinuousClock.now
            } else {
                usleep(10_000)  // pacing: the relay moves what it can meanwhile
            }
        }
        return total
    }

    /// A client that keeps sending and never reads, facing a lead master that keeps answering and
    /// never reads either (PostgreSQL blocked writing results no one takes), then resets: the
    /// session ends at once, the lead master's side too, whatever was kept for either side. It
    /// used to wait for the lead master to read what was kept for it, which it never would: its
    /// backend stayed, with its locks and its transaction, for good.
    func testADeadClientFreesItsLeadMastersSideAtOnce() throws {
        for (name, path) in paths() {
            let joined = try join(path, kept: startupMessage())
            defer { close(joined.backend) }
            let toServer = fill(joined.client)
            let toClient = fill(joined.backend)
            XCTAssertGreaterThan(toServer, 0, name)
            XCTAssertGreaterThan(toClient, 0, name)
            resetAndClose(joined.client)
            XCTAssertTrue(closes(joined.session), "\(name): the session ended with its client")
            // The lead master reads what reached it, then the end (not a 10 s timeout).
            _ = fcntl(joined.backend, F_SETFL, fcntl(joined.backend, F_GETFL) & ~O_NONBLOCK)
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(joined.backend, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var buffer = [UInt8](repeating: 0, count: 65536)
            var last = 1, error: CInt = 0
            while last > 0 {
                last = buffer.withUnsafeMutableBytes { recv(joined.backend, $0.baseAddress, $0.count, 0) }
                error = errno
            }
            XCTAssertTrue(last == 0 || error == ECONNRESET, "\(name): the lead master's side was closed (\(last), \(String(cString: strerror(error))))")
        }
    }

    /// The relay group stops its threads, closing any session still on them; a session started
    /// after that is closed at once.
    func testStoppingTheRelayEndsItsThreadsAndSessions() throws {
        func threads(_ prefix: String) -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.filter { ((try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8)) ?? "").hasPrefix(prefix) }.count
        }
        let relays = RelayGroup(threads: 2, name: "test-relay")
        XCTAssertTrue(eventually(timeout: 10) { threads("test-relay-") == 2 })
        let path = RelayDataPath(traffic: Traffic(), relays: relays)
        let joined = try join(path, kept: [])
        defer { close(joined.client); close(joined.backend) }
        relays.stop()
        XCTAssertEqual(threads("test-relay-"), 0, "every relay thread has exited")
        XCTAssertTrue(closes(joined.session), "the session on it was closed")
        XCTAssertEqual(readToEnd(joined.client, atMost: 16).received, [], "the client's side ends")
        let late = try join(path, kept: [])
        defer { close(late.client); close(late.backend) }
        XCTAssertTrue(closes(late.session), "a session after the stop is closed at once")
    }
}

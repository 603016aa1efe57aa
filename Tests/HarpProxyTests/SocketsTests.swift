@testable import HarpProxy
import Foundation
import HarpCluster
import HarpTestFixtures
import Logging
import NIOCore
import NIOPosix
import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The sockets the proxy makes itself, on their own: the connect to the lead master (by
/// address, by name, on a Unix socket; refused, unanswered, given up) and the listener whose
/// clients a relay thread accepts.
final class SocketsTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    static let relays = RelayGroup(threads: 2, name: "test-sockets")

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func connect(_ address: DatabaseAddress, timeout: TimeAmount = .seconds(5)) -> LeaderConnect {
        LeaderConnect.start(address, relays: Self.relays, loop: group.next(), timeout: timeout, keepaliveSeconds: 5)
    }

    private func result(_ connect: LeaderConnect) -> Result<CInt, LeaderConnect.Failure> {
        do { return .success(try connect.futureResult.wait()) } catch { return .failure(error as? LeaderConnect.Failure ?? .failed(EIO)) }
    }

    private func openDescriptors() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    /// A connected socket, non-blocking, whose peer is the listener: by IP address, by a name
    /// (localhost: resolved off the loop, and ::1 refused first where it comes first), and on a
    /// Unix socket.
    func testAConnectByAddressByNameAndOnAUnixSocket() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        XCTAssertEqual(withLoopbackAddress(port: 0) { bind(listener, $0, $1) }, 0)
        XCTAssertEqual(listen(listener, 8), 0)
        let port = try XCTUnwrap(localPort(listener))
        let directory = TemporaryDirectory()
        let unixListener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unixListener) }
        XCTAssertEqual(withUnixAddress(path: directory.path + "/.s.PGSQL.5999") { bind(unixListener, $0, $1) }, 0)
        XCTAssertEqual(listen(unixListener, 8), 0)

        for address in [DatabaseAddress.tcp(host: "127.0.0.1", port: port), .tcp(host: "localhost", port: port),
                        .unixSocket(directory: directory.path, port: 5999)] {
            guard case .success(let fd) = result(connect(address)) else {
                XCTFail("\(address): no connection")
                continue
            }
            defer { close(fd) }
            XCTAssertNotEqual(fcntl(fd, F_GETFL) & O_NONBLOCK, 0, "\(address): non-blocking")
            XCTAssertNotEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0, "\(address): close-on-exec")
            let peer = accept(address == .unixSocket(directory: directory.path, port: 5999) ? unixListener : listener, nil, nil)
            XCTAssertGreaterThanOrEqual(peer, 0, "\(address): the listener has it")
            writeAll(fd, Array("ping".utf8))
            var bytes = [UInt8](repeating: 0, count: 4)
            XCTAssertEqual(recv(peer, &bytes, 4, CInt(MSG_WAITALL)), 4, "\(address)")
            XCTAssertEqual(String(decoding: bytes, as: UTF8.self), "ping")
            close(peer)
        }
    }

    /// Nothing listening, no socket file: refused, which the client's setup retries within
    /// `hold_timeout`. (A name that does not resolve is not tried: it would ask a DNS server.)
    func testARefusedAndAMissingLeadMaster() throws {
        let directory = TemporaryDirectory()
        XCTAssertEqual(result(connect(.tcp(host: "127.0.0.1", port: freePort()))).failure, .refused(ECONNREFUSED))
        XCTAssertEqual(result(connect(.unixSocket(directory: directory.path, port: 5999))).failure, .refused(ENOENT))
        XCTAssertEqual(result(connect(.unixSocket(directory: directory.path + String(repeating: "/x", count: 60), port: 5999))).failure,
                       .unresolved("socket path too long: \(directory.path + String(repeating: "/x", count: 60))/.s.PGSQL.5999"))
    }

    /// A lead master that never answers the connect: timed out after `connect_timeout`, not
    /// before; one given up is closed at once. No descriptor is left either way.
    func testAnUnansweredConnectTimesOutAndOneGivenUpIsClosed() throws {
        let silent = try SilentHost()
        let before = openDescriptors()
        let started = ContinuousClock.now
        XCTAssertEqual(result(connect(.tcp(host: "127.0.0.1", port: silent.port), timeout: .milliseconds(300))).failure, .timedOut)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(300))
        let givenUp = connect(.tcp(host: "127.0.0.1", port: silent.port), timeout: .seconds(60))
        givenUp.cancel()
        XCTAssertEqual(result(givenUp).failure, .cancelled)
        XCTAssertTrue(eventually(timeout: 10) { self.openDescriptors() == before }, "no descriptor left")
        withExtendedLifetime(silent) {}
    }

    /// The listener's clients are handed over as accepted (non-blocking, close-on-exec); once
    /// closed, it refuses new ones. An address in use is said as such.
    func testTheAcceptorHandsOverEachClientAndItsCloseEndsListening() throws {
        let port = freePort()
        let fd = try makeListeningSocket(host: "127.0.0.1", port: port).get()
        let accepted = Mutex<[CInt]>([])
        let acceptor = Acceptor(fd: fd, relays: Self.relays, loop: group.next(), logger: Logger(label: "test")) { client in
            accepted.withLock { $0.append(client) }
        }
        acceptor.start()
        guard case .failure(let inUse) = makeListeningSocket(host: "127.0.0.1", port: port) else { return XCTFail("bound twice") }
        XCTAssertEqual(inUse.reason, "address already in use")
        let clients = (0..<3).compactMap { _ in connectedLoopbackSocket(port: port) }
        defer { clients.forEach { close($0) } }
        XCTAssertEqual(clients.count, 3)
        XCTAssertTrue(eventually(timeout: 10) { accepted.withLock { $0.count } == 3 })
        for client in accepted.withLock({ $0 }) {
            XCTAssertNotEqual(fcntl(client, F_GETFL) & O_NONBLOCK, 0)
            XCTAssertNotEqual(fcntl(client, F_GETFD) & FD_CLOEXEC, 0)
            close(client)
        }
        try acceptor.close().wait()
        XCTAssertNil(connectedLoopbackSocket(port: port), "nothing listens once it is closed")
    }
}

extension Result {
    fileprivate var failure: Failure? {
        if case .failure(let failure) = self { return failure }
        return nil
    }
}

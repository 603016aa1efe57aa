import CSockmap
import Foundation
import HarpTestFixtures
import NIOCore
import NIOPosix
import XCTest
@testable import HarpProxy
#if canImport(Glibc)
import Glibc
#endif

/// A socket handed to NIO after the fact (a pair moving from the kernel data path to user space).
final class AdoptedSocketTests: XCTestCase {
    /// The lead master's socket of a pair that moves to user space may have closed both ways
    /// already, with input still waiting in it: NIO reads such a socket to its end and closes it
    /// the moment it registers it. Every byte must reach the handlers `adopt` was given (they
    /// used to be added a step later, and the client got a clean EOF megabytes early).
    func testASocketWhoseConnectionEndedBothWaysYieldsWhatItHeld() throws {
        let (ours, peer) = try loopbackPair()

        // The peer sends 1 MiB and closes; this side has shut its output (as the kernel path
        // does once it passed the client's FIN on): the connection is over both ways, the
        // bytes still unread.
        let payload = indexedBytes(1 << 20)
        writeAll(peer, payload)
        shutdown(ours, CInt(SHUT_WR))
        close(peer)
        XCTAssertTrue(eventually(timeout: 5) {
            var taken: UInt64 = 0
            var closed: CInt = 0
            return harp_socket_taken(ours, &taken, &closed) == 0 && closed != 0
        }, "the socket is closed (TCP_CLOSE) with its input unread")

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let collected = group.next().makePromise(of: [UInt8].self)
        let adopted = BuiltinMode.adopt(ours, on: group.next()) { try $0.addHandler(Collector(done: collected)) }
        adopted.whenSuccess { _ = $0.setOption(.autoRead, value: true) }
        adopted.whenFailure { collected.fail($0) }  // a channel closed before its handlers came
        let received = try collected.futureResult.wait()
        XCTAssertEqual(received.count, payload.count, "every byte the socket held, then the end")
        XCTAssertTrue(sameBytes(received, payload), "in order")
    }

    /// `ParkedInputCheck` on a socket whose reads match what it received: everything passes.
    /// Told that the socket had already given up 100 bytes it never received (what a read of
    /// bytes handed over twice looks like), it passes nothing on, says how many, and resets.
    func testTheCheckOfAMovedSocketStopsInputHandedOverTwice() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        for taken in [UInt64(0), 100] {
            let (ours, peer) = try loopbackPair()
            let (partner, partnerPeer) = try loopbackPair()
            defer { close(peer); close(partner); close(partnerPeer) }
            let payload = indexedBytes(64 << 10)
            writeAll(peer, payload)
            let repeated = Said()
            let collected = group.next().makePromise(of: [UInt8].self)
            let loop = group.next()
            let adopted = BuiltinMode.adopt(ours, on: loop) { pipeline in
                try pipeline.addHandlers(ParkedInputCheck(descriptor: ours, partner: partner, taken: taken) { repeated.set($0) },
                                         Collector(done: collected, closeAfter: payload.count))
            }
            adopted.whenSuccess { _ = $0.setOption(.autoRead, value: true) }
            adopted.whenFailure { collected.fail($0) }
            let received = try collected.futureResult.wait()
            if taken == 0 {
                XCTAssertTrue(sameBytes(received, payload), "what the socket received passes, in order")
                XCTAssertEqual(repeated.value, 0)
            } else {
                XCTAssertEqual(received.count, 0, "nothing passes once the count is off")
                XCTAssertEqual(repeated.value, 100, "the bytes handed over twice")
                var byte: UInt8 = 0
                var timeout = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                XCTAssertEqual(recv(peer, &byte, 1, 0), -1)
                XCTAssertEqual(errno, ECONNRESET, "the socket's peer is reset, not sent a FIN")
                var linger = linger()
                var size = socklen_t(MemoryLayout<linger>.size)
                getsockopt(partner, SOL_SOCKET, SO_LINGER, &linger, &size)
                XCTAssertEqual(linger.l_onoff, 1, "the partner's close will be a reset too")
                XCTAssertEqual(linger.l_linger, 0)
            }
        }
    }

    /// A connected loopback TCP pair: the accepted side (with a 4 MiB receive buffer) and the
    /// connecting side.
    private func loopbackPair() throws -> (ours: CInt, peer: CInt) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(listener, 0)
        defer { close(listener) }
        var size: CInt = 4 << 20
        setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<CInt>.size))
        XCTAssertEqual(withLoopbackAddress(port: 0) { bind(listener, $0, $1) }, 0)
        XCTAssertEqual(listen(listener, 1), 0)
        let port = try XCTUnwrap(localPort(listener))
        let peer = try XCTUnwrap(connectedLoopbackSocket(port: port))
        let ours = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(ours, 0)
        return (ours, peer)
    }
}

/// Gathers what a channel reads until it closes (or, `closeAfter`, until it has that many bytes).
private final class Collector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var bytes: [UInt8] = []
    private let done: EventLoopPromise<[UInt8]>
    private let closeAfter: Int?

    init(done: EventLoopPromise<[UInt8]>, closeAfter: Int? = nil) {
        self.done = done
        self.closeAfter = closeAfter
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
        if let closeAfter, bytes.count >= closeAfter { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) { done.succeed(bytes) }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// What the check said it found, set on the event loop, read by the test.
private final class Said: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: UInt64 = 0
    func set(_ value: UInt64) { lock.withLock { bytes = value } }
    var value: UInt64 { lock.withLock { bytes } }
}

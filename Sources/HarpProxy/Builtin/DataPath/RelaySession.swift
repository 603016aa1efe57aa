import CRelay
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// One session on the relay: the client's socket and the lead master's, each with what is kept
/// for it (what it did not take yet). Confined to its relay thread once started.
final class RelaySession: DataPathSession, @unchecked Sendable {
    /// One side's socket and the bytes waiting to be written to it.
    struct Side {
        let fd: CInt
        /// Written to this side, not taken yet (nil when none).
        var pending: [UInt8]?
        var pendingOffset = 0
        /// This side may have input to read (an edge came and no short read since).
        var readable = true
        /// This side's input has ended (read 0).
        var ended = false
        /// The peer's FIN was reported (EPOLLRDHUP): the end may come after a short read, with no
        /// further edge, so reading goes on until it does.
        var endReported = false
        /// To shut this side's output once `pending` is sent (the other side's input ended).
        var shutdownAfterPending = false
    }

    var client: Side
    var server: Side
    var slot = -1
    /// The relay thread that owns the session, and its buffer.
    private let loop: RelayLoop
    private let buffer: UnsafeMutableRawPointer
    private(set) var isClosed = false
    /// In its thread's `again` list.
    private var queued = false
    /// Full reads one pump may make before the session waits for its thread's next turn.
    private static let readsPerTurn = 16
    private let framing: SessionFraming
    private let traffic: Traffic
    private var unreportedToServer = 0
    private var unreportedToClient = 0
    private let closedPromise: EventLoopPromise<Void>

    var closed: EventLoopFuture<Void> { closedPromise.futureResult }

    /// Takes ownership of both descriptors (non-blocking). `kept` goes to the lead master first.
    init(client: CInt, server: CInt, kept: [UInt8]?, framing: SessionFraming, traffic: Traffic, relays: RelayGroup,
         closed: EventLoopPromise<Void>) {
        self.client = Side(fd: client)
        self.server = Side(fd: server)
        if let kept, !kept.isEmpty {
            self.server.pending = kept
            unreportedToServer = kept.count
        }
        self.framing = framing
        self.traffic = traffic
        closedPromise = closed
        loop = relays.pick()
        buffer = loop.buffer
    }

    func start() { loop.send(.add(self)) }

    /// From any thread: the cut is made on the session's relay thread.
    func cut(with error: ByteBuffer) {
        loop.send(.cut(self, error))
    }

    // MARK: - On the relay thread

    /// Registered: what was kept goes out, then whatever input is already there.
    func begin() {
        loop.assertOnThread()
        flush(toServer: true)
        resume()
    }

    /// Reads both sides (at registration, or its turn again after it used up its share of reads
    /// with input left).
    func resume() {
        queued = false
        pump(fromClient: true)
        pump(fromClient: false)
    }

    /// One side's state, the client's or the lead master's, to change in place.
    private func side(client isClient: Bool, _ change: (inout Side) -> Void) {
        if isClient { change(&client) } else { change(&server) }
    }

    func handle(_ events: UInt32, serverSide: Bool) {
        loop.assertOnThread()
        side(client: !serverSide) {
            if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { $0.readable = true }
            if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { $0.endReported = true }
        }
        if events & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            flush(toServer: serverSide)
            if isClosed { return }
        }
        pump(fromClient: !serverSide)
        if !isClosed, events & EPOLLERR.rawValue != 0, serverSide ? server.ended : client.ended {
            // A reset after this side's input ended, with nothing for it: nothing more can pass.
            fail(clientSide: !serverSide)
        }
    }

    /// Reads from one side and writes to the other until the reader has nothing more, its input
    /// ends, or the writer takes no more.
    private func pump(fromClient: Bool) {
        let size = RelayLoop.bufferSize
        var reads = 0
        while !isClosed {
            let from = fromClient ? client : server
            let to = fromClient ? server : client
            guard from.readable, !from.ended, to.pending == nil else { return }
            let n = read(from.fd, buffer, size)
            if n > 0 {
                let bytes = UnsafeRawBufferPointer(start: buffer, count: n)
                if fromClient {
                    framing.clientSent(bytes)
                    unreportedToServer += n
                    if unreportedToServer >= 65_536 { report() }
                } else {
                    framing.serverSent(bytes)
                    unreportedToClient += n
                    if unreportedToClient >= 65_536 { report() }
                }
                let written = send(to.fd, buffer, n, CInt(MSG_NOSIGNAL))
                if written < 0, errno != EAGAIN {
                    fail(clientSide: !fromClient)
                    return
                }
                let taken = max(written, 0)
                if taken < n {
                    // Its offset is 0: a side's pending bytes are sent whole before more are kept.
                    side(client: !fromClient) { $0.pending = [UInt8](UnsafeRawBufferPointer(start: buffer + taken, count: n - taken)) }
                }
                if n < size, !from.endReported { side(client: fromClient) { $0.readable = false } }
                reads += 1
                if reads == Self.readsPerTurn {
                    // Input may be left, and no new edge will say so: its turn comes again.
                    if !queued {
                        queued = true
                        loop.again.append(self)
                    }
                    return
                }
            } else if n == 0 {
                side(client: fromClient) {
                    $0.ended = true
                    $0.readable = false
                }
                if to.pending == nil { shutdown(to.fd, CInt(SHUT_WR)) } else { side(client: !fromClient) { $0.shutdownAfterPending = true } }
                closeIfDone()
            } else if errno == EAGAIN {
                side(client: fromClient) { $0.readable = false }
            } else if errno != EINTR {
                fail(clientSide: fromClient)
            }
        }
    }

    /// Writes what is kept for one side; once it is all taken, the other side is read again.
    private func flush(toServer: Bool) {
        var target = toServer ? server : client
        guard let pending = target.pending else { return }
        let written = pending.withUnsafeBytes { bytes in
            send(target.fd, bytes.baseAddress! + target.pendingOffset, bytes.count - target.pendingOffset, CInt(MSG_NOSIGNAL))
        }
        if written < 0 {
            if errno != EAGAIN, errno != EINTR { fail(clientSide: !toServer) }
            return
        }
        target.pendingOffset += written
        if target.pendingOffset == pending.count {
            target.pending = nil
            target.pendingOffset = 0
            if target.shutdownAfterPending { shutdown(target.fd, CInt(SHUT_WR)) }
        }
        if toServer { server = target } else { client = target }
        guard target.pending == nil else { return }
        closeIfDone()
        pump(fromClient: toServer)
    }

    /// Both inputs ended and everything passed on: the session is over.
    private func closeIfDone() {
        if client.ended, server.ended, client.pending == nil, server.pending == nil { close() }
    }

    /// One side failed (reset, gone while written to, a keepalive or user timeout): the session
    /// ends at once, both sides. Bytes kept for the survivor are dropped: a lead master whose
    /// client is gone would never read what is kept for it (it blocks writing the answers no one
    /// reads), and would keep its backend, locks and transaction for good; a client whose lead
    /// master failed has nothing more to wait for.
    private func fail(clientSide: Bool) {
        close()
    }

    /// The proxy ends the session: the ErrorResponse first if the client sits between two of
    /// the lead master's messages and has taken everything before it, then both sides close.
    func cutNow(with error: ByteBuffer) {
        loop.assertOnThread()
        error.withUnsafeReadableBytes { sayWhole($0) }
        close()
    }

    /// Writes an ErrorResponse to the client whole or not at all: only where the client sits
    /// between two of the lead master's messages, nothing is kept for it, and its socket's send
    /// buffer has ample room (a client that keeps up has a near-empty queue; one that stopped
    /// reading has a full one), so that the kernel takes all of it at once.
    private func sayWhole(_ message: UnsafeRawBufferPointer) {
        guard framing.atBoundary, client.pending == nil, harp_relay_send_room(client.fd) > 4 * message.count + 4096,
              let base = message.baseAddress else { return }
        _ = send(client.fd, base, message.count, CInt(MSG_NOSIGNAL | MSG_DONTWAIT))
    }

    /// A session whose relay had stopped before it could start: nothing else holds it.
    func closeUnstarted() {
        close()
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        Glibc.close(client.fd)  // the client first, as a cut of many does
        Glibc.close(server.fd)
        client.pending = nil
        server.pending = nil
        report()
        closedPromise.succeed(())
    }

    private func report() {
        if unreportedToServer > 0 { traffic.toServer.add(unreportedToServer, ordering: .relaxed) }
        if unreportedToClient > 0 { traffic.toClient.add(unreportedToClient, ordering: .relaxed) }
        unreportedToServer = 0
        unreportedToClient = 0
    }
}


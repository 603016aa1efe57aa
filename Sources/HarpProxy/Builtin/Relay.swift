import CRelay
import Foundation
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The relay: established sessions' bytes, passed by threads of its own, each an epoll loop, the
/// way HAProxy and `contrib/bench/relay.c` do it. A read goes into the thread's one buffer and is
/// written to the other side at once; only what the other side does not take is kept, for that
/// session alone, and its reading stops until that is sent (backpressure). Per message: no
/// allocation, no reference counting of buffers, no hop between threads.
///
/// Edge-triggered, as nginx does: a socket is registered once for input and output and never
/// changed. A read shorter than the buffer means the socket had nothing more; new input makes a
/// new edge.
final class RelayGroup: Sendable {
    /// One per core, started with the first session.
    static let shared = RelayGroup(threads: System.coreCount)

    private let loops: [RelayLoop]
    private let next = Atomic<Int>(0)

    init(threads: Int) {
        loops = (0..<max(1, threads)).map { RelayLoop(index: $0) }
    }

    /// The thread a new session goes to: each in turn.
    func pick() -> RelayLoop {
        loops[next.add(1, ordering: .relaxed).oldValue % loops.count]
    }
}

/// One relay thread: its epoll set, its sessions, its buffer. Everything but `inbox` is touched
/// by that thread alone.
final class RelayLoop: @unchecked Sendable {
    enum Command {
        case add(RelaySession)
        case cut(RelaySession, ByteBuffer)
    }

    static let bufferSize = 64 * 1024

    private let epoll: CInt
    private let wake: CInt
    private let inbox = Mutex<[Command]>([])
    /// Every read of this thread lands here, and is written on from here.
    let buffer: UnsafeMutableRawPointer
    private var sessions: [RelaySession?] = []
    private var freeSlots: [Int] = []
    /// Freed during the current batch of events: not given out again before the batch ends,
    /// so that a later event of the batch for the old session is not taken for a new one's.
    private var freedInBatch: [Int] = []
    /// Sessions that used up their share of reads with input left: read again after the batch,
    /// before the thread waits, so that one fast stream does not hold up the others.
    fileprivate var again: [RelaySession] = []

    init(index: Int) {
        epoll = epoll_create1(CInt(EPOLL_CLOEXEC))
        wake = eventfd(0, CInt(EFD_CLOEXEC | EFD_NONBLOCK))
        precondition(epoll >= 0 && wake >= 0, "relay: epoll_create1 or eventfd failed: \(String(cString: strerror(errno)))")
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 16)
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64.max
        epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event)
        // Named from inside: a new thread would otherwise keep the name of the NIO thread
        // that made it (Linux copies it), and pass for one of NIO's.
        let name = "harp-relay-\(index)"
        Thread { [self] in
            _ = harp_relay_name_thread(name)
            run()
        }.start()
    }

    /// From any thread.
    func send(_ command: Command) {
        let wasEmpty = inbox.withLock { inbox in
            inbox.append(command)
            return inbox.count == 1
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = write(wake, &one, 8)
        }
    }

    private func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        while true {
            let ready = epoll_wait(epoll, events, CInt(capacity), again.isEmpty ? -1 : 0)
            if ready < 0 { continue }  // EINTR
            for i in 0..<Int(ready) {
                let event = events[i]
                let key = event.data.u64
                if key == UInt64.max {
                    drainInbox()
                    continue
                }
                let slot = Int(key >> 1)
                guard slot < sessions.count, let session = sessions[slot] else { continue }
                session.handle(event.events, serverSide: key & 1 == 1)
                if session.isClosed { release(slot) }
            }
            if !again.isEmpty {
                let waiting = again
                again.removeAll(keepingCapacity: true)
                for session in waiting where !session.isClosed {
                    session.resume()
                    if session.isClosed { release(session.slot) }
                }
            }
            if !freedInBatch.isEmpty {
                freeSlots.append(contentsOf: freedInBatch)
                freedInBatch.removeAll(keepingCapacity: true)
            }
        }
    }

    private func drainInbox() {
        var count: UInt64 = 0
        _ = read(wake, &count, 8)
        let commands = inbox.withLock { inbox in
            let taken = inbox
            inbox.removeAll(keepingCapacity: true)
            return taken
        }
        for command in commands {
            switch command {
            case .add(let session): add(session)
            case .cut(let session, let error):
                guard !session.isClosed else { continue }
                session.cutNow(with: error)
                release(session.slot)
            }
        }
    }

    private func add(_ session: RelaySession) {
        // Cut before it was added (the mode recorded it and cut it before `start` ran): its
        // descriptors are closed, and their numbers may already be another socket's.
        guard !session.isClosed else { return }
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            sessions[slot] = session
        } else {
            slot = sessions.count
            sessions.append(session)
        }
        session.slot = slot
        for (fd, side) in [(session.client.fd, UInt64(0)), (session.server.fd, UInt64(1))] {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
            event.data.u64 = UInt64(slot) << 1 | side
            if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 {
                session.close()
                release(slot)
                return
            }
        }
        session.begin()
        if session.isClosed { release(slot) }
    }

    private func release(_ slot: Int) {
        guard slot >= 0, slot < sessions.count, sessions[slot] != nil else { return }
        sessions[slot] = nil
        freedInBatch.append(slot)
    }
}

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
    fileprivate(set) var slot = -1
    /// The relay thread that owns the session, and its buffer.
    private let loop: RelayLoop
    private let buffer: UnsafeMutableRawPointer
    private(set) var isClosed = false
    /// Close the session once what is kept for the surviving side is sent (the other failed).
    private var closeAfterPending = false
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
    init(client: CInt, server: CInt, kept: [UInt8]?, framing: SessionFraming, traffic: Traffic, closed: EventLoopPromise<Void>) {
        self.client = Side(fd: client)
        self.server = Side(fd: server)
        if let kept, !kept.isEmpty {
            self.server.pending = kept
            unreportedToServer = kept.count
        }
        self.framing = framing
        self.traffic = traffic
        closedPromise = closed
        loop = RelayGroup.shared.pick()
        buffer = loop.buffer
    }

    func start() { loop.send(.add(self)) }

    /// From any thread: the cut is made on the session's relay thread.
    func cut(with error: ByteBuffer) {
        loop.send(.cut(self, error))
    }

    // MARK: - On the relay thread

    /// Registered: what was kept goes out, then whatever input is already there.
    fileprivate func begin() {
        flush(toServer: true)
        resume()
    }

    /// Reads both sides (at registration, or its turn again after it used up its share of reads
    /// with input left).
    fileprivate func resume() {
        queued = false
        pump(fromClient: true)
        pump(fromClient: false)
    }

    /// One side's state, the client's or the lead master's, to change in place.
    private func side(client isClient: Bool, _ change: (inout Side) -> Void) {
        if isClient { change(&client) } else { change(&server) }
    }

    fileprivate func handle(_ events: UInt32, serverSide: Bool) {
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
            guard from.readable, !from.ended, to.pending == nil, !closeAfterPending else { return }
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
        if closeAfterPending {
            close()
            return
        }
        closeIfDone()
        pump(fromClient: toServer)
    }

    /// Both inputs ended and everything passed on: the session is over.
    private func closeIfDone() {
        if client.ended, server.ended, client.pending == nil, server.pending == nil { close() }
    }

    /// One side failed (reset, or gone while written to): nothing more is read; the other side
    /// closes once what is kept for it is sent, as the glue does.
    private func fail(clientSide: Bool) {
        side(client: clientSide) { $0.pending = nil }
        let survivorPending = clientSide ? server.pending : client.pending
        if survivorPending == nil {
            close()
        } else {
            closeAfterPending = true
        }
    }

    /// The proxy ends the session: the ErrorResponse first if the client sits between two of
    /// the lead master's messages and has taken everything before it, then both sides close.
    fileprivate func cutNow(with error: ByteBuffer) {
        if framing.atBoundary, client.pending == nil {
            error.withUnsafeReadableBytes { bytes in _ = send(client.fd, bytes.baseAddress!, bytes.count, CInt(MSG_NOSIGNAL)) }
        }
        close()
    }

    fileprivate func close() {
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


import CRelay
import Foundation
import Logging
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
///
/// The daemon makes one group (a thread per core) and hands it to the builtin instances; it stops
/// the group's threads last, once every instance has closed its sessions.
public final class RelayGroup: Sendable {
    private let loops: [RelayLoop]
    private let next = Atomic<Int>(0)

    /// - Parameter name: the threads' names are `name-0`, `name-1`, ... (15 bytes at most kept).
    public init(threads: Int = System.coreCount, name: String = "harp-relay", logger: Logger = Logger(label: "harp.relay")) {
        loops = (0..<max(1, threads)).map { RelayLoop(name: "\(name)-\($0)", logger: logger) }
    }

    /// The thread a new session (or a socket of the setup) goes to: each in turn.
    func pick() -> RelayLoop {
        loops[next.add(1, ordering: .relaxed).oldValue % loops.count]
    }

    /// Ends every thread, closing any session still on it (the instances closed theirs first),
    /// and returns once they have exited. A session started after this is closed at once.
    public func stop() {
        for loop in loops { loop.send(.stop) }
        for loop in loops { loop.exited.wait() }
    }
}

/// One relay thread: its epoll set, its sessions, its buffer. Everything but `inbox` is touched
/// by that thread alone (asserted in debug builds).
final class RelayLoop: @unchecked Sendable {
    enum Command {
        case add(RelaySession)
        case cut(RelaySession, ByteBuffer)
        /// Watches a socket of the setup (a listener, a connect under way) for `events`.
        case watch(any RelayWatch, events: UInt32)
        /// Stops watching it; its `unwatched` runs on the thread once it is out of the set.
        case unwatch(any RelayWatch)
        case stop
    }

    static let bufferSize = 64 * 1024

    private let epoll: CInt
    private let wake: CInt
    private let inbox = Mutex<(commands: [Command], stopped: Bool)>(([], false))
    /// Signalled once the thread has exited.
    let exited = DispatchSemaphore(value: 0)
    private let logger: Logger
    /// The thread's own id, for the confinement assertions.
    private var thread: pthread_t?
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
    /// The setup's sockets this thread watches, by key (`watchTag` set, then a serial number).
    private var watches: [UInt64: any RelayWatch] = [:]
    private var nextWatch: UInt64 = 0
    /// Keys of the epoll set: a session's are its slot and side (far below this), the wake's is
    /// all ones, a watch's has this bit.
    private static let watchTag: UInt64 = 1 << 62

    init(name: String, logger: Logger) {
        self.logger = logger
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
        Thread { [self] in
            _ = harp_relay_name_thread(name)
            thread = pthread_self()
            run()
            exited.signal()
        }.start()
    }

    /// From any thread. After the stop, a session to add is closed at once, and a cut is moot.
    func send(_ command: Command) {
        let (wasEmpty, stopped) = inbox.withLock { inbox -> (Bool, Bool) in
            guard !inbox.stopped else { return (false, true) }
            if case .stop = command { inbox.stopped = true }
            inbox.commands.append(command)
            return (inbox.commands.count == 1, false)
        }
        if stopped {
            switch command {
            case .add(let session): session.closeUnstarted()
            case .watch(let watch, _), .unwatch(let watch): watch.abandoned()
            case .cut, .stop: break
            }
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = write(wake, &one, 8)
        }
    }

    /// In debug builds: the caller runs on this loop's thread.
    func assertOnThread() {
        assert(thread.map { pthread_equal($0, pthread_self()) != 0 } ?? false, "relay state touched off its thread")
    }

    private func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer {
            events.deallocate()
            for case let session? in sessions { session.close() }
            for watch in watches.values { watch.abandoned() }
            Glibc.close(epoll)
            Glibc.close(wake)
            buffer.deallocate()
        }
        var failures = 0
        while true {
            let ready = epoll_wait(epoll, events, CInt(capacity), again.isEmpty ? waitTimeout() : 0)
            if ready < 0 {
                guard errno != EINTR else { continue }
                // Not expected (the set and the buffer are the thread's own): said once, and
                // never a spin.
                if failures == 0 { logger.error("relay: epoll_wait failed", metadata: ["error": "\(String(cString: strerror(errno)))"]) }
                failures += 1
                usleep(10_000)
                continue
            }
            for i in 0..<Int(ready) {
                let event = events[i]
                let key = event.data.u64
                if key == UInt64.max {
                    if !drainInbox() { return }
                    continue
                }
                if key & Self.watchTag != 0 {
                    watches[key]?.handle(event.events, on: self)
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
            expireWatches()
        }
    }

    /// Milliseconds until the first watch's deadline, -1 if none has one.
    private func waitTimeout() -> CInt {
        var first: NIODeadline?
        for watch in watches.values {
            if let deadline = watch.deadline, first.map({ deadline < $0 }) ?? true { first = deadline }
        }
        guard let first else { return -1 }
        let nanoseconds = (first - .now()).nanoseconds
        return nanoseconds <= 0 ? 0 : CInt(min(Int64(60_000), (nanoseconds + 999_999) / 1_000_000))
    }

    private func expireWatches() {
        guard !watches.isEmpty else { return }
        let now = NIODeadline.now()
        for watch in watches.values {
            if let deadline = watch.deadline, deadline <= now { watch.expired(on: self) }
        }
    }

    // MARK: - Watches (on this thread)

    /// Adds `watch` to the set (level-triggered: what it does not take is reported again).
    private func startWatching(_ watch: any RelayWatch, events: UInt32) {
        nextWatch += 1
        let key = Self.watchTag | nextWatch
        var event = epoll_event()
        event.events = events
        event.data.u64 = key
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, watch.fd, &event) == 0 else {
            watch.failedToWatch(errno)
            return
        }
        watch.key = key
        watches[key] = watch
        watch.watching(on: self)
    }

    /// Changes the events `watch` is told of (none: paused).
    func modify(_ watch: any RelayWatch, events: UInt32) {
        assertOnThread()
        guard watches[watch.key] != nil else { return }
        var event = epoll_event()
        event.events = events
        event.data.u64 = watch.key
        epoll_ctl(epoll, EPOLL_CTL_MOD, watch.fd, &event)
    }

    /// Takes `watch` out of the set; its socket is the watch's to close or hand on.
    func stopWatching(_ watch: any RelayWatch) {
        assertOnThread()
        guard watches.removeValue(forKey: watch.key) != nil else { return }
        epoll_ctl(epoll, EPOLL_CTL_DEL, watch.fd, nil)
    }

    /// False once the loop is to stop.
    private func drainInbox() -> Bool {
        var count: UInt64 = 0
        _ = read(wake, &count, 8)
        let commands = inbox.withLock { inbox in
            let taken = inbox.commands
            inbox.commands.removeAll(keepingCapacity: true)
            return taken
        }
        for command in commands {
            switch command {
            case .add(let session): add(session)
            case .cut(let session, let error):
                guard !session.isClosed else { continue }
                session.cutNow(with: error)
                release(session.slot)
            case .watch(let watch, let events):
                startWatching(watch, events: events)
            case .unwatch(let watch):
                stopWatching(watch)
                watch.unwatched()
            case .stop:
                return false
            }
        }
        return true
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

/// A socket of the setup that a relay thread watches: a listening socket (`Acceptor`), a connect
/// to the lead master under way (`LeaderConnect`). Its methods run on that thread.
protocol RelayWatch: AnyObject, Sendable {
    var fd: CInt { get }
    /// Its key in the thread's set, given when it is added.
    var key: UInt64 { get set }
    /// When `expired` runs, if ever.
    var deadline: NIODeadline? { get }
    /// Added to the thread's set.
    func watching(on loop: RelayLoop)
    /// `epoll_ctl` refused it.
    func failedToWatch(_ error: CInt)
    func handle(_ events: UInt32, on loop: RelayLoop)
    func expired(on loop: RelayLoop)
    /// Out of the set at its own request (`.unwatch`).
    func unwatched()
    /// The relay stopped (or was stopped before it could be added): it closes what it holds.
    func abandoned()
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
    fileprivate func begin() {
        loop.assertOnThread()
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
    fileprivate func cutNow(with error: ByteBuffer) {
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
    fileprivate func closeUnstarted() {
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


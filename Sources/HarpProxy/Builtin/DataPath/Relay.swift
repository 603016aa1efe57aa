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
    var again: [RelaySession] = []
    /// The setup's sockets this thread watches, by key (`watchTag` set, then a serial number).
    private var watches: [UInt64: any RelayWatch] = [:]
    private var nextWatch: UInt64 = 0
    /// The first deadline of a watch as of the last wait: none, and a turn reads no clock.
    private var earliestDeadline: NIODeadline?
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
            let timeout = waitTimeout()  // also notes the first deadline, for `expireWatches`
            let ready = epoll_wait(epoll, events, CInt(capacity), again.isEmpty ? timeout : 0)
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
        earliestDeadline = first
        guard let first else { return -1 }
        let nanoseconds = (first - .now()).nanoseconds
        return nanoseconds <= 0 ? 0 : CInt(min(Int64(60_000), (nanoseconds + 999_999) / 1_000_000))
    }

    /// Runs `expired` of the watches whose deadline has passed. A deadline set during this turn
    /// (a connect added, a listener paused) is found by the next wait, whose timeout it bounds.
    private func expireWatches() {
        guard let earliest = earliestDeadline else { return }
        let now = NIODeadline.now()
        guard now >= earliest else { return }
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

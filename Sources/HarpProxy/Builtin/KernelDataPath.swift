import CSockmap
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// `data_path: kernel`: once a client and its lead master are connected, their two sockets are
/// joined by a BPF sockmap, and the kernel passes each one's input straight to the other's send
/// queue. No byte is copied to this process, and no event wakes it; per transaction that is
/// four system calls and two wake-ups fewer than the user-space glue.
///
/// The kernel gives no flow control on this path: a socket's input is taken as it arrives, and
/// what the partner cannot send yet waits in the kernel, however much it grows. So a thread of
/// ours looks at every joined pair each `tick`, and when more than `highWater` bytes wait for a
/// slow reader, it parks both sockets (their input is no longer passed on but kept in their own
/// queues, charged to their receive buffers, so TCP holds the senders back), waits until what
/// was under way has reached the partners' send queues, and gives the sockets to NIO, where the
/// glue forwards them with exact backpressure. They stay in the sockmap, parked, until they are
/// closed: a read returns their input in order. (Taking a socket out of the map while input
/// arrives loses that input; see CSockmap.h.) A half-close is passed on the way the bytes are:
/// the FIN is sent only once every byte before it has reached the partner's send queue.
///
/// The process needs CAP_BPF and CAP_NET_ADMIN (root has them). Without them, or on a kernel
/// without sockmap, `shared()` fails once with the reason, and the instance stays in user space.
final class KernelDataPath: @unchecked Sendable {
    /// Bytes that may wait in the kernel for a slow reader before the pair moves to user space.
    static let highWater: UInt64 = 8 << 20
    static let tick: Duration = .milliseconds(25)
    /// Bytes the kernel took from one side that have not reached the other's send queue, while
    /// that queue is empty and nothing is parked, for this long, are lost: the kernel dropped
    /// them. With an empty send queue the kernel's own sender would have passed them on within
    /// milliseconds. (Seen on Linux 6.18 about once in twenty slow-reader runs while a moving
    /// pair's sockets were taken out of the maps, whose program Linux detaches with input under
    /// way; they no longer leave the maps. This stays as a guard: reset, never hang or splice.)
    static let lostAfter: Duration = .seconds(2)

    enum End: Sendable {
        /// Both sockets are closed; their descriptors are gone.
        case closed
        /// Reset both ways, because the kernel lost `bytes` of the stream while the pair was moving
        /// to user space (see `lostAfter`): passing on what follows would splice the stream, and
        /// a plain close would end it as if it were whole.
        case lost(bytes: UInt64)
        /// Out of the kernel path, now the receiver's to own and forward. Both sockets are parked
        /// (still in the sockmap, which closing them leaves): a read returns their input in order.
        /// `clientInputEnded`: the client's FIN was already passed on (the lead master's socket is
        /// shut for writing); `serverInputEnded` the same the other way. Such a side's end of
        /// input must not be passed on again. `clientTaken`, `serverTaken`: what each socket had
        /// given up by then (`harp_socket_counts`), where its reads in user space begin (see
        /// `ParkedInputCheck`).
        case demoted(client: CInt, server: CInt, clientInputEnded: Bool, serverInputEnded: Bool,
                     clientTaken: UInt64, serverTaken: UInt64)
    }

    enum JoinResult: Sendable {
        case joined(Pair)
        /// Nothing happened; the caller still owns the descriptors and may use them in user space.
        case notJoined(IOError)
        /// The kernel may already have taken input, so the sockets cannot go on without it: both
        /// descriptors are closed.
        case broken(IOError)
    }

    /// What one look at a pair found: each side's counts since the join (see `harp_socket_counts`).
    fileprivate struct Counts {
        var clientIn: UInt64 = 0, clientOut: UInt64 = 0, serverIn: UInt64 = 0, serverOut: UInt64 = 0
        /// What waits in each side's send queue now (not relative to the join).
        var clientQueued: UInt64 = 0, serverQueued: UInt64 = 0
        var failed = false

        /// These counts less `base`'s, none below zero.
        func since(_ base: Counts) -> Counts {
            func since(_ value: UInt64, _ base: UInt64) -> UInt64 { value > base ? value - base : 0 }
            return Counts(clientIn: since(clientIn, base.clientIn), clientOut: since(clientOut, base.clientOut),
                          serverIn: since(serverIn, base.serverIn), serverOut: since(serverOut, base.serverOut),
                          clientQueued: clientQueued, serverQueued: serverQueued, failed: failed)
        }
    }

    /// One joined pair. Its mutable fields are touched only under the path's lock.
    final class Pair: @unchecked Sendable {
        let id: UInt64
        let client: CInt
        let server: CInt
        /// The sockets' slots, if the program counts their input and records its end (see
        /// `sayGoodbye` and `needsLook`), with the cookies they are tracked under.
        fileprivate var clientSlot: (cookie: UInt64, slot: UInt32)?
        fileprivate var serverSlot: (cookie: UInt64, slot: UInt32)?
        /// Their input counts as of the last tick.
        fileprivate var clientSeen: UInt64 = 0
        fileprivate var serverSeen: UInt64 = 0
        /// Counts at the join: bytes before it (the client's first message, written by NIO) and a
        /// connecting socket's SYN are not the kernel path's.
        fileprivate let base: Counts
        fileprivate var clientEOF = false
        fileprivate var serverEOF = false
        fileprivate var shutToServer = false
        fileprivate var shutToClient = false
        /// Moving to user space: both sockets are parked.
        fileprivate var demoting = false
        /// While moving to user space: what is still on its way, and since when it has not moved
        /// although the receiving side's send queue is empty.
        fileprivate var stuckPending: UInt64 = 0
        fileprivate var stuckSince: ContinuousClock.Instant?
        /// Faults this pair is made to show in its move (see `injectAtNextMove`).
        fileprivate var injected = InjectedFaults()
        fileprivate var countedToServer: UInt64 = 0
        fileprivate var countedToClient: UInt64 = 0
        fileprivate let onBytes: @Sendable (_ toServer: Int, _ toClient: Int) -> Void
        fileprivate let onEnd: @Sendable (Pair, End) -> Void
        /// Held while the watcher reads the pair's counters outside the path's lock, and while the
        /// descriptors are closed, so that no counter is read from a descriptor number reused by
        /// another socket.
        fileprivate let descriptors = NSLock()
        fileprivate var descriptorsClosed = false

        fileprivate init(id: UInt64, client: CInt, server: CInt, base: Counts,
                         onBytes: @escaping @Sendable (Int, Int) -> Void, onEnd: @escaping @Sendable (Pair, End) -> Void) {
            self.id = id
            self.client = client
            self.server = server
            self.base = base
            self.onBytes = onBytes
            self.onEnd = onEnd
        }
    }

    private var map = harp_sockmap()
    private let epoll: CInt
    private let lock = NSLock()
    private var pairs: [UInt64: Pair] = [:]
    private var nextID: UInt64 = 1
    /// Slots of the program's `seen` array: handed out one a socket, under the lock.
    private var freeSlots: [UInt32] = []
    private var nextSlot: UInt32 = 0
    private var thread: Thread?
    /// For the next pair that moves to user space; under the lock.
    private var injected = InjectedFaults()

    // MARK: - Opening, once per process

    private static let openingLock = NSLock()
    nonisolated(unsafe) private static var opened: Result<KernelDataPath, KernelDataPathUnavailable>?

    /// The process's kernel data path, opened on first use; the same answer every time after.
    static func shared() -> Result<KernelDataPath, KernelDataPathUnavailable> {
        openingLock.lock()
        defer { openingLock.unlock() }
        if let opened { return opened }
        let result = Result { try KernelDataPath() }.mapError { $0 as? KernelDataPathUnavailable ?? KernelDataPathUnavailable(reason: "\($0)") }
        opened = result
        return result
    }

    private init() throws {
        var error = [CChar](repeating: 0, count: 4400)
        let result = harp_sockmap_open(&map, &error, CInt(error.count))
        guard result == 0 else {
            throw KernelDataPathUnavailable(reason: String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        epoll = harp_watch_create()
        guard epoll >= 0 else {
            harp_sockmap_close(&map)
            throw KernelDataPathUnavailable(reason: "epoll_create1: \(String(cString: strerror(-epoll)))")
        }
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "harp-kernel-data-path"
        self.thread = thread
        thread.start()
    }

    // MARK: - Joining and closing

    /// Joins two connected TCP sockets; see `JoinResult` for who owns the descriptors after.
    func join(client: CInt, server: CInt, onBytes: @escaping @Sendable (Int, Int) -> Void, onEnd: @escaping @Sendable (Pair, End) -> Void) -> JoinResult {
        lock.lock()
        defer { lock.unlock() }
        let id = nextID
        nextID += 1
        // Counted before the kernel reads anything, so that everything after is the path's.
        let base = Self.measure(client: client, server: server, mode: HARP_COUNT_UNJOINED)
        guard !base.failed else { return .notJoined(IOError(errnoCode: EBADF, reason: "reading the sockets' counters")) }
        // Watched before they are joined: once the kernel reads them there is no way back.
        for (fd, side) in [(client, UInt64(0)), (server, UInt64(1))] {
            let added = harp_watch_add(epoll, fd, id << 1 | side)
            if added != 0 {
                _ = harp_watch_remove(epoll, client)
                return .notJoined(IOError(errnoCode: -added, reason: "epoll_ctl"))
            }
        }
        // Tracked before the join, so that everything the sockets take in is seen.
        let slots = [client, server].map { track($0) }
        var started: CInt = 0
        let joined = harp_sockmap_join(&map, client, server, &started)
        guard joined == 0 else {
            for slot in slots { untrack(slot) }
            _ = harp_watch_remove(epoll, client)
            _ = harp_watch_remove(epoll, server)
            let error = IOError(errnoCode: -joined, reason: "joining the sockets in the BPF sockmap")
            if started != 0 {
                Glibc.close(client)
                Glibc.close(server)
                return .broken(error)
            }
            return .notJoined(error)
        }
        let pair = Pair(id: id, client: client, server: server, base: base, onBytes: onBytes, onEnd: onEnd)
        pair.clientSlot = slots[0]
        pair.serverSlot = slots[1]
        pairs[id] = pair
        return .joined(pair)
    }

    /// A slot for `fd`, and the program told to track it there; nil if there is none (all in use)
    /// or the kernel refused. Under the lock.
    private func track(_ fd: CInt) -> (cookie: UInt64, slot: UInt32)? {
        let cookie = harp_socket_cookie(fd)
        guard cookie != 0 else { return nil }
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
        } else if nextSlot < UInt32(HARP_SEEN_SLOTS) {
            slot = nextSlot
            nextSlot += 1
        } else {
            return nil
        }
        guard harp_sockmap_track(&map, cookie, slot) == 0 else {
            freeSlots.append(slot)
            return nil
        }
        return (cookie, slot)
    }

    private func untrack(_ tracked: (cookie: UInt64, slot: UInt32)?) {
        guard let tracked else { return }
        harp_sockmap_untrack(&map, tracked.cookie)
        freeSlots.append(tracked.slot)
    }

    /// Closes both sockets now (the lead master moved, or the instance stops). Does nothing if
    /// the pair has already ended. `goodbye`: see `close(_:goodbye:)`.
    func close(_ pair: Pair, goodbye: [UInt8]? = nil) { close([pair], goodbye: goodbye) }

    /// Closes pairs at once: every client socket first, then every lead-master socket (see
    /// `BuiltinMode.closeConnections`). `goodbye`, a PostgreSQL ErrorResponse, is written to each
    /// client first whose session is between two messages (see `sayGoodbye`).
    func close(_ batch: [Pair], goodbye: [UInt8]? = nil) {
        lock.lock()
        var endings: [() -> Void] = []
        var servers: [Pair] = []
        for pair in batch where pairs[pair.id] === pair {
            if let goodbye { sayGoodbye(pair, goodbye) }
            endings.append(finish(pair, demote: false, counts: nil, closeServer: false))
            servers.append(pair)
        }
        for pair in servers {
            pair.descriptors.lock()
            harp_socket_close(pair.server)
            pair.descriptors.unlock()
        }
        lock.unlock()
        for ended in endings { ended() }
    }

    /// Writes `message` to the client if its session is between two of the lead master's
    /// messages, as far as the kernel path can tell: the last thing the lead master sent was a
    /// whole ReadyForQuery, and all of it has reached the client's send queue. (The user-space
    /// glue follows every message header; here only the end of the lead master's last input is
    /// recorded, by the program.) The lead master's socket is parked first, so that nothing
    /// passes to the client after the look. A session whose last input only looks like that
    /// (6 bytes at the end of an unrelated write, of a TLS record) is wrongly taken for one at
    /// rest about once in 2^40; it then reads a broken message instead of a bare close. Under the lock.
    private func sayGoodbye(_ pair: Pair, _ message: [UInt8]) {
        guard let server = pair.serverSlot, !pair.demoting, !message.isEmpty else { return }
        _ = harp_sockmap_park(&map, pair.server)
        // The program adds to `taken` before it writes `tail`: the same count and tail before and
        // after the look mean that no input came in during it (as with a seqlock). Input that came
        // in after the park is parked, but its tail is recorded all the same.
        var tail = [UInt8](repeating: 0, count: 6), tailAfter = tail
        let takenBefore = harp_sockmap_taken(&map, server.slot)
        harp_sockmap_tail(&map, server.slot, &tail)
        let now = Self.measure(client: pair.client, server: pair.server, mode: HARP_COUNT_JOINED)
        harp_sockmap_tail(&map, server.slot, &tailAfter)
        guard harp_sockmap_taken(&map, server.slot) == takenBefore, tail == tailAfter, !now.failed else { return }
        let since = now.since(pair.base)
        // Everything taken from the lead master is in the client's send queue (none under way,
        // none parked), and that queue has room for the whole message: a short write would leave
        // the client half a message.
        guard since.serverIn == since.clientOut, now.clientQueued + UInt64(message.count) <= Self.goodbyeRoom,
              Self.isReadyForQuery(tail) else { return }
        _ = message.withUnsafeBytes { send(pair.client, $0.baseAddress, $0.count, CInt(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    }

    /// What a client's send queue may hold for the goodbye to be written: well under the smallest
    /// send buffer Linux gives a TCP socket, so that the message goes in whole.
    static let goodbyeRoom: UInt64 = 2048

    /// A whole ReadyForQuery: 'Z', length 5, and a transaction status (idle, in a transaction, failed).
    static func isReadyForQuery(_ bytes: [UInt8]) -> Bool {
        bytes.count == 6 && bytes[0..<5].elementsEqual([0x5A, 0, 0, 0, 5]) && [UInt8(ascii: "I"), UInt8(ascii: "T"), UInt8(ascii: "E")].contains(bytes[5])
    }

    // MARK: - Faults, for tests

    /// Linux's two faults in a move to user space, made to happen to the next pair that moves, so
    /// that tests drive their handling through the real path (Linux shows them rarely and at
    /// random). `lost`: that many bytes taken from the client never reach the lead master (see
    /// `lostAfter`). `repeated`: the lead master's socket seems to hand that many bytes over
    /// twice (see `ParkedInputCheck`). Zero, the default, changes nothing; nothing outside the
    /// tests sets them.
    struct InjectedFaults {
        var lost: UInt64 = 0
        var repeated: UInt64 = 0
    }

    /// See `InjectedFaults`; called with no arguments, takes back what was set.
    func injectAtNextMove(lost: UInt64 = 0, repeated: UInt64 = 0) {
        lock.lock()
        injected = InjectedFaults(lost: lost, repeated: repeated)
        lock.unlock()
    }

    // MARK: - The watching thread

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 128)
        var flags = [CInt](repeating: 0, count: 128)
        var nextTick = ContinuousClock.now + Self.tick
        var ticks = 0
        while true {
            let wait = max(0, Int((nextTick - ContinuousClock.now).fractionalMilliseconds.rounded(.up)))
            let n = harp_watch_wait(epoll, &tokens, &flags, CInt(tokens.count), CInt(wait))
            var endings: [() -> Void] = []
            var toLook: [Pair] = []
            let tickDue = ContinuousClock.now >= nextTick

            // Events first, under the lock: they only set flags (or end a pair that was reset).
            lock.lock()
            if n > 0 {
                for (token, flag) in zip(tokens[0..<Int(n)], flags[0..<Int(n)]) {
                    guard let pair = pairs[token >> 1] else { continue }  // ended meanwhile
                    let isClient = token & 1 == 0
                    if flag & CInt(HARP_WATCH_ERROR) != 0 {
                        // A reset: nothing more can be delivered either way, also while the pair
                        // moves to user space (a client gone while a result piles up for it:
                        // what is under way to it can never get through). A FIN is no error
                        // here: the program drops it (see sockmap.c).
                        endings.append(finish(pair, demote: false, counts: nil))
                        continue
                    }
                    if flag & CInt(HARP_WATCH_EOF) != 0 {
                        if isClient { pair.clientEOF = true } else { pair.serverEOF = true }
                    }
                    toLook.append(pair)
                }
            }
            if tickDue {
                nextTick = ContinuousClock.now + Self.tick
                ticks &+= 1
                let everything = ticks % Self.looksAtAllEvery == 0
                for pair in pairs.values where needsLook(pair) || everything { toLook.append(pair) }
                var seen = Set<UInt64>()
                toLook = toLook.filter { seen.insert($0.id).inserted }
            } else {
                var seen = Set<UInt64>()
                toLook = toLook.filter { seen.insert($0.id).inserted }
            }
            let modes = toLook.map { $0.demoting ? HARP_COUNT_PARKED : HARP_COUNT_JOINED }
            lock.unlock()

            // The counters, outside the path's lock: the system calls for every pair must not hold
            // up joins and closes on the event loops. A pair closed meanwhile is skipped.
            let looks = zip(toLook, modes).map { pair, mode in
                pair.descriptors.lock()
                defer { pair.descriptors.unlock() }
                var counts = Counts()
                counts.failed = true
                if !pair.descriptorsClosed {
                    counts = Self.measure(client: pair.client, server: pair.server, mode: mode)
                }
                return (pair, counts)
            }

            lock.lock()
            for (pair, counts) in looks where pairs[pair.id] === pair {
                if let ending = step(pair, counts) { endings.append(ending) }
            }
            lock.unlock()
            for ending in endings { ending() }
        }
    }

    /// A pair is looked at on a tick only if it may have changed: new input on either socket
    /// (only input can make bytes pile up in front of a reader, or change the counts for
    /// `/metrics`), a half-close to pass on, or a move under way. The input counts are the
    /// program's, read from memory: an idle pair costs no system call. Every pair is still looked
    /// at every 10 s. Under the lock; notes the counts it read.
    private func needsLook(_ pair: Pair) -> Bool {
        guard let client = pair.clientSlot, let server = pair.serverSlot else { return true }
        let clientTaken = harp_sockmap_taken(&map, client.slot), serverTaken = harp_sockmap_taken(&map, server.slot)
        defer { (pair.clientSeen, pair.serverSeen) = (clientTaken, serverTaken) }
        if pair.demoting || (pair.clientEOF && !pair.shutToServer) || (pair.serverEOF && !pair.shutToClient) { return true }
        return clientTaken != pair.clientSeen || serverTaken != pair.serverSeen
    }

    /// Looks at every pair once in this many ticks (10 s), whatever `needsLook` says.
    static let looksAtAllEvery = 400

    /// `mode`: a HARP_COUNT_* value, for both sockets.
    private static func measure(client: CInt, server: CInt, mode: Int) -> Counts {
        var counts = Counts()
        let mode = CInt(mode)
        counts.failed = harp_socket_counts(client, mode, &counts.clientIn, &counts.clientOut, &counts.clientQueued) != 0
            || harp_socket_counts(server, mode, &counts.serverIn, &counts.serverOut, &counts.serverQueued) != 0
        return counts
    }

    /// One look at a pair: counts its bytes, passes a half-close on once everything before it has
    /// reached the partner, and moves it to user space when a reader falls behind. Under the lock;
    /// returns what to call after it, if the pair ended.
    private func step(_ pair: Pair, _ now: Counts) -> (() -> Void)? {
        guard !now.failed else { return finish(pair, demote: false, counts: nil) }
        let c = now.since(pair.base)
        count(pair, toServer: c.clientIn, toClient: c.serverIn)
        // Bytes taken from one side that have not yet reached the other's send queue.
        let toServerUnderway = (c.clientIn > c.serverOut ? c.clientIn - c.serverOut : 0) + pair.injected.lost
        let toClientUnderway = c.serverIn > c.clientOut ? c.serverIn - c.clientOut : 0
        if pair.demoting {
            // Both sides are parked, and their counts leave out what waits in their own queues:
            // what is under way now is what the kernel passed on before the park (or input on
            // its way into a queue) that has not reached the partner's send queue yet. Once none
            // is, the glue may write to both sides; it reads the queues first, in order.
            let pending = toServerUnderway + toClientUnderway
            guard pending == 0 else {
                // Stuck with the receiving sides' send queues empty: lost, not late.
                let drained = (toServerUnderway == 0 || now.serverQueued == 0) && (toClientUnderway == 0 || now.clientQueued == 0)
                guard drained, pending == pair.stuckPending, let since = pair.stuckSince else {
                    pair.stuckPending = pending
                    pair.stuckSince = drained ? .now : nil
                    return nil
                }
                return ContinuousClock.now - since >= Self.lostAfter ? finish(pair, demote: false, counts: now, lost: pending) : nil
            }
            return finish(pair, demote: true, counts: now)
        }
        if pair.clientEOF, !pair.shutToServer, toServerUnderway == 0 {
            shutdown(pair.server, CInt(SHUT_WR))
            pair.shutToServer = true
        }
        if pair.serverEOF, !pair.shutToClient, toClientUnderway == 0 {
            shutdown(pair.client, CInt(SHUT_WR))
            pair.shutToClient = true
        }
        if pair.shutToServer && pair.shutToClient { return finish(pair, demote: false, counts: now) }
        if max(toServerUnderway, toClientUnderway) > Self.highWater {
            // A reader fell behind (also after one side's FIN: a client that half-closes and does
            // not read would otherwise let the other side's output pile up in the kernel without
            // limit). Both sides are parked: from here each one's input waits for the glue, in
            // its own queue. A pair can only move as a whole: the glue must not write to a side
            // the kernel still sends to.
            pair.demoting = true
            (pair.injected, injected) = (injected, InjectedFaults())
            _ = harp_sockmap_park(&map, pair.client)
            _ = harp_sockmap_park(&map, pair.server)
        }
        return nil
    }

    /// Reports the bytes passed since the last report (never a negative amount).
    private func count(_ pair: Pair, toServer: UInt64, toClient: UInt64) {
        let up = toServer > pair.countedToServer ? toServer - pair.countedToServer : 0
        let down = toClient > pair.countedToClient ? toClient - pair.countedToClient : 0
        guard up > 0 || down > 0 else { return }
        pair.countedToServer += up
        pair.countedToClient += down
        pair.onBytes(Int(clamping: up), Int(clamping: down))
    }

    /// Takes a pair out; under the lock. Closed: both descriptors are closed here. Demoted: out of
    /// the maps, handed to `onEnd`.
    /// `closeServer: false` leaves the lead-master socket open (marked closed) for the caller to close.
    private func finish(_ pair: Pair, demote: Bool, counts: Counts?, closeServer: Bool = true, lost: UInt64 = 0) -> () -> Void {
        pairs[pair.id] = nil
        untrack(pair.clientSlot)
        untrack(pair.serverSlot)
        pair.clientSlot = nil
        pair.serverSlot = nil
        _ = harp_watch_remove(epoll, pair.client)
        _ = harp_watch_remove(epoll, pair.server)
        let last = counts ?? Self.measure(client: pair.client, server: pair.server, mode: pair.demoting ? HARP_COUNT_PARKED : HARP_COUNT_JOINED)
        if !last.failed {
            let c = last.since(pair.base)
            count(pair, toServer: c.clientIn, toClient: c.serverIn)
        }
        if demote {
            // The sockets stay in the maps, parked (see `End.demoted`).
            pair.descriptors.lock()
            pair.descriptorsClosed = true  // no longer ours to read
            pair.descriptors.unlock()
            let end = End.demoted(client: pair.client, server: pair.server,
                                  clientInputEnded: pair.shutToServer, serverInputEnded: pair.shutToClient,
                                  clientTaken: last.clientIn, serverTaken: last.serverIn + pair.injected.repeated)
            return { pair.onEnd(pair, end) }
        }
        pair.descriptors.lock()
        pair.descriptorsClosed = true
        if lost > 0 {
            harp_socket_reset(pair.client)
            harp_socket_reset(pair.server)
        } else {
            harp_socket_close(pair.client)
            if closeServer { harp_socket_close(pair.server) }
        }
        pair.descriptors.unlock()
        return { pair.onEnd(pair, lost > 0 ? .lost(bytes: lost) : .closed) }
    }
}

/// In front of the glue on a socket that came back from the kernel data path. Such a socket stays
/// in the sockmap, parked (see `KernelDataPath.End.demoted`): its input waits in its own queue,
/// not in TCP's. Closed with input still waiting there, Linux would send a FIN, not the reset it
/// sends for unread input, and a lead master held back by a zero window would learn only at its
/// next window probe (seconds, up to minutes) that nobody reads. So its close is made a reset then.
final class ParkedSocketClose: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    private let descriptor: CInt

    init(descriptor: CInt) { self.descriptor = descriptor }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, context.channel.isActive { harp_socket_reset_if_unread(descriptor) }
        context.close(mode: mode, promise: promise)
    }
}

/// In front of the glue on a socket that came back from the kernel data path: after each read,
/// checks that the socket has not handed this process more than its connection delivered. What
/// it received, less what waits in its own queue, must be at least what it had given up when it
/// moved (`taken`) plus everything read since.
///
/// Linux 6.18 was seen to break that 8 times in 1,400 runs of a stress test (each moving a pair
/// with megabytes still to come): one packet's input (64 KiB) was queued twice in a parked
/// socket's own queue, and read twice, so that the client got those bytes twice in a row. The queue's size (SIOCINQ) counts the second copy as
/// soon as it is queued, which this check sees at the next read, before the copy can be read.
/// The read that finds it is not passed on, and the connection is reset both ways: a client
/// must never get a stream with bytes repeated (a PostgreSQL client would read rows twice).
final class ParkedInputCheck: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let descriptor: CInt
    private let partner: CInt
    /// The partner's cookie: its descriptor is reset only while it is still that socket.
    private let partnerCookie: UInt64
    private let taken: UInt64
    private var read: UInt64 = 0
    private var broken = false
    private let onRepeat: @Sendable (_ bytes: UInt64) -> Void

    /// `partner`: the other socket of the pair, reset too.
    init(descriptor: CInt, partner: CInt, taken: UInt64, onRepeat: @escaping @Sendable (UInt64) -> Void) {
        self.descriptor = descriptor
        self.partner = partner
        self.partnerCookie = harp_socket_cookie(partner)
        self.taken = taken
        self.onRepeat = onRepeat
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !broken else { return }
        read += UInt64(unwrapInboundIn(data).readableBytes)
        var received: UInt64 = 0
        var closed: CInt = 0
        // Input that arrives during the look only makes `received` higher: never a false alarm.
        // On a closed socket a byte is taken off for the FIN, which a reset does not send: one
        // byte of slack there.
        guard harp_socket_taken(descriptor, &received, &closed) == 0, received + (closed != 0 ? 1 : 0) < taken + read else {
            context.fireChannelRead(data)
            return
        }
        broken = true
        onRepeat(taken + read - received)
        for fd in [descriptor, partner] where fd == descriptor || harp_socket_cookie(fd) == partnerCookie {
            harp_socket_reset_on_close(fd)
        }
        context.fireErrorCaught(InputRepeated())
    }

    /// Nothing more may pass either way (see `GlueHandler.errorCaught`).
    struct InputRepeated: GlueAbort {}
}

struct KernelDataPathUnavailable: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}

/// The descriptor of a NIO socket channel, which NIO does not publish: read from the channel's
/// socket object by reflection, then checked against the channel's own addresses, so that a
/// future NIO that stores it differently yields nil (and user space), never a wrong socket.
/// Call on the channel's event loop while it is active.
enum ChannelDescriptor {
    static func of(_ channel: any Channel) -> CInt? {
        guard let fd = reflectDescriptor(channel), fd >= 0,
              let local = channel.localAddress?.port, let remote = channel.remoteAddress?.port else { return nil }
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        func port(_ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt) -> Int? {
            length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let ok = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, &length) } } == 0
            guard ok else { return nil }
            switch Int32(address.ss_family) {
            case AF_INET: return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) } }
            case AF_INET6: return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
            default: return nil
            }
        }
        guard port({ getsockname(fd, $0, $1) }) == local, port({ getpeername(fd, $0, $1) }) == remote else { return nil }
        return fd
    }

    private static func reflectDescriptor(_ channel: any Channel) -> CInt? {
        var mirror: Mirror? = Mirror(reflecting: channel)
        while let current = mirror {
            for child in current.children where child.label == "socket" {
                var inner: Mirror? = Mirror(reflecting: child.value)
                while let socket = inner {
                    for field in socket.children where field.label == "descriptor" {
                        if let fd = field.value as? CInt { return fd }
                    }
                    inner = socket.superclassMirror
                }
            }
            mirror = current.superclassMirror
        }
        return nil
    }
}

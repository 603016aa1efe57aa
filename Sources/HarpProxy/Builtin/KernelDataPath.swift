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
/// slow reader, it stops the kernel reading the fast side (its input then stays in its TCP
/// receive queue, and TCP holds the sender back), waits until what is under way has reached the
/// send queue, takes the sockets out of the maps and gives them back to NIO, where the glue
/// forwards them with exact backpressure. A half-close is passed on the same way: the FIN is sent
/// only once every byte before it has reached the partner's send queue. Nothing is lost.
///
/// The process needs CAP_BPF and CAP_NET_ADMIN (root has them). Without them, or on a kernel
/// without sockmap, `shared()` fails once with the reason, and the instance stays in user space.
final class KernelDataPath: @unchecked Sendable {
    /// Bytes that may wait in the kernel for a slow reader before the pair moves to user space.
    static let highWater: UInt64 = 8 << 20
    static let tick: Duration = .milliseconds(25)
    /// Bytes the kernel took from one side that have not reached the other's send queue, while
    /// that queue is empty and nothing is parked, for this long, are lost: the kernel dropped
    /// them (seen on Linux 6.18, about once in twenty runs of the slow-reader tests: one 8 KiB or
    /// 64 KiB chunk, when a side's reader is detached while its input arrives). With an empty
    /// send queue the kernel's own sender would have passed them on within milliseconds.
    static let lostAfter: Duration = .seconds(2)

    enum End: Sendable {
        /// Both sockets are closed; their descriptors are gone.
        case closed
        /// Closed too, because the kernel lost `bytes` of the stream while the pair was moving to
        /// user space (see `lostAfter`): passing on what follows would splice the stream.
        case lost(bytes: UInt64)
        /// Out of the kernel path: plain sockets again, now the receiver's to own and forward.
        /// `clientInputEnded`: the client's FIN was already passed on (the lead master's socket is
        /// shut for writing); `serverInputEnded` the same the other way. Such a side's end of
        /// input must not be passed on again.
        /// `clientKept`: the client's bytes that the kernel took but did not pass on; they go to
        /// the lead master before anything else (and `serverKept` the other way).
        case demoted(client: CInt, server: CInt, clientInputEnded: Bool, serverInputEnded: Bool, clientKept: [UInt8], serverKept: [UInt8])
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
        /// Counts at the join: bytes before it (the client's first message, written by NIO) and a
        /// connecting socket's SYN are not the kernel path's.
        fileprivate let base: Counts
        fileprivate var clientEOF = false
        fileprivate var serverEOF = false
        fileprivate var shutToServer = false
        fileprivate var shutToClient = false
        fileprivate var demoting = false
        fileprivate var clientStopped = false
        fileprivate var serverStopped = false
        /// Input taken from a stopped socket's own BPF queue (see `takeParked`), to be passed on
        /// first once the pair is in user space.
        fileprivate var clientKept: [UInt8] = []
        fileprivate var serverKept: [UInt8] = []
        /// While moving to user space: what is still on its way, and since when it has not moved
        /// although the receiving side's send queue is empty.
        fileprivate var stuckPending: UInt64 = 0
        fileprivate var stuckSince: ContinuousClock.Instant?
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
    private var thread: Thread?

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
        let base = Self.measure(client: client, server: server, clientRead: false, serverRead: false)
        guard !base.failed else { return .notJoined(IOError(errnoCode: EBADF, reason: "reading the sockets' counters")) }
        // Watched before they are joined: once the kernel reads them there is no way back.
        for (fd, side) in [(client, UInt64(0)), (server, UInt64(1))] {
            let added = harp_watch_add(epoll, fd, id << 1 | side)
            if added != 0 {
                _ = harp_watch_remove(epoll, client)
                return .notJoined(IOError(errnoCode: -added, reason: "epoll_ctl"))
            }
        }
        var started: CInt = 0
        let joined = harp_sockmap_join(&map, client, server, &started)
        guard joined == 0 else {
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
        pairs[id] = pair
        return .joined(pair)
    }

    /// Closes both sockets now (the lead master moved, or the instance stops). Does nothing if
    /// the pair has already ended.
    func close(_ pair: Pair) { close([pair]) }

    /// Closes pairs at once: every client socket first, then every lead-master socket (see
    /// `BuiltinMode.closeConnections`).
    func close(_ batch: [Pair]) {
        lock.lock()
        var endings: [() -> Void] = []
        var servers: [Pair] = []
        for pair in batch where pairs[pair.id] === pair {
            endings.append(finish(pair, demote: false, counts: nil, closeServer: false))
            servers.append(pair)
        }
        for pair in servers {
            pair.descriptors.lock()
            Glibc.close(pair.server)
            pair.descriptors.unlock()
        }
        lock.unlock()
        for ended in endings { ended() }
    }

    // MARK: - The watching thread

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 128)
        var flags = [CInt](repeating: 0, count: 128)
        var nextTick = ContinuousClock.now + Self.tick
        while true {
            let wait = max(0, Int((nextTick - ContinuousClock.now).fractionalMilliseconds.rounded(.up)))
            let n = harp_watch_wait(epoll, &tokens, &flags, CInt(tokens.count), CInt(wait))
            var endings: [() -> Void] = []
            var toLook: [Pair] = []

            // Events first, under the lock: they only set flags (and read an error).
            lock.lock()
            if n > 0 {
                for (token, flag) in zip(tokens[0..<Int(n)], flags[0..<Int(n)]) {
                    guard let pair = pairs[token >> 1] else { continue }  // ended meanwhile
                    let isClient = token & 1 == 0
                    let fd = isClient ? pair.client : pair.server
                    let partner = isClient ? pair.server : pair.client
                    if flag & CInt(HARP_WATCH_ERROR) != 0, !pair.demoting {
                        // The kernel passes a FIN on as an empty message, which the partner's send
                        // path takes for a broken pipe (EPIPE) once everything before it is sent.
                        // That is the other side's end of input, not a failure: pass it on as usual.
                        if harp_socket_error(fd) == EPIPE, harp_socket_at_eof(partner) == 1 {
                            if isClient { pair.serverEOF = true } else { pair.clientEOF = true }
                        } else {
                            // A reset: nothing more can be delivered either way. (Not while
                            // demoting: the glue will read the error from the socket itself.)
                            endings.append(finish(pair, demote: false, counts: nil))
                            continue
                        }
                    }
                    if flag & CInt(HARP_WATCH_EOF) != 0 {
                        if isClient { pair.clientEOF = true } else { pair.serverEOF = true }
                    }
                    toLook.append(pair)
                }
            }
            if ContinuousClock.now >= nextTick {
                nextTick = ContinuousClock.now + Self.tick
                toLook = Array(pairs.values)
            } else {
                var seen = Set<UInt64>()
                toLook = toLook.filter { seen.insert($0.id).inserted }
            }
            let readers = toLook.map { (!$0.clientStopped, !$0.serverStopped) }
            lock.unlock()

            // The counters, outside the path's lock: the system calls for every pair must not hold
            // up joins and closes on the event loops. A pair closed meanwhile is skipped.
            let looks = zip(toLook, readers).map { pair, reading in
                pair.descriptors.lock()
                defer { pair.descriptors.unlock() }
                var counts = Counts()
                counts.failed = true
                if !pair.descriptorsClosed {
                    counts = Self.measure(client: pair.client, server: pair.server, clientRead: reading.0, serverRead: reading.1)
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

    private static func measure(client: CInt, server: CInt, clientRead: Bool, serverRead: Bool) -> Counts {
        var counts = Counts()
        counts.failed = harp_socket_counts(client, clientRead ? 1 : 0, &counts.clientIn, &counts.clientOut, &counts.clientQueued) != 0
            || harp_socket_counts(server, serverRead ? 1 : 0, &counts.serverIn, &counts.serverOut, &counts.serverQueued) != 0
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
        let toServerUnderway = c.clientIn > c.serverOut ? c.clientIn - c.serverOut : 0
        let toClientUnderway = c.serverIn > c.clientOut ? c.serverIn - c.clientOut : 0
        if pair.demoting {
            // A stopped side's input that the kernel parked in the socket's own queue is taken now;
            // it is not under way to the partner, and the glue passes it on first. These counts
            // were read before the take, so a look that took anything decides nothing.
            let tookClient = pair.clientStopped && Self.takeParked(pair.client, into: &pair.clientKept)
            let tookServer = pair.serverStopped && Self.takeParked(pair.server, into: &pair.serverKept)
            if tookClient || tookServer { return nil }
            let toServerPending = toServerUnderway - min(toServerUnderway, UInt64(pair.clientKept.count))
            let toClientPending = toClientUnderway - min(toClientUnderway, UInt64(pair.serverKept.count))
            // The slow side keeps its kernel reader until everything for it has been sent: taking a
            // socket out of `readers` while the kernel still has bytes queued for it can leave them
            // there (its send queue's wake-ups no longer reach the kernel path).
            guard toServerPending == 0, toClientPending == 0 else {
                // Stuck with the receiving sides' send queues empty: lost, not late.
                let pending = toServerPending + toClientPending
                let drained = (toServerPending == 0 || now.serverQueued == 0) && (toClientPending == 0 || now.clientQueued == 0)
                guard drained, pending == pair.stuckPending, let since = pair.stuckSince else {
                    pair.stuckPending = pending
                    pair.stuckSince = drained ? .now : nil
                    return nil
                }
                return ContinuousClock.now - since >= Self.lostAfter ? finish(pair, demote: false, counts: now, lost: pending) : nil
            }
            if !pair.clientStopped {
                pair.clientStopped = true
                _ = harp_sockmap_stop_reading(&map, pair.client)
                return nil  // anything it took meanwhile shows on the next look
            }
            if !pair.serverStopped {
                pair.serverStopped = true
                _ = harp_sockmap_stop_reading(&map, pair.server)
                return nil
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
            // Stop the kernel reading the side that sends faster than its partner takes. (Also
            // after one side's FIN: a client that half-closes and does not read would otherwise
            // let the other side's output pile up in the kernel without limit.)
            pair.demoting = true
            if toClientUnderway > Self.highWater {
                pair.serverStopped = true
                _ = harp_sockmap_stop_reading(&map, pair.server)
            }
            if toServerUnderway > Self.highWater {
                pair.clientStopped = true
                _ = harp_sockmap_stop_reading(&map, pair.client)
            }
        }
        return nil
    }

    /// Takes what waits in a stopped socket's own BPF queue. The kernel may have taken input at
    /// the moment the socket's reader was detached; with no program left to redirect it, that
    /// input is passed up to this queue, which only a read of the socket returns, and only while
    /// the socket is in a sockmap (leaving it drops the queue). At most `highWater` in all.
    /// True if it took anything.
    @discardableResult
    private static func takeParked(_ fd: CInt, into kept: inout [UInt8]) -> Bool {
        let before = kept.count
        while kept.count < Int(highWater) {
            let parked = harp_socket_parked(fd)
            guard parked > 0 else { break }
            var chunk = [UInt8](repeating: 0, count: Int(parked))
            let n = chunk.withUnsafeMutableBytes { harp_socket_take(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            kept.append(contentsOf: chunk[0..<n])
        }
        return kept.count > before
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
        _ = harp_watch_remove(epoll, pair.client)
        _ = harp_watch_remove(epoll, pair.server)
        let last = counts ?? Self.measure(client: pair.client, server: pair.server, clientRead: !pair.clientStopped, serverRead: !pair.serverStopped)
        if !last.failed {
            let c = last.since(pair.base)
            count(pair, toServer: c.clientIn, toClient: c.serverIn)
        }
        if demote {
            Self.takeParked(pair.client, into: &pair.clientKept)  // the last chance: leaving drops it
            Self.takeParked(pair.server, into: &pair.serverKept)
            _ = harp_sockmap_leave(&map, pair.client)
            _ = harp_sockmap_leave(&map, pair.server)
            // A FIN the kernel passed on leaves EPIPE pending on the socket it went to (see
            // `run`); read here, it cannot reach the glue as a failure. (A reset leaves the socket
            // closed, which the glue sees by itself.)
            _ = harp_socket_error(pair.client)
            _ = harp_socket_error(pair.server)
            pair.descriptors.lock()
            pair.descriptorsClosed = true  // no longer ours to read
            pair.descriptors.unlock()
            let end = End.demoted(client: pair.client, server: pair.server,
                                  clientInputEnded: pair.shutToServer, serverInputEnded: pair.shutToClient,
                                  clientKept: pair.clientKept, serverKept: pair.serverKept)
            return { pair.onEnd(pair, end) }
        }
        pair.descriptors.lock()
        pair.descriptorsClosed = true
        Glibc.close(pair.client)
        if closeServer { Glibc.close(pair.server) }
        pair.descriptors.unlock()
        return { pair.onEnd(pair, lost > 0 ? .lost(bytes: lost) : .closed) }
    }
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

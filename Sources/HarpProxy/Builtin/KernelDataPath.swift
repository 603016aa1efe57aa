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
/// slow reader, it stops the kernel reading both sockets (their input then stays in their TCP
/// receive queues, and TCP holds the senders back), waits until what is under way has reached the
/// send queues, takes the sockets out of the maps and gives them back to NIO, where the glue
/// forwards them with exact backpressure. A half-close is passed on the same way: the FIN is sent
/// only once every byte before it has reached the partner's send queue. Nothing is lost.
///
/// The process needs CAP_BPF and CAP_NET_ADMIN (root has them). Without them, or on a kernel
/// without sockmap, `shared()` fails once with the reason, and the instance stays in user space.
final class KernelDataPath: @unchecked Sendable {
    /// Bytes that may wait in the kernel for a slow reader before the pair moves to user space.
    static let highWater: UInt64 = 8 << 20
    static let tick: Duration = .milliseconds(25)

    enum End: Sendable {
        /// Both sockets are closed; their descriptors are gone.
        case closed
        /// Out of the kernel path: plain sockets again, now the receiver's to own and forward.
        case demoted(client: CInt, server: CInt)
    }

    /// One joined pair. Its fields are touched only under the path's lock.
    final class Pair: @unchecked Sendable {
        let client: CInt
        let server: CInt
        fileprivate var clientEOF = false
        fileprivate var serverEOF = false
        fileprivate var shutToServer = false
        fileprivate var shutToClient = false
        fileprivate var demoting = false
        fileprivate var clientStopped = false
        fileprivate var serverStopped = false
        fileprivate var countedToServer: UInt64 = 0
        fileprivate var countedToClient: UInt64 = 0
        fileprivate let onBytes: @Sendable (_ toServer: Int, _ toClient: Int) -> Void
        fileprivate let onEnd: @Sendable (End) -> Void

        fileprivate init(client: CInt, server: CInt, onBytes: @escaping @Sendable (Int, Int) -> Void, onEnd: @escaping @Sendable (End) -> Void) {
            self.client = client
            self.server = server
            self.onBytes = onBytes
            self.onEnd = onEnd
        }
    }

    private var map = harp_sockmap()
    private let epoll: CInt
    private let lock = NSLock()
    private var pairs: [CInt: Pair] = [:]
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

    /// Joins two connected TCP sockets. On success the path owns both descriptors until it calls
    /// `onEnd`; on failure (an errno) the caller still owns them.
    func join(client: CInt, server: CInt, onBytes: @escaping @Sendable (Int, Int) -> Void, onEnd: @escaping @Sendable (End) -> Void) -> Result<Pair, IOError> {
        lock.lock()
        defer { lock.unlock() }
        let joined = harp_sockmap_join(&map, client, server)
        guard joined == 0 else { return .failure(IOError(errnoCode: -joined, reason: "joining the sockets in the BPF sockmap")) }
        for fd in [client, server] {
            let added = harp_watch_add(epoll, fd)
            if added != 0 {
                _ = harp_sockmap_leave(&map, client)
                _ = harp_sockmap_leave(&map, server)
                _ = harp_watch_remove(epoll, client)
                return .failure(IOError(errnoCode: -added, reason: "epoll_ctl"))
            }
        }
        let pair = Pair(client: client, server: server, onBytes: onBytes, onEnd: onEnd)
        pairs[client] = pair
        pairs[server] = pair
        return .success(pair)
    }

    /// Closes both sockets now (the lead master moved, or the instance stops). Does nothing if
    /// the pair has already ended.
    func close(_ pair: Pair) {
        lock.lock()
        let ended = pairs[pair.client] === pair ? finish(pair, demote: false) : nil
        lock.unlock()
        ended?()
    }

    /// How many pairs are joined now.
    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return pairs.count / 2
    }

    // MARK: - The watching thread

    private func run() {
        var fds = [CInt](repeating: 0, count: 128)
        var flags = [CInt](repeating: 0, count: 128)
        var nextTick = ContinuousClock.now + Self.tick
        while true {
            let wait = max(0, Int((nextTick - ContinuousClock.now).fractionalMilliseconds.rounded(.up)))
            let n = harp_watch_wait(epoll, &fds, &flags, CInt(fds.count), CInt(wait))
            var endings: [() -> Void] = []
            lock.lock()
            if n > 0 {
                for (fd, flag) in zip(fds[0..<Int(n)], flags[0..<Int(n)]) {
                    guard let pair = pairs[fd] else { continue }
                    // A reset: nothing more can be delivered either way. (Not while demoting: the
                    // glue will read the error from the socket itself.)
                    if flag & CInt(HARP_WATCH_ERROR) != 0, !pair.demoting {
                        endings.append(finish(pair, demote: false))
                        continue
                    }
                    // A FIN (with HUP when our own half was already shut): flushed before it is passed on.
                    if flag & CInt(HARP_WATCH_EOF) != 0 {
                        if fd == pair.client { pair.clientEOF = true } else { pair.serverEOF = true }
                        if let ending = step(pair) { endings.append(ending) }
                    }
                }
            }
            if ContinuousClock.now >= nextTick {
                nextTick = ContinuousClock.now + Self.tick
                var seen = Set<ObjectIdentifier>()
                for pair in pairs.values where seen.insert(ObjectIdentifier(pair)).inserted {
                    if let ending = step(pair) { endings.append(ending) }
                }
            }
            lock.unlock()
            for ending in endings { ending() }
        }
    }

    /// One look at a pair: counts its bytes, passes a half-close on once everything before it has
    /// reached the partner, and moves it to user space when a reader falls behind. Under the lock;
    /// returns what to call after it, if the pair ended.
    private func step(_ pair: Pair) -> (() -> Void)? {
        var clientIn: UInt64 = 0, clientOut: UInt64 = 0, serverIn: UInt64 = 0, serverOut: UInt64 = 0
        guard harp_socket_counts(pair.client, &clientIn, &clientOut) == 0,
              harp_socket_counts(pair.server, &serverIn, &serverOut) == 0 else {
            return finish(pair, demote: false)
        }
        if clientIn > pair.countedToServer || serverIn > pair.countedToClient {
            pair.onBytes(Int(clientIn &- pair.countedToServer), Int(serverIn &- pair.countedToClient))
            pair.countedToServer = max(pair.countedToServer, clientIn)
            pair.countedToClient = max(pair.countedToClient, serverIn)
        }
        // Bytes taken from one side that have not yet reached the other's send queue.
        let toServerUnderway = clientIn > serverOut ? clientIn - serverOut : 0
        let toClientUnderway = serverIn > clientOut ? serverIn - clientOut : 0
        if pair.demoting {
            // The slow side keeps its kernel reader until everything for it has been sent: taking a
            // socket out of `readers` while the kernel still has bytes queued for it can leave them
            // there (its send queue's wake-ups no longer reach the kernel path).
            guard toServerUnderway == 0, toClientUnderway == 0 else { return nil }
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
            return finish(pair, demote: true)
        }
        if pair.clientEOF, !pair.shutToServer, toServerUnderway == 0 {
            shutdown(pair.server, CInt(SHUT_WR))
            pair.shutToServer = true
        }
        if pair.serverEOF, !pair.shutToClient, toClientUnderway == 0 {
            shutdown(pair.client, CInt(SHUT_WR))
            pair.shutToClient = true
        }
        if pair.shutToServer && pair.shutToClient { return finish(pair, demote: false) }
        if !pair.clientEOF, !pair.serverEOF, max(toServerUnderway, toClientUnderway) > Self.highWater {
            // Stop the kernel reading the side that sends faster than its partner takes.
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

    /// Takes a pair out; under the lock. Closed: both descriptors are closed here. Demoted: out of
    /// the maps, handed to `onEnd`.
    private func finish(_ pair: Pair, demote: Bool) -> () -> Void {
        pairs[pair.client] = nil
        pairs[pair.server] = nil
        _ = harp_watch_remove(epoll, pair.client)
        _ = harp_watch_remove(epoll, pair.server)
        var clientIn: UInt64 = 0, serverIn: UInt64 = 0, unused: UInt64 = 0
        if harp_socket_counts(pair.client, &clientIn, &unused) == 0, harp_socket_counts(pair.server, &serverIn, &unused) == 0,
           clientIn > pair.countedToServer || serverIn > pair.countedToClient {
            pair.onBytes(Int(clientIn &- min(clientIn, pair.countedToServer)), Int(serverIn &- min(serverIn, pair.countedToClient)))
        }
        if demote {
            _ = harp_sockmap_leave(&map, pair.client)
            _ = harp_sockmap_leave(&map, pair.server)
            return { pair.onEnd(.demoted(client: pair.client, server: pair.server)) }
        }
        Glibc.close(pair.client)
        Glibc.close(pair.server)
        return { pair.onEnd(.closed) }
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

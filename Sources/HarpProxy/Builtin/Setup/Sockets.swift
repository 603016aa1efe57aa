import CRelay
import Dispatch
import HarpCluster
import Logging
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The sockets the proxy makes itself, so that the relay owns what it relays: the listening
/// socket, accepted on a relay thread (`Acceptor`), and the connect to the lead master, waited
/// for on one (`LeaderConnect`). NIO runs a client's setup on a duplicate of its socket, given
/// through `ClientBootstrap.withConnectedSocket`, and closes that duplicate at the hand-over.

/// A socket descriptor with one owner at a time: taken once, or closed once (at the latest
/// when the last reference goes).
final class OwnedSocket: Sendable {
    private let descriptor: Atomic<CInt>

    init(_ fd: CInt) { descriptor = Atomic(fd) }

    /// The descriptor, now the caller's; nil if it was taken or closed already.
    func take() -> CInt? {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        return fd >= 0 ? fd : nil
    }

    func close() {
        if let fd = take() { Glibc.close(fd) }
    }

    deinit { close() }
}

/// A socket address as the kernel takes it.
struct RawSocketAddress: Sendable {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: CInt { CInt(storage.ss_family) }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }

    /// `path`, a Unix socket's; nil if it is too long for one.
    static func unix(_ path: String) -> RawSocketAddress? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        var raw = RawSocketAddress()
        withUnsafeMutableBytes(of: &raw.storage) { target in
            withUnsafeBytes(of: address) { target.copyMemory(from: $0) }
        }
        raw.length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return raw
    }

    /// `host`'s addresses for TCP: with `numericOnly`, an IP address as written or none (no
    /// resolver, nothing blocks); else through getaddrinfo, which may block.
    static func resolve(_ host: String, port: Int, numericOnly: Bool) -> Result<[RawSocketAddress], SocketSetupError> {
        var hints = addrinfo()
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (numericOnly ? AI_NUMERICHOST : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let name = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let status = getaddrinfo(name, String(port), &hints, &list)
        guard status == 0, let list else { return .failure(SocketSetupError(host: host, reason: String(cString: gai_strerror(status)))) }
        defer { freeaddrinfo(list) }
        var addresses: [RawSocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let current = entry {
            if let address = current.pointee.ai_addr, Int(current.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size {
                var raw = RawSocketAddress()
                withUnsafeMutableBytes(of: &raw.storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(current.pointee.ai_addrlen))) }
                raw.length = current.pointee.ai_addrlen
                addresses.append(raw)
            }
            entry = current.pointee.ai_next
        }
        return addresses.isEmpty ? .failure(SocketSetupError(host: host, reason: "no address")) : .success(addresses)
    }
}

/// Why a socket could not be made: its host did not resolve, or binding or listening failed.
struct SocketSetupError: Error {
    var host: String
    var reason: String
}

/// Sets an integer socket option, ignoring failure (an option a socket family lacks).
func setSocketOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) {
    var value = value
    _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
}

/// Keepalive with idle time and probe interval both `seconds`, as HARP (Go's keepalive period)
/// does: a peer gone silent is found after 10 periods (the kernel's 9 probes), not 11 minutes.
/// The same bound holds while bytes to it wait for an acknowledgement, when keepalive does not
/// probe and retransmissions alone would take about 15 minutes (TCP_USER_TIMEOUT).
func setKeepalive(_ fd: CInt, seconds: Int) {
    setSocketOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1)
    setSocketOption(fd, CInt(IPPROTO_TCP), TCP_KEEPIDLE, CInt(seconds))
    setSocketOption(fd, CInt(IPPROTO_TCP), TCP_KEEPINTVL, CInt(seconds))
    setSocketOption(fd, CInt(IPPROTO_TCP), TCP_USER_TIMEOUT, CInt(seconds * 10 * 1000))
}

// MARK: - Listening

/// A listening socket, made and bound by the proxy: close-on-exec, non-blocking,
/// `SO_REUSEADDR`, a backlog of 512.
func makeListeningSocket(host: String, port: Int) -> Result<CInt, SocketSetupError> {
    let resolved = RawSocketAddress.resolve(host, port: port, numericOnly: true).flatMapError { _ in
        RawSocketAddress.resolve(host, port: port, numericOnly: false)
    }
    let address: RawSocketAddress
    switch resolved {
    case .success(let addresses): address = addresses[0]
    case .failure(let error): return .failure(error)
    }
    let fd = socket(address.family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return .failure(SocketSetupError(host: host, reason: String(cString: strerror(errno)).lowercased())) }
    setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
    guard address.withSockaddr({ bind(fd, $0, $1) }) == 0, listen(fd, 512) == 0 else {
        let reason = String(cString: strerror(errno)).lowercased()
        close(fd)
        return .failure(SocketSetupError(host: host, reason: reason))
    }
    return .success(fd)
}

/// A listening socket whose clients a relay thread accepts, each handed to `accepted` there
/// (non-blocking, close-on-exec, TCP_NODELAY). Out of descriptors (EMFILE and the like), it stops
/// accepting for 100 ms rather than spin, as HAProxy does, and says so at most once a minute.
final class Acceptor: RelayWatch, @unchecked Sendable {
    let fd: CInt
    var key: UInt64 = 0
    private(set) var deadline: NIODeadline?
    private let relay: RelayLoop
    private let accepted: @Sendable (CInt) -> Void
    private let logger: Logger
    private let closedPromise: EventLoopPromise<Void>
    // On the relay thread.
    private var closed = false
    private var limitLogged: NIODeadline?

    /// Takes `fd` (listening); `closed` completes on `loop` once it is closed.
    init(fd: CInt, relays: RelayGroup, loop: any EventLoop, logger: Logger, accepted: @escaping @Sendable (CInt) -> Void) {
        self.fd = fd
        relay = relays.pick()
        self.accepted = accepted
        self.logger = logger
        closedPromise = loop.makePromise()
    }

    func start() { relay.send(.watch(self, events: EPOLLIN.rawValue)) }

    /// Stops accepting and closes the socket; clients accepted already are not touched.
    func close() -> EventLoopFuture<Void> {
        relay.send(.unwatch(self))
        return closedPromise.futureResult
    }

    func watching(on loop: RelayLoop) {}

    func failedToWatch(_ error: CInt) {
        logger.error("cannot accept clients: epoll_ctl failed", metadata: ["error": "\(String(cString: strerror(error)))"])
    }

    func handle(_ events: UInt32, on loop: RelayLoop) {
        // Level-triggered: a batch at a time, the rest at the next turn.
        for _ in 0..<64 {
            let client = harp_relay_accept(fd)
            if client >= 0 {
                setSocketOption(client, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
                accepted(client)
                continue
            }
            switch errno {
            case EAGAIN: return
            case EINTR, ECONNABORTED, EPROTO, EPERM: continue
            default:
                let error = errno
                let now = NIODeadline.now()
                if limitLogged.map({ now - $0 > .seconds(60) }) ?? true {
                    logger.error("cannot accept a client: pausing the listener for 100 ms", metadata: ["error": "\(String(cString: strerror(error)))"])
                    limitLogged = now
                }
                deadline = now + .milliseconds(100)
                loop.modify(self, events: 0)
                return
            }
        }
    }

    func expired(on loop: RelayLoop) {
        deadline = nil
        loop.modify(self, events: EPOLLIN.rawValue)
    }

    func unwatched() { closeOnce() }
    func abandoned() { closeOnce() }

    private func closeOnce() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
        closedPromise.succeed(())
    }
}

// MARK: - Connecting

/// One connect to the lead master, made by the proxy: non-blocking, each of its addresses in
/// turn, all within `connect_timeout`; the wait for each runs on a relay thread. Its future (on
/// the client's loop) gives the connected socket, or why there is none.
final class LeaderConnect: RelayWatch, @unchecked Sendable {
    enum Failure: Error, Equatable {
        /// Nothing listens there (ECONNREFUSED), or no socket file (ENOENT), or a Unix socket's
        /// backlog is full (EAGAIN): its postmaster is stopping, starting or overwhelmed.
        case refused(CInt)
        case failed(CInt)
        case timedOut
        case unresolved(String)
        case cancelled

        /// The reason in a few words a client can show ("Connection refused").
        func reason(timeout: TimeAmount) -> String {
            switch self {
            case .refused(let code), .failed(let code): return String(cString: strerror(code))
            case .timedOut: return "no answer within \(timeout.nanoseconds / 1_000_000) ms (timeout)"
            case .unresolved(let reason): return reason
            case .cancelled: return "given up"
            }
        }

        var isRefused: Bool { if case .refused = self { return true } else { return false } }
    }

    let deadline: NIODeadline?
    var key: UInt64 = 0
    private let relay: RelayLoop
    private let keepaliveSeconds: Int
    private let promise: EventLoopPromise<CInt>
    private let cancelled = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    // One step at a time: on the client's loop, a resolver thread, or the relay thread.
    private var addresses: [RawSocketAddress] = []
    private var next = 0
    private var firstFailure: Failure?
    private(set) var fd: CInt = -1
    /// In the relay thread's set (relay thread only).
    private var watched = false

    var futureResult: EventLoopFuture<CInt> { promise.futureResult }

    private init(relays: RelayGroup, loop: any EventLoop, timeout: TimeAmount, keepaliveSeconds: Int) {
        relay = relays.pick()
        deadline = .now() + timeout
        self.keepaliveSeconds = keepaliveSeconds
        promise = loop.makePromise()
    }

    /// Starts connecting to `address` (a host's name resolved off the loop, an IP address or a
    /// Unix socket's directory at once).
    static func start(_ address: DatabaseAddress, relays: RelayGroup, loop: any EventLoop, timeout: TimeAmount,
                      keepaliveSeconds: Int) -> LeaderConnect {
        let connect = LeaderConnect(relays: relays, loop: loop, timeout: timeout, keepaliveSeconds: keepaliveSeconds)
        switch address {
        case .tcp(let host, let port):
            if case .success(let addresses) = RawSocketAddress.resolve(host, port: port, numericOnly: true) {
                connect.addresses = addresses
                connect.tryNext()
            } else {
                DispatchQueue.global().async {
                    switch RawSocketAddress.resolve(host, port: port, numericOnly: false) {
                    case .success(let addresses):
                        connect.addresses = addresses
                        connect.tryNext()
                    case .failure(let error):
                        connect.finish(.failure(.unresolved("cannot resolve \(error.host): \(error.reason)")))
                    }
                }
            }
        case .unixSocket(let directory, let port):
            let path = "\(directory)/.s.PGSQL.\(port)"
            if let address = RawSocketAddress.unix(path) {
                connect.addresses = [address]
                connect.tryNext()
            } else {
                connect.finish(.failure(.unresolved("socket path too long: \(path)")))
            }
        }
        return connect
    }

    /// Gives the connect up (the client starts again, or is gone): its socket is closed.
    func cancel() {
        guard !cancelled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        relay.send(.unwatch(self))
    }

    private func note(_ failure: Failure) {
        if firstFailure == nil { firstFailure = failure }
    }

    private func tryNext() {
        while next < addresses.count {
            if cancelled.load(ordering: .acquiring) { return finish(.failure(.cancelled)) }
            if let deadline, NIODeadline.now() >= deadline { return finish(.failure(firstFailure ?? .timedOut)) }
            let address = addresses[next]
            next += 1
            let socket = Glibc.socket(address.family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
            guard socket >= 0 else {
                note(.failed(errno))
                continue
            }
            if address.family != AF_UNIX {
                setSocketOption(socket, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
                setKeepalive(socket, seconds: keepaliveSeconds)
            }
            if address.withSockaddr({ Glibc.connect(socket, $0, $1) }) == 0 { return finish(.success(socket)) }
            let error = errno
            if error == EINPROGRESS {
                // On loopback (and often a local network) the handshake is over by now: a look
                // saves the relay thread's two wake-ups.
                var look = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                if poll(&look, 1, 0) == 1 {
                    var status: CInt = 0
                    var length = socklen_t(MemoryLayout<CInt>.size)
                    if getsockopt(socket, SOL_SOCKET, SO_ERROR, &status, &length) != 0 { status = errno }
                    if status == 0 { return finish(.success(socket)) }
                    Glibc.close(socket)
                    note(status == ECONNREFUSED ? .refused(status) : .failed(status))
                    continue
                }
                fd = socket
                relay.send(.watch(self, events: EPOLLOUT.rawValue))
                return
            }
            Glibc.close(socket)
            let refused = error == ECONNREFUSED || error == ENOENT || (error == EAGAIN && address.family == AF_UNIX)
            note(refused ? .refused(error) : .failed(error))
        }
        finish(.failure(firstFailure ?? .failed(EADDRNOTAVAIL)))
    }

    private func finish(_ result: Result<CInt, Failure>) {
        guard !finished.exchange(true, ordering: .acquiringAndReleasing) else {
            if case .success(let socket) = result { Glibc.close(socket) }
            return
        }
        switch result {
        case .success(let socket): promise.succeed(socket)
        case .failure(let failure): promise.fail(failure)
        }
    }

    /// Closes the socket of the attempt under way (relay thread).
    private func drop(_ loop: RelayLoop?) {
        loop?.stopWatching(self)
        watched = false
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    // MARK: RelayWatch (on the relay thread)

    func watching(on loop: RelayLoop) {
        watched = true
        if cancelled.load(ordering: .acquiring) {  // given up before it was watched
            drop(loop)
            finish(.failure(.cancelled))
        }
    }

    func failedToWatch(_ error: CInt) {
        drop(nil)
        note(.failed(error))
        tryNext()
    }

    func handle(_ events: UInt32, on loop: RelayLoop) {
        var error: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = errno }
        if error == 0, events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { error = ECONNREFUSED }
        if error == 0 {
            loop.stopWatching(self)
            watched = false
            let socket = fd
            fd = -1
            return finish(.success(socket))
        }
        drop(loop)
        note(error == ECONNREFUSED ? .refused(error) : .failed(error))
        tryNext()
    }

    func expired(on loop: RelayLoop) {
        guard watched else { return }
        drop(loop)
        finish(.failure(firstFailure ?? .timedOut))
    }

    func unwatched() {
        guard watched else { return }  // not watched yet: `watching` sees the cancel
        drop(nil)
        finish(.failure(.cancelled))
    }

    func abandoned() {
        drop(nil)
        finish(.failure(.cancelled))
    }
}

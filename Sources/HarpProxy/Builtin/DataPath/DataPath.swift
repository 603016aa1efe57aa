import Logging
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The data path of an established session: takes a client's channel and its lead master's over
/// once the setup is done, and ends a session the proxy cuts. The mode and the setup know nothing
/// of how bytes pass. Two are built in: the relay (`RelayDataPath`, the default), and the NIO
/// glue (`GlueDataPath`), which the relay falls back to for a socket it cannot take over.
protocol DataPath: Sendable {
    /// Takes the session over, on the client's loop (both channels are on it). `kept`, what the
    /// client sent during setup, goes to the lead master first. Throws if it cannot; the caller
    /// then closes both. The caller records the session, then calls its `start()`.
    func join(client: any Channel, server: any Channel, kept: ByteBuffer?) throws -> any DataPathSession

    /// Ends a session joined but not yet recorded by the mode, on the client's loop: `error` (an
    /// ErrorResponse) first where the session sits between two of the lead master's messages,
    /// then both sides close. A recorded session is cut through `DataPathSession.cut`.
    func cut(_ client: any Channel, with error: ByteBuffer)
}

/// One established session, as the mode keeps it.
protocol DataPathSession: AnyObject, Sendable {
    /// Bytes pass from here on.
    func start()
    /// Ends the session, from any thread: `error` first where the client sits between two of
    /// the lead master's messages, then both sides close.
    func cut(with error: ByteBuffer)
    /// Completes once both sides are closed.
    var closed: EventLoopFuture<Void> { get }
}

/// Bytes pass through NIO: a `GlueHandler` on each channel, writing what one reads to the
/// other, with the session's message boundaries tracked for a cut.
struct GlueDataPath: DataPath {
    let traffic: Traffic

    final class Session: DataPathSession {
        let client: any Channel
        let server: any Channel
        init(client: any Channel, server: any Channel) {
            self.client = client
            self.server = server
        }
        func start() {}
        func cut(with error: ByteBuffer) {
            // The lead-master side only after the client's cut: closed first, it would have the
            // glue close the client before the message is written.
            client.eventLoop.execute { [client, server] in
                GlueHandler.cut(client, with: error)
                server.close(promise: nil)
            }
        }
        var closed: EventLoopFuture<Void> { client.closeFuture.and(server.closeFuture).map { _ in } }
    }

    func join(client: any Channel, server: any Channel, kept: ByteBuffer?) throws -> any DataPathSession {
        let framing = SessionFraming()
        let (clientSide, serverSide) = GlueHandler.matchedPair(traffic: traffic, framing: framing)
        try server.pipeline.syncOperations.addHandler(serverSide)
        try client.pipeline.syncOperations.addHandler(clientSide)
        if let kept, kept.readableBytes > 0 {
            framing.clientSent(kept)
            server.writeAndFlush(kept, promise: nil)
        }
        return Session(client: client, server: server)
    }

    func cut(_ client: any Channel, with error: ByteBuffer) {
        GlueHandler.cut(client, with: error)
    }
}

/// Bytes pass on the relay's own threads (`Relay.swift`): at join, the sockets are taken out of
/// NIO (a duplicate of each descriptor is kept, NIO's channels are closed at `start`), and NIO
/// has no further part in the session.
///
/// NIO has no public way to give a socket up, so its descriptor is read by reflection and
/// checked against the channel's own addresses (`getsockname`, `getpeername`). If either check
/// fails, which a future NIO could make happen, the session stays on the glue instead, and the
/// first such fallback is logged.
final class RelayDataPath: DataPath {
    let traffic: Traffic
    let glue: GlueDataPath
    let logger: Logger
    let relays: RelayGroup
    private let fallbackLogged = Atomic<Bool>(false)

    init(traffic: Traffic, relays: RelayGroup, logger: Logger) {
        self.traffic = traffic
        self.logger = logger
        self.relays = relays
        glue = GlueDataPath(traffic: traffic)
    }

    private func fallBack(client: any Channel, server: any Channel, kept: ByteBuffer?) throws -> any DataPathSession {
        if !fallbackLogged.exchange(true, ordering: .relaxed) {
            logger.warning("the relay cannot take a session's sockets over from NIO: sessions pass through NIO instead (more CPU per byte)",
                           metadata: ["client": "\(client.remoteAddress.map { "\($0)" } ?? "?")", "leader": "\(server.remoteAddress.map { "\($0)" } ?? "?")"])
        }
        return try glue.join(client: client, server: server, kept: kept)
    }

    final class Handover: DataPathSession, @unchecked Sendable {
        let relay: RelaySession
        /// NIO's channels, closed at `start` (their descriptors; the relay has duplicates).
        private let channels: [any Channel]
        init(relay: RelaySession, channels: [any Channel]) {
            self.relay = relay
            self.channels = channels
        }
        func start() {
            for channel in channels { channel.close(promise: nil) }
            relay.start()
        }
        func cut(with error: ByteBuffer) { relay.cut(with: error) }
        var closed: EventLoopFuture<Void> { relay.closed }
    }

    func join(client: any Channel, server: any Channel, kept: ByteBuffer?) throws -> any DataPathSession {
        guard let clientFD = Self.takeDescriptor(of: client) else { return try fallBack(client: client, server: server, kept: kept) }
        guard let serverFD = Self.takeDescriptor(of: server) else {
            Glibc.close(clientFD)
            return try fallBack(client: client, server: server, kept: kept)
        }
        let framing = SessionFraming()
        var keptBytes: [UInt8]?
        if let kept, kept.readableBytes > 0 {
            framing.clientSent(kept)
            keptBytes = Array(kept.readableBytesView)
        }
        let session = RelaySession(client: clientFD, server: serverFD, kept: keptBytes, framing: framing, traffic: traffic,
                                   relays: relays, closed: client.eventLoop.makePromise())
        return Handover(relay: session, channels: [client, server])
    }

    func cut(_ client: any Channel, with error: ByteBuffer) {
        glue.cut(client, with: error)
    }

    /// A duplicate of `channel`'s socket descriptor (close-on-exec, non-blocking as NIO made
    /// it), or nil if it cannot be found and checked.
    static func takeDescriptor(of channel: any Channel) -> CInt? {
        guard channel.isActive, let fd = reflectDescriptor(channel), fd >= 0,
              matches(fd, channel.localAddress, local: true), matches(fd, channel.remoteAddress, local: false) else { return nil }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? copy : nil
    }

    /// The `descriptor` of the channel's `socket`, wherever in the class chain they are.
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

    /// True if `fd`'s own (or peer) address is `address`: same family, and the same port and
    /// IP address, or the same socket path.
    private static func matches(_ fd: CInt, _ address: SocketAddress?, local: Bool) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                local ? getsockname(fd, $0, &length) : getpeername(fd, $0, &length)
            }
        }
        guard status == 0 else { return false }
        guard let address else {
            // NIO reports no address for the unnamed end of a Unix socket.
            return storage.ss_family == sa_family_t(AF_UNIX) && length <= socklen_t(MemoryLayout<sa_family_t>.size + 1)
        }
        switch address {
        case .v4(let expected):
            guard storage.ss_family == sa_family_t(AF_INET) else { return false }
            let actual = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            return actual.sin_port == expected.address.sin_port && actual.sin_addr.s_addr == expected.address.sin_addr.s_addr
        case .v6(let expected):
            guard storage.ss_family == sa_family_t(AF_INET6) else { return false }
            let actual = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            var expectedAddress = expected.address
            var actualAddress = actual
            return actual.sin6_port == expected.address.sin6_port
                && memcmp(&actualAddress.sin6_addr, &expectedAddress.sin6_addr, MemoryLayout<in6_addr>.size) == 0
        case .unixDomainSocket:
            guard storage.ss_family == sa_family_t(AF_UNIX) else { return false }
            // The path a client connected to, or the unnamed local end: as NIO reports it.
            let actual = withUnsafeBytes(of: &storage) { raw -> String in
                let pathOffset = MemoryLayout<sa_family_t>.size
                let bytes = raw[pathOffset..<max(pathOffset, Int(length))]
                return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            return actual == (address.pathname ?? "")
        }
    }
}

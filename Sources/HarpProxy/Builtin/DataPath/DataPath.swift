import NIOCore
import Synchronization

/// The data path of an established session: takes a client's socket and its lead master's
/// once the setup is done, and ends a session the proxy cuts. The mode and the setup know
/// nothing of how bytes pass; the relay (`Relay.swift`) passes them.
protocol DataPath: Sendable {
    /// Takes an established session over: both sockets (non-blocking, the path's from now on),
    /// and `kept`, what the client sent during setup, which goes to the lead master first.
    /// `closed` completes on `loop`. Nothing passes before `start()`.
    func join(client: CInt, server: CInt, kept: ByteBuffer?, loop: any EventLoop) -> any DataPathSession
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

/// Bytes one instance has passed each way, for /metrics.
final class Traffic: Sendable {
    let toServer = Atomic<Int>(0)
    let toClient = Atomic<Int>(0)
}

/// Sessions pass on the relay's own threads: NIO has no part in them.
struct RelayDataPath: DataPath {
    let traffic: Traffic
    let relays: RelayGroup

    func join(client: CInt, server: CInt, kept: ByteBuffer?, loop: any EventLoop) -> any DataPathSession {
        let framing = SessionFraming()
        var keptBytes: [UInt8]?
        if let kept, kept.readableBytes > 0 {
            framing.clientSent(kept)
            keptBytes = Array(kept.readableBytesView)
        }
        return RelaySession(client: client, server: server, kept: keptBytes, framing: framing, traffic: traffic,
                            relays: relays, closed: loop.makePromise())
    }
}

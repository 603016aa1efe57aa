import HarpConfig
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One builtin instance's listening socket: bound where the plan says, moved when the plan
/// moves it, and retried every second while the address is in use. Existing connections stay
/// when it moves; the old listener keeps serving until a new one is bound. Confined to `loop`
/// (hence unchecked Sendable: its own closures run there).
final class Listener: @unchecked Sendable {
    private struct Address: Equatable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    private let loop: any EventLoop
    private let group: any EventLoopGroup
    private let logger: Logger
    /// Sets up each accepted client's pipeline.
    private let accept: @Sendable (any Channel) throws -> Void

    private var channel: (any Channel)?
    private var listeningOn: Address?
    private var binding: Address?
    private var failureLogged: Address?
    private var retry: Scheduled<Void>?
    private var wanted: InstancePlan?
    private var stopped = false
    /// Why the address the plan asks for is not held (another instance or process has it).
    private(set) var error: String?

    init(loop: any EventLoop, group: any EventLoopGroup, logger: Logger, accept: @escaping @Sendable (any Channel) throws -> Void) {
        self.loop = loop
        self.group = group
        self.logger = logger
        self.accept = accept
    }

    var status: ListenerStatus { ListenerStatus(listening: listeningOn?.description, error: error) }

    /// Binds the listener `plan` asks for, unless the host found it is another instance's.
    func reconcile(_ plan: InstancePlan) {
        guard !stopped else { return }
        wanted = plan
        let address = Address(host: plan.listenAddress, port: plan.listenPort)
        if address == listeningOn || plan.listenBlocked != nil {
            // Back to where it listens, or the address is another instance's (the host logged
            // it): forget any bind under way for another address; keep the listener held.
            binding = nil
            retry?.cancel()
            retry = nil
            failureLogged = nil
            error = plan.listenBlocked
            return
        }
        guard address != binding else { return }
        retry?.cancel()
        retry = nil
        binding = address
        if let old = channel, listeningOn?.port == address.port {
            // Another address on the same port: the old listener holds the port, so it goes first.
            // Established connections stay; only new ones wait for the new bind.
            old.close(promise: nil)
            channel = nil
            listeningOn = nil
        }
        let accept = self.accept
        ServerBootstrap(group: loop, childGroup: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try accept(channel) } }
            .bind(host: address.host, port: address.port)
            .hop(to: loop)
            .whenComplete { result in self.bound(address, result) }
    }

    private func bound(_ address: Address, _ result: Result<any Channel, any Error>) {
        guard binding == address, !stopped else {
            if case .success(let channel) = result { channel.close(promise: nil) }
            return
        }
        binding = nil
        switch result {
        case .success(let new):
            let old = channel
            channel = new
            listeningOn = address
            failureLogged = nil
            error = nil
            old?.close(promise: nil)
            logger.info("listening", metadata: ["listen": "\(address)"])
        case .failure(let failure):
            error = "cannot listen on \(address): \(Self.reason(failure))"
            if failureLogged != address {
                logger.error("cannot listen; retrying every second", metadata: ["listen": "\(address)", "error": "\(failure)"])
                failureLogged = address
            }
            retry = loop.scheduleTask(in: .seconds(1)) {
                self.retry = nil
                if let plan = self.wanted { self.reconcile(plan) }
            }
        }
    }

    /// `address already in use`, rather than NIO's `bind(descriptor:ptr:bytes:): ... (errno: 98)`.
    private static func reason(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        return "\(error)"
    }

    /// Stops accepting; the future completes once the socket is closed.
    func close() -> EventLoopFuture<Void> {
        stopped = true
        retry?.cancel()
        guard let channel else { return loop.makeSucceededVoidFuture() }
        channel.close(promise: nil)
        return channel.closeFuture
    }
}

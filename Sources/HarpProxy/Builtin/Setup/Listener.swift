import HarpConfig
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// One builtin instance's listening socket: bound where the plan says, moved when the plan
/// moves it, and retried every second while the address is in use. Existing connections stay
/// when it moves; the old listener keeps serving until a new one is bound. The socket is the
/// proxy's own, its clients accepted on a relay thread (`Acceptor`). Confined to `loop` (hence
/// unchecked Sendable: its own closures run there).
final class Listener: @unchecked Sendable {
    private struct Address: Equatable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    private let loop: any EventLoop
    private let relays: RelayGroup
    private let logger: Logger
    /// Takes each accepted client's socket (on a relay thread).
    private let accept: @Sendable (CInt) -> Void

    private var acceptor: Acceptor?
    private var listeningOn: Address?
    private var binding: Address?
    private var failureLogged: Address?
    private var retry: Scheduled<Void>?
    private var wanted: InstancePlan?
    private var stopped = false
    /// Why the address the plan asks for is not held (another instance or process has it).
    private(set) var error: String?

    init(loop: any EventLoop, relays: RelayGroup, logger: Logger, accept: @escaping @Sendable (CInt) -> Void) {
        self.loop = loop
        self.relays = relays
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
        var ready = loop.makeSucceededVoidFuture()
        if let old = acceptor, listeningOn?.port == address.port {
            // Another address on the same port: the old listener holds the port, so it goes first.
            // Established connections stay; only new ones wait for the new bind.
            ready = old.close()
            acceptor = nil
            listeningOn = nil
        }
        ready.whenComplete { _ in
            guard self.binding == address, !self.stopped else { return }  // moved on meanwhile
            self.bound(address, makeListeningSocket(host: address.host, port: address.port))
        }
    }

    private func bound(_ address: Address, _ result: Result<CInt, SocketSetupError>) {
        guard binding == address, !stopped else {
            if case .success(let fd) = result { Glibc.close(fd) }
            return
        }
        binding = nil
        switch result {
        case .success(let fd):
            let old = acceptor
            let new = Acceptor(fd: fd, relays: relays, loop: loop, logger: logger, accepted: accept)
            acceptor = new
            new.start()
            listeningOn = address
            failureLogged = nil
            error = nil
            _ = old?.close()
            logger.info("listening", metadata: ["listen": "\(address)"])
        case .failure(let failure):
            error = "cannot listen on \(address): \(failure.reason)"
            if failureLogged != address {
                logger.error("cannot listen; retrying every second", metadata: ["listen": "\(address)", "error": "\(failure.reason)"])
                failureLogged = address
            }
            retry = loop.scheduleTask(in: .seconds(1)) {
                self.retry = nil
                if let plan = self.wanted { self.reconcile(plan) }
            }
        }
    }

    /// Stops accepting; the future completes once the socket is closed.
    func close() -> EventLoopFuture<Void> {
        stopped = true
        retry?.cancel()
        guard let acceptor else { return loop.makeSucceededVoidFuture() }
        self.acceptor = nil
        return acceptor.close()
    }
}

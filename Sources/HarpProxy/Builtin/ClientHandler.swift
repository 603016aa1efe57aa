import HarpCluster
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One client's way in: admission, connecting to the lead master, then handing the channel over
/// to a `GlueHandler` pair. Until then the client's bytes (its startup packet, or an SSLRequest)
/// are kept and passed on unchanged once the lead master is connected.
///
/// A client that cannot be served gets an ErrorResponse that libpq shows: an SSLRequest or
/// GSSENCRequest is answered 'N' first, then the startup message is read and the error sent.
final class ClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State { case admitting, connecting, joining, refusing, handedOver }

    /// More than this before the lead master is connected is not a PostgreSQL client.
    static let maximumBuffered = 64 * 1024
    /// How long a refused client may take to send its startup message before it is just closed.
    static let refusalTimeout: TimeAmount = .seconds(10)

    private let mode: BuiltinMode
    private var state = State.admitting
    private var buffer: ByteBuffer?
    private var refusal: Refusal?
    private var inputClosedWhileJoining = false
    private var context: ChannelHandlerContext?
    /// Which connect is the current one: one given up (`startAgain`) may still finish, and is
    /// then closed unused.
    private var attempt = 0
    /// The lead master being connected to, and the admission's count of moves.
    private var connectingServer: (any Channel)?
    private var admittedGeneration: UInt64 = 0
    /// The latest move of the lead master this client was told of: an admission given before it
    /// (on its way here when the word came) is not used.
    private var movedAt: UInt64 = 0

    init(mode: BuiltinMode) { self.mode = mode }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        admitted(context: context, mode.admit(context.channel))
        context.fireChannelActive()
    }

    private func admitted(context: ChannelHandlerContext, _ admission: EventLoopFuture<BuiltinMode.Admission>) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        admission.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            switch result {
            case .success(let admission): handler.connect(context: context, admission)
            case .failure(let error): handler.refuse(context: context, error as? Refusal ?? .shuttingDown)
            }
        }
    }

    /// What a client still connecting does when its lead master moves (`startAgain`).
    enum Restart { case startsAgain, beingRefused, mustClose }

    /// The lead master moved after `movedAt - 1`, before this client was joined to it: nothing
    /// it sent has been passed on, so it drops the connect under way and asks again. A client
    /// being refused (its lead master did not answer) is left to read its error. One that can no
    /// longer start again (it is joined, or being joined) must be closed instead.
    func startAgain(movedAt generation: UInt64) -> Restart {
        guard let context else { return .mustClose }
        movedAt = max(movedAt, generation)
        switch state {
        case .admitting:
            return .startsAgain  // `connect` looks at `movedAt`
        case .refusing:
            return .beingRefused
        case .connecting:
            guard admittedGeneration < generation else { return .startsAgain }
            restart(context: context)
            return .startsAgain
        case .joining, .handedOver:
            return .mustClose
        }
    }

    private func restart(context: ChannelHandlerContext) {
        attempt += 1
        connectingServer?.close(promise: nil)
        connectingServer = nil
        state = .admitting
        admitted(context: context, mode.readmit(context.channel))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if buffer == nil { buffer = bytes } else { buffer!.writeBuffer(&bytes) }
        if state == .refusing {
            answerRefusedClient(context: context)
        } else if buffer!.readableBytes > Self.maximumBuffered {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// A client that hangs up before it is joined to the lead master is gone: close it, or it
    /// would sit half-closed forever (remote half-closure is on for the data path's sake).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            // Joining or joined in the kernel: the end of input is the kernel path's to pass on,
            // or, if the join falls back to user space, the glue's (see `fallBackToGlue`).
            if state == .joining || state == .handedOver {
                inputClosedWhileJoining = true
                return
            }
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Connect

    private func connect(context: ChannelHandlerContext, _ admission: BuiltinMode.Admission) {
        guard state == .admitting, context.channel.isActive else { return }
        state = .connecting
        guard admission.generation >= movedAt else {
            restart(context: context)
            return
        }
        attempt += 1
        let thisAttempt = attempt
        admittedGeneration = admission.generation
        let keepalive = admission.keepaliveSeconds
        _ = context.channel.setOption(.socketOption(.so_keepalive), value: 1)
        // Idle time and probe interval both `keepalive`, as HARP (Go's keepalive period) does: a
        // peer gone silent is found after 10 periods (the kernel's 9 probes), not 11 minutes.
        _ = context.channel.setOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: keepalive)
        _ = context.channel.setOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: keepalive)

        var bootstrap = ClientBootstrap(group: context.eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            // For the kernel path nothing is read from the lead master in user space; what NIO
            // reads anyway (an answer and a FIN, read at end of input) is kept by a ServerHold.
            .channelOption(.autoRead, value: admission.kernel == nil)
            .connectTimeout(admission.connectTimeout)
        let holding = admission.kernel != nil
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        bootstrap = bootstrap.channelInitializer { channel in
            // On the client's loop (the bootstrap's group is that loop alone). A name may be
            // tried at several addresses, each a channel; the last one is kept for `restart`.
            guard handler.value.attempt == thisAttempt else { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
            handler.value.connectingServer = channel
            return channel.eventLoop.makeCompletedFuture {
                if holding { try channel.pipeline.syncOperations.addHandler(ServerHold()) }
            }
        }
        let connecting: EventLoopFuture<any Channel>
        switch admission.target.address {
        case .tcp(let host, let port):
            bootstrap = bootstrap
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .channelOption(.socketOption(.so_keepalive), value: 1)
                .channelOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: keepalive)
                .channelOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: keepalive)
            // An address as written: no resolver (NIO's runs getaddrinfo off the loop and
            // races A and AAAA, a few thread hand-offs per connection); a name: resolved.
            if let address = try? SocketAddress(ipAddress: host, port: port) {
                connecting = bootstrap.connect(to: address)
            } else {
                connecting = bootstrap.connect(host: host, port: port)
            }
        case .unixSocket(let directory, let port):
            connecting = bootstrap.connect(unixDomainSocketPath: "\(directory)/.s.PGSQL.\(port)")
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let mode = self.mode
        connecting.whenComplete { result in
            let (handler, context) = bound.value
            guard thisAttempt == handler.attempt else {
                if case .success(let server) = result { server.close(promise: nil) }  // given up
                return
            }
            handler.connectingServer = nil
            switch result {
            case .success(let server):
                guard context.channel.isActive else {
                    server.close(promise: nil)
                    context.close(promise: nil)
                    return
                }
                guard mode.attach(context.channel, server: server, target: admission.target) else {
                    // The lead master moved during the connect: nothing was sent to it.
                    server.close(promise: nil)
                    handler.restart(context: context)
                    return
                }
                if let kernel = admission.kernel {
                    handler.join(context: context, server: server, kernel: kernel, target: admission.target)
                } else {
                    handler.handOver(context: context, to: server, framing: SessionFraming())
                }
            case .failure(let error):
                guard mode.routeGeneration == admission.generation else {
                    // The old lead master refused or did not answer, and it is no longer the
                    // one: the client goes to the new one (or waits for one) instead.
                    handler.restart(context: context)
                    return
                }
                let reason = Self.connectFailure(error, timeout: admission.connectTimeout)
                mode.connectFailed(reason, target: admission.target)
                handler.refuse(context: context, .cannotConnect(leader: "\(admission.target)", error: reason))
            }
        }
    }

    /// The reason in a few words a client can show ("Connection refused"), not NIO's error dump.
    static func connectFailure(_ error: any Error, timeout: TimeAmount) -> String {
        var underlying = error
        if let connection = error as? NIOConnectionError, let first = connection.connectionErrors.first?.error {
            underlying = first
        }
        if let io = underlying as? IOError { return String(cString: strerror(io.errnoCode)) }
        if case ChannelError.connectTimeout = underlying { return "no answer within \(timeout.nanoseconds / 1_000_000) ms (timeout)" }
        return "\(underlying)"
    }

    /// `data_path: kernel`: the kept bytes go first, written here; then the two sockets are joined
    /// in the kernel, which also passes on, in order, whatever arrived since (nothing more is read
    /// here), and the NIO channels let go of their descriptors. If the join cannot be made, the
    /// glue takes over as usual.
    private func join(context: ChannelHandlerContext, server: any Channel, kernel: KernelDataPath, target: LeaderTarget) {
        state = .joining
        _ = try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        if var kept = buffer, kept.readableBytes > 0 {
            // Bytes read before reading stopped may still come in while this write is under way;
            // they are kept and written on the next round.
            buffer = nil
            let chunk = kept.readSlice(length: kept.readableBytes)!
            server.writeAndFlush(chunk).hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = bound.value
                guard case .success = result, context.channel.isActive, server.isActive else {
                    server.close(promise: nil)
                    context.close(promise: nil)
                    return
                }
                handler.join(context: context, server: server, kernel: kernel, target: target)
            }
            return
        }
        // The lead master already answered (an error and a FIN, say) and NIO read it: no join,
        // the glue passes it on.
        let hold = try? server.pipeline.syncOperations.handler(type: ServerHold.self)
        guard let hold, !hold.heldAnything, let clientFD = ChannelDescriptor.of(context.channel),
              let serverFD = ChannelDescriptor.of(server) else {
            fallBackToGlue(context: context, server: server)
            return
        }
        let client = fcntl(clientFD, F_DUPFD_CLOEXEC, 0)
        let leader = fcntl(serverFD, F_DUPFD_CLOEXEC, 0)
        guard client >= 0, leader >= 0 else {
            if client >= 0 { close(client) }
            if leader >= 0 { close(leader) }
            fallBackToGlue(context: context, server: server)
            return
        }
        // The join, here on the client's loop, in one step with the last looks at what NIO read
        // (nothing can be read in between); the instance's loop then takes the pair on, or closes
        // it if the lead master moved meanwhile.
        let callbacks = mode.pairCallbacks(for: context.channel)
        switch kernel.join(client: client, server: leader, onBytes: callbacks.onBytes, onEnd: callbacks.onEnd) {
        case .notJoined(let error):
            close(client)
            close(leader)
            mode.joinFailed(error, broken: false)
            fallBackToGlue(context: context, server: server)
        case .broken(let error):
            mode.joinFailed(error, broken: true)
            server.close(promise: nil)
            context.close(promise: nil)
        case .joined(let pair):
            state = .handedOver
            // Registered first (the accepted channel's close then reaches the instance's loop
            // after it), then NIO's descriptors go at once: the kernel path holds the sockets
            // through the duplicates, and NIO must not read them or take their errors.
            _ = mode.register(context.channel, target: target, path: kernel, pair: pair)
            server.close(promise: nil)
            context.close(promise: nil)
        }
    }

    private func fallBackToGlue(context: ChannelHandlerContext, server: any Channel) {
        guard context.channel.isActive, server.isActive else {
            server.close(promise: nil)
            context.close(promise: nil)
            return
        }
        let client = context.channel
        let inputClosed = inputClosedWhileJoining
        // Bytes may have passed in the kernel (or been written during the join): boundaries
        // unknown, so no framing, and a cut adds nothing.
        handOver(context: context, to: server, framing: nil)
        // NIO says "input closed" once: if it came while joining, the glue hears it now.
        if inputClosed { client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        // What the hold kept goes to the glue now, in order, before anything read after.
        if let hold = try? server.pipeline.syncOperations.handler(type: ServerHold.self) {
            hold.release()
        }
        _ = try? server.syncOptions?.setOption(.autoRead, value: true)
        _ = try? client.syncOptions?.setOption(.autoRead, value: true)
    }

    /// Joins the client to the lead master: the kept bytes go first, then the glue takes over.
    private func handOver(context: ChannelHandlerContext, to server: any Channel, framing: SessionFraming?) {
        let (clientSide, serverSide) = GlueHandler.matchedPair(traffic: mode.traffic, framing: framing)
        do {
            try server.pipeline.syncOperations.addHandler(serverSide)
            try context.pipeline.syncOperations.addHandler(clientSide)
        } catch {
            server.close(promise: nil)
            context.close(promise: nil)
            return
        }
        state = .handedOver
        if let kept = buffer, kept.readableBytes > 0 {
            framing?.clientSent(kept)
            server.writeAndFlush(kept, promise: nil)
        }
        buffer = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    // MARK: - Refuse

    private func refuse(context: ChannelHandlerContext, _ refusal: Refusal) {
        guard state == .admitting || state == .connecting, context.channel.isActive else { return }
        state = .refusing
        self.refusal = refusal
        context.eventLoop.scheduleTask(in: Self.refusalTimeout) { [channel = context.channel] in channel.close(promise: nil) }
        answerRefusedClient(context: context)
    }

    /// Walks the client's startup: 'N' to an encryption request, the error after the startup message.
    private func answerRefusedClient(context: ChannelHandlerContext) {
        guard var bytes = buffer, let refusal else { return }
        while true {
            switch PostgresWire.nextStartupStep(&bytes) {
            case .needMore:
                buffer = bytes
                return
            case .encryptionRequest:
                var no = context.channel.allocator.buffer(capacity: 1)
                no.writeString("N")
                context.writeAndFlush(wrapOutboundOut(no), promise: nil)
            case .startup:
                buffer = nil
                let error = PostgresWire.errorResponse(sqlstate: refusal.sqlstate, message: refusal.message, allocator: context.channel.allocator)
                context.writeAndFlush(wrapOutboundOut(error)).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
                return
            case .close:
                buffer = nil
                context.close(promise: nil)
                return
            }
        }
    }
}

/// On the lead master's channel while a kernel join is prepared: keeps what NIO reads anyway
/// (NIO reads a socket to its end when a FIN arrives, whatever `autoRead` says), so that a
/// PostgreSQL error sent before the join reaches the client through the glue instead.
final class ServerHold: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var held: [NIOAny] = []
    private var inputClosed = false
    private var context: ChannelHandlerContext?

    var heldAnything: Bool { !held.isEmpty || inputClosed }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { held.append(data) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            inputClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Passes what it kept on to the handlers after it, and leaves the pipeline.
    func release() {
        guard let context else { return }
        let kept = held
        held = []
        for data in kept { context.fireChannelRead(data) }
        if !kept.isEmpty { context.fireChannelReadComplete() }
        if inputClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

import HarpCluster
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One client's way in: admission, connecting to the lead master, then handing both sockets
/// over to the mode's data path (the relay). It runs on NIO, on a duplicate of the client's
/// socket (`socket` is the proxy's own). Until the hand-over the client's bytes (its startup
/// packet, or an SSLRequest) are kept and passed on unchanged once the lead master is connected.
///
/// A client that cannot be served gets an ErrorResponse that libpq shows: an SSLRequest or
/// GSSENCRequest is answered 'N' first, then the startup message is read and the error sent.
final class ClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State { case admitting, connecting, waitingToRetry, refusing, handedOver }

    /// More than this before the lead master is connected is not a PostgreSQL client.
    static let maximumBuffered = 64 * 1024
    /// How long a refused client may take to send its startup message before it is just closed.
    static let refusalTimeout: TimeAmount = .seconds(10)

    private let mode: BuiltinMode
    /// The client's socket, the proxy's own (NIO's channel has a duplicate): the data path's
    /// once joined, closed with the channel otherwise.
    private let socket: OwnedSocket
    private var state = State.admitting
    private var buffer: ByteBuffer?
    private var refusal: Refusal?
    private var context: ChannelHandlerContext?
    /// Which connect is the current one: one given up (`startAgain`) may still finish, and is
    /// then closed unused.
    private var attempt = 0
    /// The connect to the lead master under way, and the admission's count of moves.
    private var connecting: LeaderConnect?
    private var admittedGeneration: UInt64 = 0
    /// The latest move of the lead master this client was told of: an admission given before it
    /// (on its way here when the word came) is not used.
    private var movedAt: UInt64 = 0
    /// A lead master that refused the connect is asked again until then (`hold_timeout`).
    private var retryUntil: NIODeadline?
    private var retry: Scheduled<Void>?
    private var retryDelay = TimeAmount.zero

    init(mode: BuiltinMode, socket: OwnedSocket) {
        self.mode = mode
        self.socket = socket
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Gone before it was joined (it hung up, was refused or closed by the mode): the connect
    /// under way is given up, the proxy's socket closed, and the mode forgets the client. A
    /// joined client's handler has left the pipeline: its session ends it instead.
    func channelInactive(context: ChannelHandlerContext) {
        retry?.cancel()
        retry = nil
        attempt += 1
        connecting?.cancel()
        connecting = nil
        socket.close()
        mode.left(context.channel)
        context.fireChannelInactive()
    }

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
        case .waitingToRetry:
            retry?.cancel()
            retry = nil
            restart(context: context)
            return .startsAgain
        case .connecting:
            guard admittedGeneration < generation else { return .startsAgain }
            restart(context: context)
            return .startsAgain
        case .handedOver:
            return .mustClose
        }
    }

    private func restart(context: ChannelHandlerContext) {
        attempt += 1
        connecting?.cancel()
        connecting = nil
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
        // The client's side as the lead master's (`setKeepalive`), through NIO's duplicate.
        let keepalive = admission.keepaliveSeconds
        _ = context.channel.setOption(.socketOption(.so_keepalive), value: 1)
        _ = context.channel.setOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: keepalive)
        _ = context.channel.setOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: keepalive)
        _ = context.channel.setOption(.tcpOption(.init(rawValue: TCP_USER_TIMEOUT)), value: keepalive * 10 * 1000)
        let connect = LeaderConnect.start(admission.target.address, relays: mode.relays, loop: context.eventLoop,
                                          timeout: admission.connectTimeout, keepaliveSeconds: admission.keepaliveSeconds)
        connecting = connect
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let mode = self.mode
        connect.futureResult.whenComplete { result in
            let (handler, context) = bound.value
            guard thisAttempt == handler.attempt else {
                if case .success(let server) = result { close(server) }  // given up
                return
            }
            handler.connecting = nil
            switch result {
            case .success(let server):
                guard context.channel.isActive else {
                    close(server)
                    context.close(promise: nil)
                    return
                }
                guard mode.mayJoin(admission.target) else {
                    // The lead master moved during the connect: nothing was sent to it.
                    close(server)
                    handler.restart(context: context)
                    return
                }
                handler.handOver(context: context, to: server, target: admission.target)
            case .failure(let error):
                guard mode.routeGeneration == admission.generation else {
                    // The old lead master refused or did not answer, and it is no longer the
                    // one: the client goes to the new one (or waits for one) instead.
                    handler.restart(context: context)
                    return
                }
                let failure = error as? LeaderConnect.Failure ?? .failed(EIO)
                if mode.routesToReplicas {
                    // A replica that does not answer: straight to the next candidate.
                    handler.nextReplica(context: context, failed: admission.target, error: failure.reason(timeout: admission.connectTimeout))
                    return
                }
                if failure.isRefused, handler.retryLater(context: context, admission) { return }
                let reason = failure.reason(timeout: admission.connectTimeout)
                mode.connectFailed(reason, target: admission.target)
                handler.refuse(context: context, .cannotConnect(leader: "\(admission.target)", error: reason))
            }
        }
    }

    /// A replica instance's client whose replica did not answer asks for another.
    private func nextReplica(context: ChannelHandlerContext, failed target: LeaderTarget, error: String) {
        attempt += 1
        state = .admitting
        admitted(context: context, mode.replicaFailed(context.channel, target: target, error: error))
    }

    /// A lead master whose postmaster refuses the connect (nothing listens: it is stopping, as
    /// Patroni's does for a switchover before the key moves, or starting again) is asked again
    /// every 10 to 100 ms for up to `hold_timeout`: the client waits, as it would for a lead
    /// master to be named, and is not refused in a burst. A move of the lead master meanwhile
    /// sends it to the new one at once (`startAgain`). False once the time is up.
    private func retryLater(context: ChannelHandlerContext, _ admission: BuiltinMode.Admission) -> Bool {
        let now = NIODeadline.now()
        if retryUntil == nil {
            retryUntil = now + admission.holdTimeout
            mode.leaderRefused(admission.target)  // maybe its postmaster died: the host asks the node
        }
        guard let until = retryUntil, now < until, context.channel.isActive else { return false }
        state = .waitingToRetry
        retryDelay = retryDelay == .zero ? .milliseconds(10) : min(retryDelay * 2, .milliseconds(100))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        retry = context.eventLoop.scheduleTask(deadline: min(now + retryDelay, until)) {
            let (handler, context) = bound.value
            guard handler.state == .waitingToRetry else { return }
            handler.retry = nil
            handler.state = .admitting
            handler.connect(context: context, admission)
        }
        return true
    }

    /// Joins the client to the lead master through the mode's data path, the kept bytes first:
    /// both sockets go to it, NIO's duplicate of the client's is closed, and the mode records
    /// the session. Nothing of NIO's is left in it.
    private func handOver(context: ChannelHandlerContext, to server: CInt, target: LeaderTarget) {
        guard let client = socket.take() else {
            close(server)
            context.close(promise: nil)
            return
        }
        let session = mode.dataPath.join(client: client, server: server, kept: buffer, loop: context.eventLoop)
        state = .handedOver
        buffer = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        context.channel.close(promise: nil)
        mode.joined(context.channel, session, to: target)
        session.start()
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

import NIOCore
import Synchronization

/// Bytes one instance has passed each way, for /metrics.
final class Traffic: Sendable {
    let toServer = Atomic<Int>(0)
    let toClient = Atomic<Int>(0)
}

/// Joins two channels on one event loop: what one reads, the other writes. The data path a
/// session falls back to when the relay cannot take its sockets over (`RelayDataPath`).
///
/// As in SwiftNIO's connect-proxy example: flush on read-complete, stop reading while the partner
/// cannot take more (backpressure through writability), pass a half-close on, and close the
/// partner when either side closes or fails. No copy, no hop.
final class GlueHandler {
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Where this side's reads are counted: a local tally, added to the shared atomic every
    /// 64 KiB and at the end, so that the two event loops do not share a cache line per read.
    private let traffic: Traffic?
    private let clientSide: Bool
    private var unreported = 0
    /// The session's message boundaries, shared by the pair (see `cut`); nil when none are
    /// tracked, and a cut then adds nothing.
    private let framing: SessionFraming?

    private init(traffic: Traffic?, clientSide: Bool, framing: SessionFraming?) {
        self.traffic = traffic
        self.clientSide = clientSide
        self.framing = framing
    }

    private func report() {
        guard unreported > 0, let traffic else { return }
        if clientSide { traffic.toServer.add(unreported, ordering: .relaxed) } else { traffic.toClient.add(unreported, ordering: .relaxed) }
        unreported = 0
    }

    /// The client's side first, then the lead master's.
    static func matchedPair(traffic: Traffic? = nil, framing: SessionFraming? = nil) -> (GlueHandler, GlueHandler) {
        let first = GlueHandler(traffic: traffic, clientSide: true, framing: framing)
        let second = GlueHandler(traffic: traffic, clientSide: false, framing: framing)
        first.partner = second
        second.partner = first
        return (first, second)
    }

    /// Ends a session the proxy cuts, on the client channel's loop: with `error` (an
    /// ErrorResponse) first when the cut falls between two of the lead master's messages, so that
    /// the client reads why; then the close, whose lead-master side follows (`channelInactive`).
    static func cut(_ client: any Channel, with error: ByteBuffer) {
        if let glue = try? client.pipeline.syncOperations.handler(type: GlueHandler.self), glue.clientSide,
           let framing = glue.framing, framing.atBoundary, let context = glue.context {
            // Written at once if the socket takes it (it does unless the client stopped reading).
            context.writeAndFlush(NIOAny(error), promise: nil)
        }
        client.close(promise: nil)
    }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    /// The other side's end of input, passed on after every byte before it (see `afterWrites`).
    private func partnerWriteEOF() { afterWrites { $0.close(mode: .output, promise: nil) } }
    /// The lead master closed cleanly: the client closes too, once what it was given has been
    /// sent (an answer read from the lead master before it closed still reaches a slow client).
    /// A leader change does not come here: it closes both sides at once.
    private func partnerCloseFull() { afterWrites { $0.close(promise: nil) } }
    /// The other side failed, or the client is gone: this one closes at once, dropping what it
    /// was not sent yet. A lead master whose client is gone would never read it (it blocks
    /// writing answers no one reads) and would keep its backend for good.
    private func partnerCloseNow() { context?.close(promise: nil) }

    /// Runs `body` once every write already given to this side has been sent: an empty write
    /// completes after all before it. Not at once: when a channel's input has ended too, NIO
    /// makes an output close a full close, which drops the writes not yet sent.
    private func afterWrites(_ body: @escaping @Sendable (any Channel) -> Void) {
        guard let context else { return }
        let channel = context.channel
        let flushed = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(ByteBuffer()), promise: flushed)
        flushed.futureResult.whenComplete { _ in body(channel) }
    }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    private var partnerWritable: Bool { context?.channel.isWritable ?? false }
}

extension GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        report()
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Self.unwrapInboundIn(data)
        if let framing {
            if clientSide { framing.clientSent(bytes) } else { framing.serverSent(bytes) }
        }
        unreported += bytes.readableBytes
        if unreported >= 65_536 { report() }
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        guard clientSide, let partner else {
            partner?.partnerCloseFull()
            return
        }
        // The client went: its lead-master side closes a step later on this loop, so that a
        // batch of client closes (a leader change) is not held up by the backends they wake.
        let bound = NIOLoopBound(partner, eventLoop: context.eventLoop)
        context.eventLoop.execute { bound.value.partnerCloseNow() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            partner?.partnerWriteEOF()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        partner?.partnerCloseNow()
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }
}

import Foundation
import HarpConfig
import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The Unix control socket: one command per line, one JSON reply per command on one line; the
/// connection stays open for more. `socat - UNIX-CONNECT:/run/harp-proxy/control.sock` works
/// interactively, and `echo status | socat - UNIX-CONNECT:...` in scripts.
public final class ControlServer: Sendable {
    /// A line longer than this is refused (and skipped up to its end).
    static let maximumLine = 4096

    private let configuration: ControlConfiguration
    private let group: any EventLoopGroup
    private let commands: ControlCommands
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)

    public init(configuration: ControlConfiguration, group: any EventLoopGroup, actions: any ControlActions, logger: Logger) {
        self.configuration = configuration
        self.group = group
        commands = ControlCommands(actions: actions, ownerUID: geteuid())
        self.logger = logger
    }

    /// Binds the socket: creates its folder, replaces a stale socket file (but not one a live
    /// process answers on), and sets the file's mode and group.
    public func start() async throws {
        let path = configuration.socketPath
        // A bare file name (config.yml in the working directory, `socket: ./control.sock`) is in ".".
        let folder = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        if FileManager.default.fileExists(atPath: path) {
            if Self.answers(path) { throw ControlError("control socket \(path) is in use by another process") }
            unlink(path)
        }
        let commands = self.commands
        let bound = try await ServerBootstrap(group: group)
            // `echo status | socat ...` closes its side after the command: the replies must still go out.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlConnectionHandler(commands: commands))
                }
            }
            .bind(unixDomainSocketPath: path)
            .get()
        do {
            guard chmod(path, mode_t(configuration.mode)) == 0 else { throw ControlError("cannot set the mode of \(path): \(String(cString: strerror(errno)))") }
            if let name = configuration.group {
                guard let group = getgrnam(name) else { throw ControlError("control.group '\(name)' does not exist") }
                guard chown(path, uid_t.max, group.pointee.gr_gid) == 0 else { throw ControlError("cannot give \(path) to group \(name): \(String(cString: strerror(errno)))") }
            }
        } catch {
            // Never leave a socket open with a mode or group other than the one asked for.
            try? await bound.close()
            unlink(path)
            throw error
        }
        channel.withLock { $0 = bound }
        logger.info("control socket listening", metadata: ["path": "\(path)", "mode": "\(String(configuration.mode, radix: 8))"])
    }

    /// Closes the socket and removes its file.
    public func stop() async {
        let current = channel.withLock { c -> (any Channel)? in
            defer { c = nil }
            return c
        }
        // Only the socket this process bound is removed: never another daemon's.
        guard let current else { return }
        try? await current.close()
        unlink(configuration.socketPath)
    }

    /// Whether a process accepts connections on the socket at `path`.
    static func answers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }
}

public struct ControlError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// One control connection: splits lines, answers each in order, and never dies of bad input.
final class ControlConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let commands: ControlCommands
    private var pending = ByteBuffer()
    private var discardingLongLine = false
    private var peerUID: UInt32?
    /// Replies go out in the order the commands came in.
    private var lastReply: EventLoopFuture<Void>?

    init(commands: ControlCommands) { self.commands = commands }

    func channelActive(context: ChannelHandlerContext) {
        // Who is on the other end, from the kernel (SO_PEERCRED): mutations need root or our uid.
        if let provider = context.channel as? any SocketOptionProvider {
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SO_PEERCRED)
            credentials.whenSuccess { bound.value.peerUID = $0.uid }
        }
        lastReply = context.eventLoop.makeSucceededVoidFuture()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        pending.writeBuffer(&bytes)
        while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - pending.readerIndex
            let line = pending.readSlice(length: length)!
            pending.moveReaderIndex(forwardBy: 1)
            if discardingLongLine {
                discardingLongLine = false
                continue
            }
            handle(line, context: context)
        }
        if pending.readableBytes > ControlServer.maximumLine {
            pending.clear()
            if !discardingLongLine {
                discardingLongLine = true
                send(ControlCommands.error("line longer than \(ControlServer.maximumLine) bytes"), context: context)
            }
        }
        pending.discardReadBytes()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// The client is done sending: answer what it asked, then close.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            if pending.readableBytes > 0, !discardingLongLine {
                let last = pending.readSlice(length: pending.readableBytes)!
                handle(last, context: context)
            }
            let channel = context.channel
            (lastReply ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func handle(_ line: ByteBuffer, context: ChannelHandlerContext) {
        guard line.readableBytes <= ControlServer.maximumLine else {
            send(ControlCommands.error("line longer than \(ControlServer.maximumLine) bytes"), context: context)
            return
        }
        let bytes = Array(line.readableBytesView)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            send(ControlCommands.error("not text: commands are UTF-8 words, one per line; try 'help'"), context: context)
            return
        }
        let command = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if command.isEmpty { return }
        let commands = self.commands
        let uid = peerUID
        let promise = context.eventLoop.makePromise(of: String.self)
        promise.completeWithTask { await commands.reply(to: command, peerUID: uid) }
        send(promise.futureResult, context: context)
    }

    private func send(_ reply: String, context: ChannelHandlerContext) {
        send(context.eventLoop.makeSucceededFuture(reply), context: context)
    }

    /// Chains the reply after the previous one, so that answers keep the commands' order.
    private func send(_ reply: EventLoopFuture<String>, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let previous = lastReply ?? context.eventLoop.makeSucceededVoidFuture()
        lastReply = previous.flatMap { reply }.map { text in
            let context = bound.value
            var buffer = context.channel.allocator.buffer(capacity: text.utf8.count + 1)
            buffer.writeString(text)
            buffer.writeString("\n")
            context.writeAndFlush(NIOAny(buffer), promise: nil)
        }
    }
}

/// Linux's `struct ucred` (pid, uid, gid), which Swift's Glibc module does not show.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

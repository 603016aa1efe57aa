import Foundation
import HarpConfig
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// What readiness asks of the daemon: each managed instance, and why it is not ready if it is not.
public protocol HealthChecks: Sendable {
    /// Instance name → nil when ready, else the reason. `only` restricts it to one instance;
    /// an unknown name gives nil.
    func readiness(only instance: String?) async -> [String: String?]?

    /// The Prometheus text exposition of the process's metrics.
    func metrics() async -> String
}

/// HARP's `http` stanza: `GET /health/is-live`, `GET /health/is-ready[?instance=NAME]` and
/// `GET /metrics`, on SwiftNIO's HTTP/1 server.
public final class HealthServer: Sendable {
    private let configuration: HTTPConfiguration
    private let group: any EventLoopGroup
    private let checks: any HealthChecks
    private let logger: Logger

    public init(configuration: HTTPConfiguration, group: any EventLoopGroup, checks: any HealthChecks, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.checks = checks
        self.logger = logger
    }

    public func start() async throws -> any Channel {
        let checks = self.checks
        // `http.secure`: TLS in front of the HTTP codec, with the files config.yml names (already
        // checked at load time, read again here in case they changed).
        var tls: NIOSSLContext?
        if configuration.secure, let cert = configuration.certFile, let key = configuration.keyFile {
            let chain = try NIOSSLCertificate.fromPEMFile(cert).map { NIOSSLCertificateSource.certificate($0) }
            let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            tls = try NIOSSLContext(configuration: configuration)
        }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                do {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(HealthHandler(checks: checks))
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        logger.info("health endpoints listening", metadata: ["listen": "\(configuration.host):\(configuration.port)", "tls": "\(tls != nil)"])
        return channel
    }
}

final class HealthHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let checks: any HealthChecks
    private var request: HTTPRequestHead?

    init(checks: any HealthChecks) { self.checks = checks }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            answer(head, context: context)
        }
    }

    private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (path, query) = split(head.uri)
        guard head.method == .GET else { return respond(.methodNotAllowed, "only GET\n", head, context) }
        switch path {
        case "/health/is-live":
            respond(.ok, "true\n", head, context)
        case "/health/is-ready":
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let instance = query["instance"]
            let promise = context.eventLoop.makePromise(of: [String: String?]?.self)
            let checks = self.checks
            promise.completeWithTask { await checks.readiness(only: instance) }
            promise.futureResult.whenSuccess { result in
                let (handler, context) = bound.value
                guard let result else {
                    return handler.respond(.notFound, "{\"error\":\"unknown instance\"}\n", head, context)
                }
                let reasons = result.compactMapValues { $0 }
                if reasons.isEmpty && !result.isEmpty { return handler.respond(.ok, "true\n", head, context) }
                let body: [String: Any] = ["ready": false, "instances": result.mapValues { $0 ?? "ready" }]
                let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
                handler.respond(.internalServerError, String(decoding: data, as: UTF8.self) + "\n", head, context)
            }
        case "/metrics":
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: String.self)
            let checks = self.checks
            promise.completeWithTask { await checks.metrics() }
            promise.futureResult.whenSuccess { text in
                let (handler, context) = bound.value
                handler.respond(.ok, text, head, context, contentType: "text/plain; version=0.0.4; charset=utf-8")
            }
        default:
            respond(.notFound, "not found: try /health/is-live, /health/is-ready or /metrics\n", head, context)
        }
    }

    private func split(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if let name = parts.first { query[String(name)] = parts.count > 1 ? String(parts[1]).removingPercentEncoding ?? String(parts[1]) : "" }
        }
        return (String(uri[..<q]), query)
    }

    private func respond(_ status: HTTPResponseStatus, _ body: String, _ request: HTTPRequestHead, _ context: ChannelHandlerContext,
                         contentType: String? = nil) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType ?? (body.hasPrefix("{") ? "application/json" : "text/plain"))
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) } }
    }
}

import Dispatch
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import HarpProxy
import Logging
import NIOCore
import NIOPosix

/// The running process: one DCS session shared by every instance, and the signals that stop it.
struct Daemon {
    let configuration: HarpConfiguration

    func run() async throws {
        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in LogfmtHandler(label: label, level: level.swiftLogLevel) }
        let logger = Logger(label: "harp-proxy")
        for warning in configuration.warnings {
            logger.warning("\(warning.message)", metadata: ["at": "\(warning.location)"])
        }

        let layout = DCSLayout(cluster: configuration.clusterName)
        let session = DCSSession(configuration: configuration.dcs, prefix: layout.prefix, logger: Logger(label: "harp.dcs"))
        logger.info("starting", metadata: [
            "version": "\(HarpVersion.string)", "cluster": "\(configuration.clusterName)",
            "dcs": "\(configuration.dcs)", "instances": "\(configuration.instances.map(\.name).joined(separator: ","))",
        ])
        session.start()

        let stop = SignalWatch([SIGTERM, SIGINT])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let host = ProxyHost(instances: configuration.instances, session: session, group: group, layout: layout,
                             logger: Logger(label: "harp.proxy"))
        let routing = Task { await host.run() }
        let signal = await stop.next()
        logger.info("stopping: closing listeners and connections", metadata: ["signal": "\(signal)"])
        routing.cancel()
        await host.shutdown()
        session.shutdown()
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }
}

/// Delivers the given signals as an async value instead of killing the process.
final class SignalWatch: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []
    private let stream: AsyncStream<Int32>
    private let continuation: AsyncStream<Int32>.Continuation

    init(_ signals: [Int32]) {
        (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [continuation] in continuation.yield(number) }
            source.resume()
            sources.append(source)
        }
    }

    func next() async -> Int32 {
        for await number in stream { return number }
        return 0
    }
}


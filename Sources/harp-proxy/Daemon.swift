import Dispatch
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging

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
        let view = ClusterView(layout: layout, logger: logger)
        let follower = Task {
            // Until the proxy host lands, each instance's lead master is followed and logged.
            var known: [String: String] = [:]
            for await snapshot in session.snapshots() where snapshot.synced {
                let state = view.state(of: snapshot)
                for instance in configuration.instances {
                    let resolution = state.leader(of: instance.location)
                    let text: String
                    switch resolution {
                    case .leader(let target): text = "\(target)"
                    case .none: text = "none"
                    case .unresolvable(_, let reason): text = "unresolvable: \(reason)"
                    }
                    if known[instance.name] != text {
                        known[instance.name] = text
                        logger.info("lead master", metadata: ["instance": "\(instance.name)", "location": "\(instance.location)",
                                                              "leader": "\(text)", "revision": "\(snapshot.revision)"])
                    }
                }
            }
        }
        let signal = await stop.next()
        logger.info("stopping", metadata: ["signal": "\(signal)"])
        follower.cancel()
        session.shutdown()
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

extension LogLevel {
    var swiftLogLevel: Logger.Level {
        switch self {
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }
}

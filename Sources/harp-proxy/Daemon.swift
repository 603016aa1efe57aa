import Dispatch
import Foundation
import HarpCluster
import HarpControl
import HarpConfig
import HarpDCS
import HarpHealth
import HarpProxy
import Logging
import NIOCore
import NIOPosix

/// The process's `log_level`, which SIGHUP changes for every logger (`LiveLevelHandler`).
let rootLogLevel = LogLevelSetting(.info)

/// The running process: one DCS session shared by every instance, and the signals that stop it.
struct Daemon {
    let configuration: HarpConfiguration

    func run() async throws {
        let json = configuration.logFormat == .json
        let level = rootLogLevel
        level.level = configuration.logLevel.swiftLogLevel
        LoggingSystem.bootstrap { label in
            LiveLevelHandler(wrapping: LogfmtHandler(label: label, level: .info, json: json), setting: level)
        }
        let logger = Logger(label: "harp-proxy")
        for warning in configuration.warnings {
            logger.warning("\(warning.message)", metadata: ["at": "\(warning.location)"])
        }

        let layout = DCSLayout(cluster: configuration.clusterName)
        // The proxies' own status records change every monitor_interval and route nothing.
        let session = DCSSession(configuration: configuration.dcs, prefix: layout.prefix, logger: Logger(label: "harp.dcs"),
                                 ignoring: { layout.isProxyStatus($0) })
        logger.info("starting", metadata: [
            "version": "\(HarpVersion.string)", "cluster": "\(configuration.clusterName)",
            "dcs": "\(configuration.dcs)", "instances": "\(configuration.instances.map(\.name).joined(separator: ","))",
        ])
        session.start()

        let signals = SignalWatch([SIGTERM, SIGINT, SIGHUP])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let host = ProxyHost(instances: configuration.instances, session: session, group: group, layout: layout,
                             logger: Logger(label: "harp.proxy"))
        let routing = Task { await host.run() }
        let control = ControlServer(
            configuration: configuration.control, group: group,
            actions: DaemonControl(clusterName: configuration.clusterName, host: host, session: session, layout: layout, started: Date()),
            logger: logger)
        do {
            try await control.start()
        } catch {
            // The proxy is what matters: without its control socket it still routes.
            logger.error("control socket unavailable; routing goes on without it", metadata: ["path": "\(configuration.control.socketPath)", "error": "\(error)"])
        }
        let currentInstances = InstanceList(configuration.instances)
        var health: (any Channel)?
        if configuration.http.enable {
            let checks = DaemonHealth(host: host, instances: { currentInstances.value }, timeout: configuration.http.probeTimeout,
                                      figures: DaemonMetrics(host: host, session: session))
            do {
                health = try await HealthServer(configuration: configuration.http, group: group, checks: checks, logger: logger).start()
            } catch {
                logger.error("health endpoints unavailable; routing goes on without them",
                             metadata: ["listen": "\(configuration.http.host):\(configuration.http.port)", "error": "\(error)"])
            }
        }
        let watchdog = Task { await notifySystemd(host: host, session: session, group: group, logger: logger) }
        var current = configuration
        for await signal in signals.stream {
            guard signal == SIGHUP else {
                logger.info("stopping: closing listeners and connections", metadata: ["signal": "\(signal)"])
                break
            }
            current = await reload(current, host: host, logger: logger)
            currentInstances.value = current.instances
        }
        SystemdNotify.send("STOPPING=1")
        watchdog.cancel()
        routing.cancel()
        await control.stop()
        try? await health?.close()
        // Everything that runs on the host's event loop ends before the loops do.
        await watchdog.value
        await routing.value
        await host.shutdown()
        session.shutdown()
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }

    /// READY=1 once every listener is bound (or has reported why not) and the DCS has been read;
    /// after 10 s without the DCS it is sent anyway, since the proxy runs (fail-closed) without it.
    /// Then WATCHDOG=1 at half of WatchdogSec, as long as every event loop answers.
    private func notifySystemd(host: ProxyHost, session: DCSSession, group: MultiThreadedEventLoopGroup, logger: Logger) async {
        guard SystemdNotify.socketPath != nil else { return }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, !Task.isCancelled {
            let listening = await host.status().allSatisfy { $0.listen != nil }
            if listening && session.snapshot.synced { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        if !session.snapshot.synced { logger.warning("telling systemd READY without a first DCS read: clients are held until it comes") }
        SystemdNotify.send("READY=1\nSTATUS=routing \(configuration.instances.count) instance(s)\nMAINPID=\(getpid())")
        guard let interval = SystemdNotify.watchdogInterval else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: interval / 2)
            var alive = true
            for loop in group.makeIterator() where alive {
                let answered = (try? await loop.submit { true }.get()) ?? false
                alive = answered
            }
            if alive && !Task.isCancelled { SystemdNotify.send("WATCHDOG=1") }
        }
    }

    /// SIGHUP: re-read config.yml and conf.d. A configuration with errors is reported and the one
    /// in force stays; cluster and dcs changes need a restart, which is said.
    private func reload(_ current: HarpConfiguration, host: ProxyHost, logger: Logger) async -> HarpConfiguration {
        logger.info("SIGHUP: reloading the configuration", metadata: ["file": "\(current.file)"])
        let next: HarpConfiguration
        do {
            next = try ConfigLoader.load(file: current.file)
        } catch {
            for e in error.errors { logger.error("\(e.message)", metadata: ["at": "\(e.location)"]) }
            logger.error("reload failed: the previous configuration stays in force", metadata: ["errors": "\(error.errors.count)"])
            return current
        }
        guard !next.instances.isEmpty else {
            logger.error("reload failed: no proxy instance left; the previous configuration stays in force")
            return current
        }
        // Credentials and TLS files included: the running session keeps using the old ones.
        if next.clusterName != current.clusterName || next.dcs != current.dcs {
            logger.warning("cluster and dcs changes (endpoints, credentials, TLS files) take effect only after a restart")
        }
        if next.logLevel != current.logLevel {
            rootLogLevel.change(to: next.logLevel.swiftLogLevel, saying: logger,
                                ["from": "\(current.logLevel.rawValue)", "to": "\(next.logLevel.rawValue)"])
        }
        await host.reload(next.instances)
        logger.info("configuration reloaded", metadata: ["instances": "\(next.instances.map(\.name).joined(separator: ","))"])
        return next
    }
}

/// Delivers the given signals as an async value instead of killing the process.
final class SignalWatch: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []
    private let signalStream: AsyncStream<Int32>
    private let continuation: AsyncStream<Int32>.Continuation

    init(_ signals: [Int32]) {
        (signalStream, continuation) = AsyncStream.makeStream(of: Int32.self)
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [continuation] in continuation.yield(number) }
            source.resume()
            sources.append(source)
        }
    }

    /// The signals as they arrive.
    var stream: AsyncStream<Int32> { signalStream }
}


/// The instances in force, which a reload replaces.
final class InstanceList: @unchecked Sendable {
    private let lock = NSLock()
    private var instances: [InstanceConfiguration]

    init(_ instances: [InstanceConfiguration]) { self.instances = instances }

    var value: [InstanceConfiguration] {
        get { lock.withLock { instances } }
        set { lock.withLock { instances = newValue } }
    }
}

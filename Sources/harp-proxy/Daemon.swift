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
import ServiceLifecycle
import UnixSignals

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
            "dcs": "\(configuration.dcs)", "leader_source": "\(configuration.leaderSource)", "instances": "\(configuration.instances.map(\.name).joined(separator: ","))",
        ])
        session.start()
        // A leader source with records of its own (Patroni's namespace) has a second watch on them.
        let leaderSource = LeaderSources.make(configuration.leaderSource)
        let ownSession = leaderSource.ownPrefix.map {
            DCSSession(configuration: configuration.dcs, prefix: $0, logger: Logger(label: "harp.dcs.\(type(of: leaderSource).name)"))
        }
        ownSession?.start()
        let hangups = await UnixSignalsSequence(trapping: .sighup)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let relays = RelayGroup(threads: System.coreCount, logger: Logger(label: "harp.relay"))
        let host = ProxyHost(instances: configuration.instances, session: session, group: group, relays: relays, layout: layout,
                             logger: Logger(label: "harp.proxy"), leaderSource: leaderSource, ownSession: ownSession)
        let control = ControlServer(
            configuration: configuration.control, group: group,
            actions: DaemonControl(clusterName: configuration.clusterName, host: host, session: session, layout: layout, started: Date()),
            logger: logger)
        let current = CurrentConfiguration(configuration)

        // Started together; stopped in the reverse order: systemd hears STOPPING first, the DCS
        // session goes last, once every instance has closed its connections and written its record.
        var services: [any Service] = [DCSSessionService(session: session)]
        if let ownSession { services.append(DCSSessionService(session: ownSession)) }
        services += [
            RelayService(relays: relays),
            ProxyHostService(host: host, logger: logger),
            ControlService(server: control, path: configuration.control.socketPath, logger: logger),
        ]
        if configuration.http.enable {
            let checks = DaemonHealth(host: host, instances: { current.value.instances }, timeout: configuration.http.probeTimeout,
                                      figures: DaemonMetrics(host: host, session: session))
            services.append(HealthService(server: HealthServer(configuration: configuration.http, group: group, checks: checks, logger: logger),
                                          listen: "\(configuration.http.host):\(configuration.http.port)", logger: logger))
        }
        services.append(SystemdService(host: host, session: session, group: group, instances: configuration.instances.count, logger: logger))
        services.append(ReloadService(signals: hangups) {
            current.value = await Self.reload(current.value, host: host, logger: logger)
        })
        var lifecycle = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "harp.lifecycle"))
        // A stop is bounded whatever is under way (a DCS that does not answer, a PgBouncer slow to
        // stop): well within systemd's TimeoutStopSec (90 s). Writability checks are not waited
        // for at all: a stop ends them at once.
        lifecycle.maximumGracefulShutdownDuration = .seconds(10)
        lifecycle.maximumCancellationDuration = .seconds(2)
        do {
            try await ServiceGroup(configuration: lifecycle).run()
        } catch {
            // Something still runs on the event loops: shutting them down under it would trap.
            logger.warning("stop took longer than its bound: exiting with what is still under way", metadata: ["error": "\(error)"])
            return
        }
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }

    /// SIGHUP: re-read config.yml and conf.d. A configuration with errors is reported and the one
    /// in force stays; cluster and dcs changes need a restart, which is said.
    private static func reload(_ current: HarpConfiguration, host: ProxyHost, logger: Logger) async -> HarpConfiguration {
        logger.info("SIGHUP: reloading the configuration", metadata: ["file": "\(current.file)"])
        let next: HarpConfiguration
        do {
            next = try ConfigLoader.load(file: current.file, leaderSources: LeaderSources.all)
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
        if next.clusterName != current.clusterName || next.dcs != current.dcs || next.leaderSource != current.leaderSource {
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

/// The configuration in force, which a reload replaces.
final class CurrentConfiguration: @unchecked Sendable {
    private let lock = NSLock()
    private var configuration: HarpConfiguration

    init(_ configuration: HarpConfiguration) { self.configuration = configuration }

    var value: HarpConfiguration {
        get { lock.withLock { configuration } }
        set { lock.withLock { configuration = newValue } }
    }
}

import Foundation
import HarpConfig
import HarpControl
import HarpDCS
import HarpHealth
import HarpProxy
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

// The daemon's long-running parts. `Daemon` lists them in a ServiceGroup, which stops them in
// the reverse of that order on SIGTERM or SIGINT.

/// The DCS session: started before the group runs (every instance reads it), stopped last, once
/// the host has written its stopped records through it.
struct DCSSessionService: Service {
    let session: DCSSession

    func run() async throws {
        try? await gracefulShutdown()
        session.shutdown()
    }
}

/// The relay threads of the builtin instances' sessions: stopped once every instance has closed
/// its sessions (the host is listed after it, and so stops before it).
struct RelayService: Service {
    let relays: RelayGroup

    func run() async throws {
        try? await gracefulShutdown()
        relays.stop()
    }
}

/// Every proxy instance. On shutdown: stop accepting, close every connection, and write each
/// instance's `stopped` record.
struct ProxyHostService: Service {
    let host: ProxyHost
    let logger: Logger

    func run() async throws {
        let routing = Task { await host.run() }
        try? await gracefulShutdown()
        logger.info("stopping: closing listeners and connections")
        routing.cancel()
        // Everything that runs on the host's event loop ends before the loops do.
        await routing.value
        await host.shutdown()
    }
}

/// The Unix control socket. Without it the proxy still routes: a failure to open it is logged.
struct ControlService: Service {
    let server: ControlServer
    let path: String
    let logger: Logger

    func run() async throws {
        do {
            try await server.start()
        } catch {
            logger.error("control socket unavailable; routing goes on without it", metadata: ["path": "\(path)", "error": "\(error)"])
        }
        try? await gracefulShutdown()
        await server.stop()
    }
}

/// `/health/is-live`, `/health/is-ready` and `/metrics`, when `http.enable` is on.
struct HealthService: Service {
    let server: HealthServer
    let listen: String
    let logger: Logger

    func run() async throws {
        var channel: (any Channel)?
        do {
            channel = try await server.start()
        } catch {
            logger.error("health endpoints unavailable; routing goes on without them", metadata: ["listen": "\(listen)", "error": "\(error)"])
        }
        try? await gracefulShutdown()
        try? await channel?.close()
    }
}

/// systemd's notify protocol: READY once the listeners are bound and the DCS read, WATCHDOG
/// while every event loop answers, STOPPING first thing on shutdown.
struct SystemdService: Service {
    let host: ProxyHost
    let session: DCSSession
    let group: MultiThreadedEventLoopGroup
    let instances: Int
    let logger: Logger

    func run() async throws {
        guard SystemdNotify.socketPath != nil else {
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown { [self] in await notify() }
        SystemdNotify.send("STOPPING=1")
    }

    /// READY=1 once every listener is bound (or has reported why not) and the DCS has been read;
    /// after 10 s without the DCS it is sent anyway, since the proxy runs (fail-closed) without it.
    /// Then WATCHDOG=1 at half of WatchdogSec, as long as every event loop answers.
    private func notify() async {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, !Task.isCancelled {
            let listening = await host.status().allSatisfy { $0.listen != nil || $0.listenError != nil }
            if listening && session.snapshot.synced { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        guard !Task.isCancelled else { return }
        if !session.snapshot.synced { logger.warning("telling systemd READY without a first DCS read: clients are held until it comes") }
        SystemdNotify.send("READY=1\nSTATUS=routing \(instances) instance(s)\nMAINPID=\(getpid())")
        guard let interval = SystemdNotify.watchdogInterval else {
            // Nothing more to say until the stop; wait for it here.
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            return
        }
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
}

/// SIGHUP: re-read config.yml and conf.d (see `Daemon.reload`). The signal is trapped before
/// the group starts, so that an early SIGHUP cannot end the process.
struct ReloadService: Service {
    let signals: UnixSignalsSequence
    let reload: @Sendable () async -> Void

    func run() async throws {
        for await _ in signals.cancelOnGracefulShutdown() {
            await reload()
        }
    }
}

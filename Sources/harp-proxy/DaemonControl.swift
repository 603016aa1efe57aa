import Foundation
import HarpCluster
import HarpConfig
import HarpControl
import HarpDCS
import HarpHealth
import HarpProxy
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's answers to the control socket.
struct DaemonControl: ControlActions {
    let clusterName: String
    let host: ProxyHost
    let session: DCSSession
    let layout: DCSLayout
    let started: Date

    func status() async -> String {
        let health = session.health
        let snapshot = session.snapshot
        let object: [String: Any] = [
            "cluster": clusterName,
            "version": HarpVersion.string,
            "pid": Int(getpid()),
            "uptime_s": Int(Date().timeIntervalSince(started)),
            "dcs": [
                "driver": "etcd",
                "endpoint": health.watchEndpoint ?? NSNull(),
                "connected": health.reachable && snapshot.synced,
                "revision": snapshot.revision,
                "last_contact_ms": health.lastContact.map { Int(Date().timeIntervalSince($0) * 1000) } ?? NSNull(),
            ] as [String: Any],
            "instances": await host.status().map { StatusRecord($0).json },
        ]
        return Self.text(object)
    }

    func status(of instance: String) async -> String? {
        guard let found = await host.status().first(where: { $0.name == instance }) else { return nil }
        return Self.text(StatusRecord(found).json)
    }

    func instanceNames() async -> [String] {
        await host.status().map(\.name)
    }

    func setManaged(_ instance: String, _ managed: Bool) async throws -> String {
        try await session.client.put(layout.proxyManaged(instance), managed ? #""true""# : #""false""#)
        // Answer once the instance has taken the change from the watch, so the reply is the new state.
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            if let s = await host.status().first(where: { $0.name == instance }), s.plan?.managed == managed { break }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return await status(of: instance) ?? Self.text(["error": "instance \(instance) is gone"])
    }

    func reload() async -> String {
        kill(getpid(), SIGHUP)
        return Self.text(["reload": "started: the log says how it went"])
    }

    static func text(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// The daemon's answer to /health/is-ready: every managed instance has a lead master and a test
/// query through its own listener succeeds.
struct DaemonHealth: HealthChecks {
    let host: ProxyHost
    let instances: @Sendable () async -> [InstanceConfiguration]
    let timeout: Duration
    let figures: DaemonMetrics

    func metrics() async -> String { await figures.text() }

    func readiness(only instance: String?) async -> [String: String?]? {
        let statuses = await host.status()
        let configured = await instances()
        if let instance, !statuses.contains(where: { $0.name == instance }) { return nil }
        var result: [String: String?] = [:]
        for status in statuses where instance == nil || status.name == instance {
            guard let plan = status.plan else { result[status.name] = "stopped"; continue }
            if !plan.managed { continue }  // an unmanaged instance is the operator's, not the probe's
            if let error = status.listenError { result[status.name] = error; continue }
            if let reason = plan.routing.reason {
                result[status.name] = "\(plan.stateName): \(reason)"
                continue
            }
            let dsn = configured.first { $0.name == status.name }?.endpoint ?? defaultProbeDSN(listen: status.listen)
            result[status.name] = await ReadinessProbe.run(dsn, timeout: timeout)
        }
        return result
    }

    /// The instance's own listener, over loopback when it listens on every address.
    private func defaultProbeDSN(listen: String?) -> String {
        guard let listen, let colon = listen.lastIndex(of: ":") else { return "host=127.0.0.1 port=6432 dbname=postgres" }
        var host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if ["0.0.0.0", "::", "*", ""].contains(host) { host = "127.0.0.1" }
        let seconds = max(2, Int(timeout.components.seconds))
        return "host=\(host) port=\(listen[listen.index(after: colon)...]) dbname=postgres connect_timeout=\(seconds) sslmode=disable"
    }
}

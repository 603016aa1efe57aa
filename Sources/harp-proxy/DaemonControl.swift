import Foundation
import HarpCluster
import HarpConfig
import HarpControl
import HarpDCS
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

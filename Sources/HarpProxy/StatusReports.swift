import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

/// The host's status output: each instance's status record in the DCS, written every
/// `monitor_interval` and soon after a change, and what `status` on the control socket shows.
extension ProxyHost {
    /// Stops an instance's mode; its status record then says `stopped` and is left on its lease,
    /// not renewed, so that `harpctl get proxies` shows the stop until the lease runs out (three
    /// `monitor_interval`s), then forgets the proxy (as it does one that died).
    func stop(_ name: String, _ r: Running) async {
        await r.mode?.shutdown()
        await r.statusWriter.finish(await stoppedRecord(name, r), interval: statusInterval, reachable: session.health.reachable)
    }

    /// The last record of a stopped instance: nil if it never had one.
    func stoppedRecord(_ name: String, _ r: Running) async -> StatusRecord? {
        guard r.plan != nil || r.unavailableMode != nil, let instance = instances.first(where: { $0.name == name }) else { return nil }
        var clients = await r.mode?.counters() ?? ClientCounters()
        clients.current = 0  // every connection is closed; the last ones may not be counted out yet
        var record = StatusRecord(InstanceStatus(name: name, location: r.plan?.location ?? instance.location, type: r.modeName ?? "builtin", plan: nil,
                                                 listen: nil, clients: clients, since: Date(), leaderChanges: r.leaderChanges,
                                                 leaderSince: r.leaderSince))
        record.managed = r.plan?.managed ?? true
        record.maxClientConn = r.plan?.maxClientConn ?? 0
        return record
    }

    /// The shortest `monitor_interval` any instance asks for: how often records are written.
    var statusInterval: Duration {
        running.values.compactMap { $0.plan?.directives.monitorInterval }.min() ?? .seconds(5)
    }

    /// Writes every instance's status record each `monitor_interval` (the shortest any asks for).
    func reportStatus() async {
        while !Task.isCancelled {
            let interval = statusInterval
            for s in await status() {
                guard !Task.isCancelled else { return }  // stopping: the records are written by `shutdown`
                // Not before the first plan; an instance whose type this build lacks says `stopped`.
                guard let r = running[s.name], r.plan != nil || r.unavailableMode != nil else { continue }
                await r.statusWriter.write(StatusRecord(s), interval: interval)
            }
            try? await Task.sleep(for: max(interval, .milliseconds(100)))
        }
    }

    /// Writes one instance's record half a second after a change of its state or lead master,
    /// which should not wait for the next `monitor_interval` to reach `harpctl get proxies`; nor
    /// should it compete for the CPU, when the change is made, with the closes and the new
    /// clients' connects that it reports on (an etcd put and a lease renewal, and the counters
    /// asked of the instance's loop). Measured on a leader change: a new client was served 1 ms
    /// later at the median when the record was written at once. Changes in between are written
    /// together.
    func reportStatusSoon(_ name: String) {
        guard statusDue.insert(name).inserted else { return }
        chore {
            try? await Task.sleep(for: Self.statusDelay)
            guard !Task.isCancelled else { return }
            await self.reportStatusNow(name)
        }
    }

    static let statusDelay: Duration = .milliseconds(500)

    func reportStatusNow(_ name: String) async {
        statusDue.remove(name)
        guard let s = await status(of: name), let r = running[name], r.plan != nil || r.unavailableMode != nil else { return }
        await r.statusWriter.write(StatusRecord(s), interval: statusInterval)
    }

    /// Each instance's plan and counters, for status output.
    public func status() async -> [InstanceStatus] {
        var result: [InstanceStatus] = []
        for instance in instances {
            if let s = await status(of: instance.name) { result.append(s) }
        }
        return result
    }

    func status(of name: String) async -> InstanceStatus? {
        guard let instance = instances.first(where: { $0.name == name }), let r = running[name] else { return nil }
        let listener = await r.mode?.listener() ?? ListenerStatus()
        return InstanceStatus(name: name, location: r.plan?.location ?? instance.location, type: r.modeName ?? r.plan?.directives.type ?? "builtin",
                              plan: r.plan, listen: listener.listening, listenError: listener.error, clients: await r.mode?.counters() ?? ClientCounters(),
                              since: r.since, report: await r.mode?.report() ?? ModeReport(), leaderChanges: r.leaderChanges, leaderSince: r.leaderSince,
                              leaderLeaseTTL: r.plan?.routing.target.flatMap { leaseTTLs[$0.lease] })
    }
}

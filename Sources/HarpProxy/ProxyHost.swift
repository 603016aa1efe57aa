import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging
import NIOCore

/// Runs every proxy instance of the process on one event loop group, sharing one DCS session.
///
/// On each DCS snapshot (and when a fencing deadline passes) it computes each instance's plan
/// from the snapshot, the local configuration and the clock, and hands it to the instance's mode.
/// A missed or repeated event cannot leave an instance on a wrong leader: the next plan is
/// computed from the whole current state, not from the event.
public actor ProxyHost {
    private var instances: [InstanceConfiguration]
    private let session: DCSSession
    private let group: any EventLoopGroup
    /// The event loop this actor runs on, and every instance's own bookkeeping with it: a DCS
    /// change goes from the watch thread to one thread, which plans it and starts the closes,
    /// instead of waking a thread of the concurrency pool first and then an event loop (under
    /// load each wake-up can wait milliseconds for a core).
    private let hostLoop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { hostLoop.executor.asUnownedSerialExecutor() }
    private let logger: Logger
    private let view: ClusterView
    private let layout: DCSLayout

    private struct Running {
        var mode: (any ProxyMode)?
        var modeName: String?
        var plan: InstancePlan?
        var logger: Logger
        /// The instance's own `log_level` (nil: the process's), which a reload changes in place.
        let logLevel: LogLevelSetting
        /// The unknown `type` last reported, so that it is logged once.
        var unavailableMode: String?
        /// When the state name last changed.
        var since = Date()
        var statusWriter: StatusWriter
        /// The last lead master routed to, how many times it has changed, and since when.
        var lastLeader: LeaderTarget?
        var leaderChanges = 0
        var leaderSince: Date?
        /// For an instance that names no location: the one it follows, once chosen, and what
        /// was last said about the choice (so that it is logged once).
        var followedLocation: String?
        var locationNote: String?
    }

    private var running: [String: Running] = [:]
    /// Tasks the host started that come back to it (see `chore`), and whether it is stopping.
    private var chores: [Int: Task<Void, Never>] = [:]
    private var nextChore = 0
    private var shuttingDown = false
    /// Instances whose record is to be written soon (`reportStatusSoon`).
    private var statusDue: Set<String> = []
    private var caps: [String: Int] = [:]
    private let descriptorLimit: Int
    /// Granted TTL of each leader lease seen, looked up once per lease.
    private var leaseTTLs: [Int64: Duration] = [:]
    /// Leases whose TTL is being asked for: one request per lease, however many instances see it.
    private var leaseLookups: Set<Int64> = []
    private var fenceTimer: Task<Void, Never>?
    private var fenceWarned: Set<String> = []
    private var latest: DCSSnapshot?

    public init(instances: [InstanceConfiguration], session: DCSSession, group: any EventLoopGroup, layout: DCSLayout, logger: Logger) {
        self.instances = instances
        self.session = session
        self.group = group
        hostLoop = group.next()
        self.logger = logger
        view = ClusterView(layout: layout, logger: logger)
        self.layout = layout
        descriptorLimit = DescriptorBudget.raiseLimit()
        for instance in instances { running[instance.name] = Self.makeRunning(instance, logger: logger, session: session, layout: layout) }
    }

    private static func makeRunning(_ instance: InstanceConfiguration, logger: Logger, session: DCSSession, layout: DCSLayout) -> Running {
        var instanceLogger = logger
        instanceLogger[metadataKey: "instance"] = "\(instance.name)"
        let level = LogLevelSetting(instance.logLevel?.swiftLogLevel)
        instanceLogger.handler = LiveLevelHandler(wrapping: instanceLogger.handler, setting: level)
        return Running(logger: instanceLogger, logLevel: level,
                       statusWriter: StatusWriter(client: session.client, key: layout.proxyStatus(instance.name), logger: instanceLogger))
    }

    /// A new set of instances (SIGHUP): removed ones stop and close their connections, added ones
    /// start, changed ones are re-planned, and untouched ones keep everything.
    public func reload(_ newInstances: [InstanceConfiguration]) async {
        let old = Dictionary(uniqueKeysWithValues: instances.map { ($0.name, $0) })
        let new = Set(newInstances.map(\.name))
        for (name, _) in old where !new.contains(name) {
            guard let r = running.removeValue(forKey: name) else { continue }
            r.logger.info("instance removed from the configuration: stopping it")
            await stop(name, r)
        }
        for instance in newInstances {
            if let before = old[instance.name] {
                if before.logLevel != instance.logLevel, let r = running[instance.name] {
                    r.logLevel.change(to: instance.logLevel?.swiftLogLevel, saying: r.logger,
                                      ["from": "\(before.logLevel?.rawValue ?? "the process's")", "to": "\(instance.logLevel?.rawValue ?? "the process's")"])
                }
                if !before.sameSettings(as: instance) { running[instance.name]?.logger.info("instance changed: re-planning") }
                if before.location != instance.location { running[instance.name]?.followedLocation = nil }
            } else {
                running[instance.name] = Self.makeRunning(instance, logger: logger, session: session, layout: layout)
                running[instance.name]?.logger.info("instance added", metadata: ["location": "\(instance.location ?? "from the DCS")"])
            }
        }
        instances = newInstances
        if let latest { reconcile(latest, observedAt: .now) }
    }

    /// Plans every instance from each snapshot. Isolated to the actor, so that a snapshot's
    /// arrival resumes this loop on `hostLoop` directly.
    private func follow() async {
        for await snapshot in session.snapshots() {
            // From the moment the DCS event reached the process: the hop to this loop counts in
            // `ms_since_dcs_event` too. (The first snapshot may be older; it moves no lead master.)
            reconcile(snapshot, observedAt: snapshot.madeAt)
        }
    }

    /// Follows the DCS, and writes each instance's status record, until the task is cancelled.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.follow() }
            group.addTask { await self.reportStatus() }
            await group.waitForAll()
        }
    }

    /// Stops every instance. The caller cancels `run()` and waits for it first; the host's own
    /// timers, lookups and reports are cancelled and waited for here, so that nothing resumes on
    /// `hostLoop` once the caller shuts the event loops down.
    public func shutdown() async {
        shuttingDown = true
        fenceTimer?.cancel()
        for chore in chores.values { chore.cancel() }
        for chore in Array(chores.values) { await chore.value }
        // Every instance's connections first, then the records, all at once: with the DCS slow
        // or gone, no instance's clients wait for another's record.
        for r in running.values { await r.mode?.shutdown() }
        var finals: [(StatusWriter, StatusRecord?)] = []
        for (name, r) in running { finals.append((r.statusWriter, await stoppedRecord(name, r))) }
        let interval = statusInterval, reachable = session.health.reachable
        await withTaskGroup(of: Void.self) { group in
            for (writer, record) in finals {
                group.addTask { await writer.finish(record, interval: interval, reachable: reachable) }
            }
        }
        for name in running.keys { running[name]?.mode = nil }
    }

    /// Stops an instance's mode; its status record then says `stopped` and is left on its lease,
    /// not renewed, so that `harpctl get proxies` shows the stop until the lease runs out (three
    /// `monitor_interval`s), then forgets the proxy (as it does one that died).
    private func stop(_ name: String, _ r: Running) async {
        await r.mode?.shutdown()
        await r.statusWriter.finish(await stoppedRecord(name, r), interval: statusInterval, reachable: session.health.reachable)
    }

    /// The last record of a stopped instance: nil if it never had one.
    private func stoppedRecord(_ name: String, _ r: Running) async -> StatusRecord? {
        guard r.plan != nil || r.unavailableMode != nil, let instance = instances.first(where: { $0.name == name }) else { return nil }
        var clients = await r.mode?.counters() ?? ClientCounters()
        clients.current = 0  // every connection is closed; the last ones may not be counted out yet
        var record = StatusRecord(InstanceStatus(name: name, location: instance.location ?? r.followedLocation, type: r.modeName ?? "builtin", plan: nil,
                                                 listen: nil, clients: clients, since: Date(), leaderChanges: r.leaderChanges,
                                                 leaderSince: r.leaderSince))
        record.managed = r.plan?.managed ?? true
        record.maxClientConn = r.plan?.maxClientConn ?? 0
        return record
    }

    /// The shortest `monitor_interval` any instance asks for: how often records are written.
    private var statusInterval: Duration {
        running.values.compactMap { $0.plan?.directives.monitorInterval }.min() ?? .seconds(5)
    }

    /// Writes every instance's status record each `monitor_interval` (the shortest any asks for).
    private func reportStatus() async {
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
    private func reportStatusSoon(_ name: String) {
        guard statusDue.insert(name).inserted else { return }
        chore {
            try? await Task.sleep(for: Self.statusDelay)
            guard !Task.isCancelled else { return }
            await self.reportStatusNow(name)
        }
    }

    /// Starts `body` as one of the host's chores (see `shutdown`); none once it is shutting down.
    @discardableResult
    private func chore(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never>? {
        guard !shuttingDown else { return nil }
        nextChore += 1
        let id = nextChore
        let task = Task {
            await body()
            await self.choreDone(id)
        }
        chores[id] = task
        return task
    }

    private func choreDone(_ id: Int) { chores[id] = nil }

    static let statusDelay: Duration = .milliseconds(500)

    private func reportStatusNow(_ name: String) async {
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

    private func status(of name: String) async -> InstanceStatus? {
        guard let instance = instances.first(where: { $0.name == name }), let r = running[name] else { return nil }
        let listener = await r.mode?.listener() ?? ListenerStatus()
        return InstanceStatus(name: name, location: r.plan?.location ?? instance.location, type: r.modeName ?? r.plan?.directives.type ?? "builtin",
                              plan: r.plan, listen: listener.listening, listenError: listener.error, clients: await r.mode?.counters() ?? ClientCounters(),
                              since: r.since, pool: await r.mode?.poolSummary(), leaderChanges: r.leaderChanges, leaderSince: r.leaderSince)
    }

    // MARK: - Reconcile

    private func reconcile(_ snapshot: DCSSnapshot, observedAt: ContinuousClock.Instant) {
        latest = snapshot
        let state = view.state(of: snapshot)
        // Only modes whose clients' connections live in this process count against its descriptors.
        let wanted = Dictionary(uniqueKeysWithValues: instances.compactMap { instance -> (String, Int)? in
            let directives = state.effectiveDirectives(for: instance)
            guard ProxyModes.named(directives.type)?.holdsClientConnections ?? false else { return nil }
            return (instance.name, directives.maxClientConn)
        })
        let newCaps = DescriptorBudget.caps(for: wanted, limit: descriptorLimit)
        for (name, cap) in newCaps where cap < wanted[name]! && caps[name] != cap {
            running[name]?.logger.warning("max_client_conn lowered to what the process can hold",
                                          metadata: ["max_client_conn": "\(wanted[name]!)", "lowered_to": "\(cap)", "nofile_limit": "\(descriptorLimit)"])
        }
        caps = newCaps

        // Listeners: each instance's effective address, known only now (the DCS may set it).
        let claims = instances.compactMap { instance -> ListenerClaims.Claim? in
            guard let r = running[instance.name] else { return nil }
            let directives = state.effectiveDirectives(for: instance)
            let heldBefore = r.plan.map { $0.listenBlocked == nil && $0.listenAddress == directives.listenAddress && $0.listenPort == directives.listenPort } ?? false
            return ListenerClaims.Claim(instance: instance.name, address: directives.listenAddress, port: directives.listenPort, heldBefore: heldBefore)
        }
        let listenRefusals = ListenerClaims.refusals(claims)

        var nextDeadline: ContinuousClock.Instant?
        for instance in instances {
            guard var r = running[instance.name] else { continue }
            let directives = state.effectiveDirectives(for: instance)
            let location = followedLocation(of: instance, in: state, synced: snapshot.synced, &r)
            var (routing, deadline) = (InstancePlan.Routing.noLeader(reason: location.reason ?? ""), ContinuousClock.Instant?.none)
            if let name = location.name {
                (routing, deadline) = self.routing(for: instance.name, at: name, in: state, snapshot: snapshot, directives: directives, logger: r.logger)
            }
            if let deadline { nextDeadline = min(nextDeadline ?? deadline, deadline) }
            var plan = InstancePlan(location: location.name, directives: directives, managed: state.isManaged(instance.name), routing: routing,
                                    maxClientConn: caps[instance.name] ?? directives.maxClientConn, dcsRead: snapshot.synced,
                                    observedAt: observedAt)
            plan.listenBlocked = listenRefusals[instance.name]
            ensureMode(named: directives.type, for: instance, &r)
            guard r.mode != nil else {
                // No mode of that type in this build: the instance is stopped, and status says so.
                r.plan = nil
                running[instance.name] = r
                continue
            }
            if let target = plan.routing.target, !target.sameRoute(as: r.lastLeader) {
                if r.lastLeader != nil { r.leaderChanges += 1 }
                r.lastLeader = target
                r.leaderSince = Date()
            }
            if r.plan != plan {
                let leaderMoved = r.plan?.routing.target.map { !$0.sameRoute(as: plan.routing.target) } ?? (plan.routing.target != nil)
                if r.plan?.stateName != plan.stateName || leaderMoved || r.plan?.listenBlocked != plan.listenBlocked { reportStatusSoon(instance.name) }
                if r.plan?.stateName != plan.stateName { r.since = Date() }
                logTransition(from: r.plan, to: plan, logger: r.logger)
                r.plan = plan
                r.mode?.apply(plan)
            }
            running[instance.name] = r
        }
        scheduleFenceCheck(at: nextDeadline)
    }

    /// The location an instance follows: its own, or for one that names none, the only one the
    /// DCS holds, kept once chosen. nil with the reason while there is none to follow.
    private func followedLocation(of instance: InstanceConfiguration, in state: ClusterState, synced: Bool,
                                  _ r: inout Running) -> (name: String?, reason: String?) {
        if let location = instance.location { return (location, nil) }
        guard synced else { return (nil, "the DCS has not been read yet") }
        let note: String, result: (String?, String?)
        switch state.location(following: r.followedLocation) {
        case .follow(let location, let others):
            result = (location, nil)
            if r.followedLocation == nil {
                r.logger.info("following location \(location): the only one the DCS holds, and the configuration names none",
                              metadata: ["location": "\(location)"])
            }
            r.followedLocation = location
            note = others.isEmpty ? "" : "others: " + others.joined(separator: ",")
            if !others.isEmpty && r.locationNote != note {
                r.logger.warning("the DCS now holds other locations too; still following \(location): set proxy.location to make the choice explicit",
                                 metadata: ["location": "\(location)", "others": "\(others.joined(separator: ","))"])
            }
        case .wait(let reason):
            result = (nil, reason)
            note = reason
            if r.locationNote != note { r.logger.info("\(reason)") }
        case .ambiguous(let reason):
            result = (nil, reason)
            note = reason
            if r.locationNote != note { r.logger.error("no location to follow: \(reason)") }
        }
        r.locationNote = note
        return result
    }

    /// Where the instance should route, and when that answer changes by itself (a fencing deadline).
    private func routing(for instance: String, at location: String, in state: ClusterState, snapshot: DCSSnapshot,
                         directives: EffectiveDirectives, logger: Logger) -> (InstancePlan.Routing, ContinuousClock.Instant?) {
        guard snapshot.synced else { return (.noLeader(reason: "the DCS has not been read yet"), nil) }
        let resolution = state.leader(of: location)
        if !snapshot.reachable {
            // Measured on the monotonic clock from the last linearizable answer, not from when the
            // session gave up on etcd.
            let outage = session.health.lastContactAt.map { ContinuousClock.now - $0 } ?? .seconds(1_000_000)
            let lease = resolution.target.flatMap { leaseTTLs[$0.lease] } ?? directives.leaderLeaseDuration
            if directives.dcsFailurePolicy == "fence" {
                if outage >= lease {
                    if fenceWarned.insert(instance).inserted {
                        logger.warning("DCS unreachable longer than the leader lease: fencing, no routing until it is back",
                                       metadata: ["outage_s": "\(format(outage))", "lease_s": "\(format(lease))"])
                    }
                    return (.fenced(reason: "DCS unreachable for \(format(outage)) s, longer than the \(format(lease)) s lease"), nil)
                }
                return (routing(resolution), .now + (lease - outage))
            }
            if fenceWarned.insert(instance).inserted {
                logger.warning("DCS unreachable; dcs_failure_policy is keep: routing to the last known lead master",
                               metadata: ["outage_s": "\(format(outage))", "leader": "\(resolution.target.map { "\($0)" } ?? "none")"])
            }
            return (routing(resolution), nil)
        }
        if fenceWarned.remove(instance) != nil {
            logger.info("DCS reachable again: routing resumes from the current state")
        }
        if let target = resolution.target, target.lease != 0, leaseTTLs[target.lease] == nil { lookUpLease(target.lease) }
        return (routing(resolution), nil)
    }

    private func routing(_ resolution: LeaderResolution) -> InstancePlan.Routing {
        switch resolution {
        case .leader(let target): return .leader(target)
        case .none: return .noLeader(reason: "no lead master")
        case .unresolvable(_, let reason): return .noLeader(reason: reason)
        }
    }

    private func lookUpLease(_ id: Int64) {
        guard leaseLookups.insert(id).inserted else { return }
        let client = session.client
        chore {
            let ttl = try? await client.leaseTimeToLive(id)
            await self.recordLease(id, ttl: ttl.flatMap { $0.granted > 0 ? .seconds($0.granted) : nil })
        }
    }

    /// Records a looked-up TTL; without one, the next snapshot may ask again.
    private func recordLease(_ id: Int64, ttl: Duration?) {
        leaseLookups.remove(id)
        guard let ttl else { return }
        leaseTTLs[id] = ttl
        if leaseTTLs.count > 1000 { leaseTTLs = [id: ttl] }
    }

    /// Re-plans when a fencing deadline passes, since no DCS event will come to say so.
    private func scheduleFenceCheck(at deadline: ContinuousClock.Instant?) {
        fenceTimer?.cancel()
        guard let deadline else { return }
        fenceTimer = chore {
            try? await Task.sleep(until: deadline, clock: .continuous)
            guard !Task.isCancelled else { return }
            await self.fenceDeadlinePassed()
        }
    }

    private func fenceDeadlinePassed() {
        if let latest { reconcile(latest, observedAt: .now) }
    }

    private func ensureMode(named name: String, for instance: InstanceConfiguration, _ r: inout Running) {
        guard r.modeName != name else { return }
        if let old = r.mode {
            r.logger.info("proxy type changed: stopping the old mode", metadata: ["from": "\(r.modeName ?? "")", "to": "\(name)"])
            chore { await old.shutdown() }
            r.mode = nil
            r.plan = nil
        }
        r.modeName = name
        guard let type = ProxyModes.named(name) else {
            if r.unavailableMode != name {
                r.logger.error("proxy type is not available in this build; the instance is stopped",
                               metadata: ["type": "\(name)", "available": "\(ProxyModes.all.map { $0.typeName }.joined(separator: ","))"])
                r.unavailableMode = name
            }
            return
        }
        r.unavailableMode = nil
        r.mode = type.init(instance: instance, group: group, loop: hostLoop, logger: r.logger)
    }

    private func logTransition(from old: InstancePlan?, to new: InstancePlan, logger: Logger) {
        if let blocked = new.listenBlocked, old?.listenBlocked != blocked { logger.error("\(blocked)") }
        guard old?.stateName != new.stateName || old?.routing.target != new.routing.target else { return }
        var metadata: Logger.Metadata = ["state": "\(new.stateName)"]
        switch new.routing {
        case .leader(let t): metadata["leader"] = "\(t)"
        case .noLeader(let reason), .fenced(let reason): metadata["reason"] = "\(reason)"
        }
        logger.info("plan", metadata: metadata)
    }

    private func format(_ d: Duration) -> String { String(format: "%.1f", d.seconds) }
}

/// One instance as status output shows it.
public struct InstanceStatus: Sendable {
    public var name: String
    /// The location it follows; nil while one that names none has none to follow.
    public var location: String?
    public var type: String
    public var plan: InstancePlan?
    public var listen: String?
    /// Why it does not hold the listener its plan asks for (address in use), if it does not.
    public var listenError: String? = nil
    public var clients: ClientCounters
    /// When the instance entered its current state.
    public var since: Date
    /// PgBouncer's pools (pgbouncer mode).
    public var pool: PoolSummary? = nil
    /// How many times the lead master has changed, and when it last did (or was first known).
    public var leaderChanges = 0
    public var leaderSince: Date? = nil

    /// The state name of status output: the plan's, unless the instance cannot hold the listener
    /// the plan asks for, which no `routing` may hide.
    public var state: String {
        guard let plan else { return "stopped" }
        return listenError != nil && plan.managed ? "listen-failed" : plan.stateName
    }
}

extension LogLevel {
    public var swiftLogLevel: Logger.Level {
        switch self {
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }
}

import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging
import NIOCore

/// Runs every proxy instance of the process on one event loop group, sharing one DCS session.
///
/// On each DCS snapshot (and when a fencing deadline passes) it gathers what the `Planner`
/// needs, has it compute every instance's plan, and hands each changed plan to the instance's
/// mode. Its status records (`StatusReports.swift`), its timers and lookups (`HostTasks.swift`)
/// and its questions to lead masters about writes (`LeaderReadiness/`) live beside it.
public actor ProxyHost {
    var instances: [InstanceConfiguration]
    let session: DCSSession
    private let group: any EventLoopGroup
    private let relays: RelayGroup
    /// The event loop this actor runs on, and every instance's own bookkeeping with it: a DCS
    /// change goes from the watch thread to one thread, which plans it and starts the closes,
    /// instead of waking a thread of the concurrency pool first and then an event loop (under
    /// load each wake-up can wait milliseconds for a core).
    let hostLoop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { hostLoop.executor.asUnownedSerialExecutor() }
    let logger: Logger
    private let view: ClusterView
    private let layout: DCSLayout
    /// Where the lead masters come from (`dcs.leader_source`). A source with records of its own
    /// (Patroni's namespace) has a session on them, with its latest snapshot and a view that
    /// reports their malformed values; HARP's session still gives the directives.
    private let leaderSource: any LeaderSource
    private let own: (session: DCSSession, view: ClusterView)?
    var latestOwn: DCSSnapshot?

    struct Running {
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
    }

    var running: [String: Running] = [:]
    /// Tasks the host started that come back to it (see `chore`), and whether it is stopping.
    var chores: [Int: Task<Void, Never>] = [:]
    var nextChore = 0
    var shuttingDown = false
    /// Instances whose record is to be written soon (`reportStatusSoon`).
    var statusDue: Set<String> = []
    /// `max_client_conn` lowered to fit the descriptor limit, as last said.
    private var lowered: [String: Int] = [:]
    private let descriptorLimit: Int
    /// Granted TTL of each leader lease seen, looked up once per lease.
    var leaseTTLs: [Int64: Duration] = [:]
    /// Leases whose TTL is being asked for: one request per lease, however many instances see it.
    var leaseLookups: Set<Int64> = []
    var fenceTimer: Task<Void, Never>?
    /// What was seen of each followed leadership's writability, and the checks under way
    /// (`LeaderReadiness/ReadinessChecks.swift`).
    var readiness: [String: LeaderReadiness] = [:]
    var readinessChecks: [String: StopSignal] = [:]
    var latest: DCSSnapshot?

    /// - Parameters:
    ///   - leaderSource: where the lead masters come from; HARP's keys by default.
    ///   - ownSession: the session on the source's `ownPrefix`, for a source that has one.
    ///   - relays: the relay threads of the builtin instances' sessions; the caller stops them
    ///     after `shutdown`.
    public init(instances: [InstanceConfiguration], session: DCSSession, group: any EventLoopGroup, relays: RelayGroup, layout: DCSLayout,
                logger: Logger, leaderSource: any LeaderSource = HarpLeaderSource(setting: .harp), ownSession: DCSSession? = nil) {
        self.instances = instances
        self.session = session
        self.leaderSource = leaderSource
        own = ownSession.map { ($0, ClusterView(layout: layout, logger: logger)) }
        self.group = group
        hostLoop = group.next()
        self.relays = relays
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
            } else {
                running[instance.name] = Self.makeRunning(instance, logger: logger, session: session, layout: layout)
                running[instance.name]?.logger.info("instance added", metadata: ["location": "\(instance.location ?? "from the DCS")"])
            }
        }
        instances = newInstances
        reconcile(observedAt: .now)
    }

    /// Plans every instance from each snapshot. Isolated to the actor, so that a snapshot's
    /// arrival resumes this loop on `hostLoop` directly.
    private func follow() async {
        for await snapshot in session.snapshots() {
            latest = snapshot
            // From the moment the DCS event reached the process: the hop to this loop counts in
            // `ms_since_dcs_event` too. (The first snapshot may be older; it moves no lead master.)
            reconcile(observedAt: snapshot.madeAt)
        }
    }

    private func followOwn(_ session: DCSSession) async {
        for await snapshot in session.snapshots() {
            latestOwn = snapshot
            reconcile(observedAt: snapshot.madeAt)
        }
    }

    /// Follows the DCS, and writes each instance's status record, until the task is cancelled.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.follow() }
            if let own = self.own { group.addTask { await self.followOwn(own.session) } }
            group.addTask { await self.reportStatus() }
            await group.waitForAll()
        }
    }

    /// Stops every instance. The caller cancels `run()` and waits for it first; the host's own
    /// timers, lookups and reports are cancelled and waited for here, so that nothing resumes on
    /// `hostLoop` once the caller shuts the event loops down.
    public func shutdown() async {
        shuttingDown = true
        stopReadinessChecks()
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

    // MARK: - Reconcile

    /// The lead masters as the latest snapshots say.
    func currentLeaders() -> (any LeaderView)? {
        guard let snapshot = latest else { return nil }
        return leaderSource.leaders(cluster: ClusterState(snapshot: snapshot, layout: layout), own: latestOwn ?? DCSSnapshot(revision: 0, values: [:], synced: false))
    }

    func reconcile(observedAt: ContinuousClock.Instant) {
        guard let snapshot = latest else { return }
        let state = view.state(of: snapshot)
        var synced = snapshot.synced, reachable = snapshot.reachable
        var lastContactAt = session.health.lastContactAt
        let ownSnapshot = latestOwn ?? DCSSnapshot(revision: 0, values: [:], synced: false)
        let leaders = leaderSource.leaders(cluster: state, own: ownSnapshot)
        if let own {
            // Both must have been read, and both must answer: the older last contact counts.
            own.view.report(leaders.problems, in: ownSnapshot)
            synced = synced && ownSnapshot.synced
            reachable = reachable && ownSnapshot.reachable
            if let theirs = own.session.health.lastContactAt { lastContactAt = min(lastContactAt ?? theirs, theirs) } else { lastContactAt = nil }
        }
        let output = Planner.plan(Planner.Input(
            instances: instances, state: state, leaders: leaders, synced: synced, reachable: reachable, now: .now,
            lastContactAt: lastContactAt, leaseTTLs: leaseTTLs, descriptorLimit: descriptorLimit,
            previous: running.compactMapValues(\.plan), observedAt: observedAt, readiness: readiness))

        for (name, (wanted, granted)) in output.lowered where lowered[name] != granted {
            running[name]?.logger.warning("max_client_conn lowered to what the process can hold",
                                          metadata: ["max_client_conn": "\(wanted)", "lowered_to": "\(granted)", "nofile_limit": "\(descriptorLimit)"])
        }
        lowered = output.lowered.mapValues(\.granted)
        for lease in output.unknownLeases { lookUpLease(lease) }
        if synced { leaseTTLs = leaseTTLs.filter { output.liveLeases.contains($0.key) } }
        updateReadinessChecks(wanted: output.uncheckedLeaders, live: output.liveLeaderships)

        for instance in instances {
            guard var r = running[instance.name], let plan = output.plans[instance.name] else { continue }
            ensureMode(named: plan.directives.type, for: instance, &r)
            guard r.mode != nil else {
                // No mode of that type in this build: the instance is stopped, and status says so.
                r.plan = nil
                running[instance.name] = r
                continue
            }
            let moved = leaderMoved(from: r.lastLeader, to: plan.routing.target)
            if moved, let target = plan.routing.target {
                if r.lastLeader != nil { r.leaderChanges += 1 }
                r.lastLeader = target
                r.leaderSince = Date()
            }
            let changed = r.plan != plan
            PlanLog.transition(from: r.plan, to: plan, instance: instance, logger: r.logger)
            if changed {
                let routeMoved = leaderMoved(from: r.plan?.routing.target, to: plan.routing.target)
                if r.plan?.stateName != plan.stateName || routeMoved || r.plan?.listenBlocked != plan.listenBlocked { reportStatusSoon(instance.name) }
                if r.plan?.stateName != plan.stateName { r.since = Date() }
            }
            r.plan = plan
            if changed { r.mode?.apply(plan) }
            running[instance.name] = r
        }
        scheduleFenceCheck(at: output.nextDeadline)
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
        let mode = type.init(instance: instance, context: ModeContext(group: group, loop: hostLoop, relays: relays), logger: r.logger)
        let name = instance.name
        mode.onLeaderRefusedConnection { [weak self] target in
            Task { await self?.leaderRefusedConnection(instance: name, target: target) }
        }
        r.mode = mode
    }

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
    /// What the mode adds (pgbouncer: PgBouncer's pools).
    public var report = ModeReport()
    /// How many times the lead master has changed, and when it last did (or was first known).
    public var leaderChanges = 0
    public var leaderSince: Date? = nil
    /// The TTL of the lead master's lease, once looked up.
    public var leaderLeaseTTL: Duration? = nil

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

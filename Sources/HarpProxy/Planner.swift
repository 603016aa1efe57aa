import HarpCluster
import HarpConfig

/// What every instance of the process should be doing, from plain values: the configuration,
/// the cluster as the DCS describes it, what is known of the DCS's health and of leader leases,
/// and the time. No I/O and no clock inside: the host gathers the inputs, calls `plan`, and
/// applies the result (level-triggered: a missed or repeated event cannot leave an instance on
/// a wrong leader, since the next plan is computed from the whole current state).
/// What the host has seen of a leadership's writability.
enum LeaderReadiness: Equatable {
    /// The node said it takes writes; the revision of the leader's record then.
    case takesWrites(recordRevision: Int64)
    /// Since then, a reason to think it may not (it refused a connection): ask again.
    case doubted(String)
}

enum Planner {
    struct Input {
        var instances: [InstanceConfiguration]
        /// HARP's records: directives, managed flags (and, with the default source, leaders).
        var state: ClusterState
        /// Where each location's lead master comes from: `state` itself, or Patroni's records.
        var leaders: any LeaderView
        /// The DCS has been read once; until then "no lead master" means "not known yet".
        var synced: Bool
        /// The DCS answers with quorum now.
        var reachable: Bool
        var now: ContinuousClock.Instant
        /// The last linearizable answer of the DCS, on the monotonic clock.
        var lastContactAt: ContinuousClock.Instant?
        /// Granted TTL of each leader lease looked up so far.
        var leaseTTLs: [Int64: Duration] = [:]
        /// The process's descriptor limit, which bounds the builtin clients of all instances.
        var descriptorLimit: Int
        /// The plans in force, by instance: an instance keeps the listener and the location it has.
        var previous: [String: InstancePlan] = [:]
        /// When the DCS change behind this plan was seen.
        var observedAt: ContinuousClock.Instant
        /// What the host has seen of each leadership (`WritabilityCheck.key`): that it takes
        /// writes, or a reason to doubt it since.
        var readiness: [String: LeaderReadiness] = [:]
    }

    struct Output {
        var plans: [String: InstancePlan] = [:]
        /// When some plan changes by itself (a fencing deadline), with no DCS event to say so.
        var nextDeadline: ContinuousClock.Instant?
        /// Leader leases whose TTL is not known yet: worth a lookup.
        var unknownLeases: Set<Int64> = []
        /// `max_client_conn` wanted and granted, for instances whose wish did not fit.
        var lowered: [String: (wanted: Int, granted: Int)] = [:]
        /// Lead masters new clients wait for, by check key: how to ask whether they take writes.
        var uncheckedLeaders: [String: WritabilityCheck] = [:]
        /// The leaderships and leader leases that plans follow now: what the host remembers of
        /// any other is forgotten.
        var liveLeaderships: Set<String> = []
        var liveLeases: Set<Int64> = []
    }

    static func plan(_ input: Input) -> Output {
        var output = Output()
        let state = input.state
        let directives = Dictionary(uniqueKeysWithValues: input.instances.map { ($0.name, state.effectiveDirectives(for: $0)) })

        // Only modes whose clients' connections live in this process count against its descriptors.
        let wanted = Dictionary(uniqueKeysWithValues: input.instances.compactMap { instance -> (String, Int)? in
            let d = directives[instance.name]!
            guard ProxyModes.named(d.type)?.holdsClientConnections ?? false else { return nil }
            return (instance.name, d.maxClientConn)
        })
        let caps = DescriptorBudget.caps(for: wanted, limit: input.descriptorLimit)
        for (name, cap) in caps where cap < wanted[name]! { output.lowered[name] = (wanted[name]!, cap) }

        // Listeners: each instance's effective address, known only now (the DCS may set it).
        let refusals = ListenerClaims.refusals(input.instances.map { instance in
            let d = directives[instance.name]!
            let before = input.previous[instance.name]
            let held = before.map { $0.listenBlocked == nil && $0.listenAddress == d.listenAddress && $0.listenPort == d.listenPort } ?? false
            return ListenerClaims.Claim(instance: instance.name, address: d.listenAddress, port: d.listenPort, heldBefore: held)
        })

        for instance in input.instances {
            let d = directives[instance.name]!
            var choice: LocationChoice?
            var location = instance.location
            var routing = InstancePlan.Routing.noLeader(reason: "the DCS has not been read yet")
            if location == nil, input.synced {
                // An instance that names none follows the only location the DCS holds, and keeps it.
                let chosen = input.previous[instance.name].flatMap { $0.locationChoice == nil ? nil : $0.location }
                choice = input.leaders.location(following: chosen)
                switch choice {
                case .follow(let name, _)?: location = name
                case .wait(let reason)?, .ambiguous(let reason)?: routing = .noLeader(reason: reason)
                case nil: break
                }
            }
            var dcsUnreachable = false
            var fenceClock: (Duration, Duration)?
            if let location, input.synced {
                let (r, deadline, clock) = self.routing(at: location, directives: d, input: input)
                routing = r
                fenceClock = clock
                dcsUnreachable = !input.reachable
                if let deadline { output.nextDeadline = min(output.nextDeadline ?? deadline, deadline) }
                if let lease = input.leaders.leader(of: location).target?.lease, lease != 0 {
                    output.liveLeases.insert(lease)
                    if input.reachable, input.leaseTTLs[lease] == nil { output.unknownLeases.insert(lease) }
                }
                if let check = input.leaders.writability(of: location) {
                    output.liveLeaderships.insert(check.key)
                    if case .waitingForWrites = routing, !check.probes.isEmpty { output.uncheckedLeaders[check.key] = check }
                }
            }
            var plan = InstancePlan(location: location, directives: d, managed: state.isManaged(instance.name), routing: routing,
                                    maxClientConn: caps[instance.name] ?? d.maxClientConn, dcsRead: input.synced, observedAt: input.observedAt)
            if d.routeTo == .replica { plan.replicas = replicaRoute(location: location, routing: routing, directives: d, input: input) }
            plan.listenBlocked = refusals[instance.name]
            plan.locationChoice = choice
            plan.dcsUnreachable = dcsUnreachable
            plan.fenceClock = fenceClock
            output.plans[instance.name] = plan
        }
        return output
    }

    /// Where an instance of `location` routes, and when that answer changes by itself: with the
    /// DCS unreachable and `dcs_failure_policy: fence`, the leader is trusted until its lease,
    /// counted from the DCS's last linearizable answer, has run out. With the outage and lease
    /// then, for the log.
    static func routing(at location: String, directives: EffectiveDirectives,
                        input: Input) -> (InstancePlan.Routing, ContinuousClock.Instant?, (Duration, Duration)?) {
        let resolution = input.leaders.leader(of: location)
        var routing: InstancePlan.Routing
        switch resolution {
        case .leader(let target): routing = .leader(target)
        case .none: routing = .noLeader(reason: "no lead master")
        case .unresolvable(_, let reason): routing = .noLeader(reason: reason)
        }
        if let target = resolution.target, let check = input.leaders.writability(of: location) {
            switch writability(check, seen: input.readiness[check.key]) {
            case .writable: break
            case .notNow(let why): routing = .waitingForWrites(target, reason: "lead master \(target.name) \(why)")
            case .never(let why): routing = .readOnlyLeader(name: target.name, reason: "lead master \(target.name) of \(location) is \(why)")
            }
        }
        guard !input.reachable else { return (routing, nil, nil) }
        let outage = input.lastContactAt.map { input.now - $0 } ?? .seconds(1_000_000)
        let lease = resolution.target.flatMap { input.leaseTTLs[$0.lease] } ?? directives.leaderLeaseDuration
        guard directives.dcsFailurePolicy == .fence else { return (routing, nil, (outage, lease)) }
        if outage >= lease {
            return (.fenced(reason: "DCS unreachable for \(seconds(outage)) s, longer than the \(seconds(lease)) s lease"), nil, (outage, lease))
        }
        return (routing, input.now + (lease - outage), (outage, lease))
    }

    /// A replica instance's candidates (none while fenced or before the DCS is read), the lead
    /// master as fallback if it is asked for and there is no candidate, and why clients wait if
    /// neither.
    static func replicaRoute(location: String?, routing: InstancePlan.Routing, directives: EffectiveDirectives, input: Input) -> ReplicaRoute {
        guard let location, input.synced else {
            return ReplicaRoute(set: ReplicaSet(), fallback: nil, reason: routing.reason ?? "no location")
        }
        if case .fenced(let reason) = routing { return ReplicaRoute(set: ReplicaSet(), fallback: nil, reason: "fenced, \(reason)") }
        let set = input.leaders.replicas(of: location, maxLag: directives.maxReplicaLag)
        guard set.candidates.isEmpty else { return ReplicaRoute(set: set, fallback: nil, reason: nil) }
        let why = set.noCandidateReason(location: location, maxLag: directives.maxReplicaLag)
        if directives.replicaFallback == .leadMaster, let leader = routing.serving {
            return ReplicaRoute(set: set, fallback: leader, reason: nil)
        }
        return ReplicaRoute(set: set, fallback: nil, reason: why)
    }

    enum Writability: Equatable { case writable, notNow(String), never(String) }

    /// Whether a named lead master takes writes: by its record alone where there is no way to ask
    /// the node; else once the node has said so, until a later record says it may not (a crash,
    /// a restart in place) or the host has another reason to doubt it (a refused connect): then
    /// it is asked again.
    static func writability(_ check: WritabilityCheck, seen: LeaderReadiness?) -> Writability {
        switch check.record {
        case .neverWritable(let why): return .never(why)
        case .writable where check.probes.isEmpty: return .writable
        case .notWritable(let why) where check.probes.isEmpty: return .notNow("does not take writes now: \(why)")
        case .writable, .notWritable:
            switch seen {
            case nil: return .notNow("named, not yet accepting writes (still promoting)")
            case .doubted(let why)?: return .notNow("does not take writes now: \(why)")
            case .takesWrites(let revision)?:
                if case .notWritable(let why) = check.record, check.recordRevision > revision { return .notNow("does not take writes now: \(why)") }
                return .writable
            }
        }
    }

    static func seconds(_ d: Duration) -> String {
        let tenths = (d.milliseconds + 50) / 100
        return "\(tenths / 10).\(tenths % 10)"
    }
}

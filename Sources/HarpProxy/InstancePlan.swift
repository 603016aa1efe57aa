import HarpCluster
import HarpConfig

/// What one instance should be doing now: computed by the host from the DCS snapshot, the local
/// configuration and the clock, then handed whole to the instance's mode (level-triggered).
public struct InstancePlan: Sendable, Equatable {
    public enum Routing: Sendable, Equatable {
        /// Send clients to this lead master.
        case leader(LeaderTarget)
        /// This is the lead master, and its sessions stay; but it may not take writes now (still
        /// promoting, or restarted read-only after a crash): new clients wait up to `hold_timeout`
        /// until it does.
        case waitingForWrites(LeaderTarget, reason: String)
        /// No lead master known: hold new clients up to `hold_timeout`.
        case noLeader(reason: String)
        /// The lead master never takes writes (a standby cluster's leader): new clients are
        /// refused at once, saying so.
        case readOnlyLeader(name: String, reason: String)
        /// The DCS has been unreachable longer than the lease: route nowhere until it is back.
        case fenced(reason: String)

        /// The lead master whose sessions these are: the one served, or waited for.
        public var target: LeaderTarget? {
            switch self {
            case .leader(let t), .waitingForWrites(let t, _): return t
            case .noLeader, .readOnlyLeader, .fenced: return nil
            }
        }

        /// Where new clients go now: the lead master, once it takes writes.
        public var serving: LeaderTarget? {
            if case .leader(let t) = self { return t }
            return nil
        }

        /// Why new clients are not sent anywhere now; nil while they are.
        public var reason: String? {
            switch self {
            case .leader: return nil
            case .waitingForWrites(_, let r), .noLeader(let r), .readOnlyLeader(_, let r), .fenced(let r): return r
            }
        }
    }

    /// The location whose lead master the instance follows (it may change on a reload); nil
    /// while an instance that names none has none to follow (`routing` says why).
    public var location: String?
    public var directives: EffectiveDirectives
    /// False when the DCS's `managed` key says "false": the mode then keeps its current target
    /// and connections and ignores `routing`.
    public var managed: Bool
    public var routing: Routing
    /// `max_client_conn`, lowered if the process cannot hold that many descriptors.
    public var maxClientConn: Int
    /// False until the DCS has been read once: "no lead master" then means "not known yet".
    public var dcsRead = true
    /// When the host saw the DCS change behind this plan: the start of reaction-time measurements.
    public var observedAt: ContinuousClock.Instant
    /// For a replica instance (`route_to: replica`): the members clients may go to, and why
    /// the others may not; nil for a lead-master instance.
    public var replicas: ReplicaRoute? = nil
    /// Set when another instance of the process holds the listener this one's directives ask
    /// for: the mode must not bind it, and keeps whatever listener it has.
    public var listenBlocked: String? = nil

    // Notes for the host's log, which modes do not read (left out of `==`).

    /// For an instance that names no location: how it was chosen, or why there is none.
    public var locationChoice: LocationChoice? = nil
    /// The DCS does not answer now; with `fence`, the outage so far and the lease it may last.
    public var dcsUnreachable = false
    public var fenceClock: (outage: Duration, lease: Duration)? = nil

    /// The listener the directives ask for.
    public var listenAddress: String { directives.listenAddress }
    public var listenPort: Int { directives.listenPort }

    /// The state name in status records and logs.
    public var stateName: String {
        if !managed { return "unmanaged" }
        if let replicas, !isFenced {
            if !replicas.set.candidates.isEmpty { return "routing-replicas" }
            return replicas.fallback == nil ? "no-replica" : "replica-fallback"
        }
        switch routing {
        case .leader: return "routing"
        case .waitingForWrites: return "waiting-for-writes"
        case .readOnlyLeader: return "standby-leader"
        case .noLeader: return location == nil ? "no-location" : "no-leader"
        case .fenced: return "fenced"
        }
    }

    var isFenced: Bool { if case .fenced = routing { return true } else { return false } }

    public static func == (a: InstancePlan, b: InstancePlan) -> Bool {
        a.location == b.location && a.directives == b.directives && a.managed == b.managed && a.routing == b.routing && a.maxClientConn == b.maxClientConn && a.dcsRead == b.dcsRead
            && a.listenBlocked == b.listenBlocked && a.replicas == b.replicas
    }
}

/// Where a replica instance sends new clients.
public struct ReplicaRoute: Sendable, Equatable {
    public var set: ReplicaSet
    /// The lead master, when no replica is a candidate and `replica_fallback: lead_master`.
    public var fallback: LeaderTarget? = nil
    /// Why new clients wait (no candidate, no fallback); nil while they are sent somewhere.
    public var reason: String? = nil

    /// Where new clients may go now: the candidates, else the fallback.
    public var targets: [LeaderTarget] {
        if !set.candidates.isEmpty { return set.candidates.map(\.target) }
        return fallback.map { [$0] } ?? []
    }

    /// Members whose sessions stay: the candidates, those only lagging or tagged out, and the
    /// fallback in use.
    public var keepsSessions: Set<String> {
        var keep = set.keepsSessions
        if let fallback { keep.insert(fallback.name) }
        return keep
    }
}

/// Client counters of one instance, as status reports them.
public struct ClientCounters: Sendable, Equatable {
    /// Connected or waiting for a lead master now.
    public var current = 0
    /// Accepted since start.
    public var total = 0
    /// Turned away: too many clients, no lead master in time, or the lead master unreachable.
    public var refused = 0
    /// `refused` by reason: `max_client_conn`, `no_leader`, `leader_unreachable`, `read_only_leader`.
    public var refusedByReason: [String: Int] = [:]
    /// Bytes passed from clients to the lead master, and back.
    public var bytesToServer = 0
    public var bytesToClient = 0
    /// Sessions closed because the lead master moved or went, or the instance was fenced.
    public var cut = 0
    /// Clients still connecting when the lead master moved, sent on instead of cut.
    public var startedAgain = 0
    /// A replica instance's sessions, by member.
    public var sessionsByMember: [String: Int] = [:]
    public init() {}
}

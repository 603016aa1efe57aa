import HarpConfig
import HarpCluster

/// The directives only the builtin mode reads (defaults in `ProxyDirectives.all`).
extension EffectiveDirectives {
    /// `keepalive`: TCP keepalive idle time and probe interval, on both sides.
    var keepalive: Duration { self[DirectiveKeys.keepalive] ?? .zero }
    /// `timeout`: how long a connect to the lead master may take.
    var connectTimeout: Duration { self[DirectiveKeys.timeout] ?? .zero }
    /// `hold_timeout`: how long a new client waits for a lead master.
    var holdTimeout: Duration { self[DirectiveKeys.holdTimeout] ?? .zero }
}

/// Where an instance's clients go (every mode reads it: pgbouncer refuses `replica`).
extension EffectiveDirectives {
    /// `route_to`: the lead master, or the location's replicas.
    public var routeTo: RouteTo { self[DirectiveKeys.routeTo].flatMap(RouteTo.init) ?? .leadMaster }
    /// `max_replica_lag` in bytes; nil: no bound.
    var maxReplicaLag: Int? { self[DirectiveKeys.maxReplicaLag] }
    /// `replica_fallback`.
    var replicaFallback: ReplicaFallback { self[DirectiveKeys.replicaFallback].flatMap(ReplicaFallback.init) ?? .none }
}

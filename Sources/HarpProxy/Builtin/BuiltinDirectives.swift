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

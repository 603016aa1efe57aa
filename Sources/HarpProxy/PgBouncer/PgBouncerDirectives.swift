import HarpCluster
import HarpConfig

/// The directives only the pgbouncer mode reads (defaults in `ProxyDirectives.all`).
extension EffectiveDirectives {
    var poolMode: PoolMode { self[DirectiveKeys.poolMode].flatMap(PoolMode.init) ?? .session }
    var sessionTransferMode: SessionTransferMode { self[DirectiveKeys.sessionTransferMode].flatMap(SessionTransferMode.init) ?? .wait }
    /// `server_transfer_timeout`: how long a PAUSE may wait before KILL.
    var serverTransferTimeout: Duration { self[DirectiveKeys.serverTransferTimeout] ?? .zero }
    var authType: String { self[DirectiveKeys.authType] ?? "" }
    var defaultPoolSize: Int { self[DirectiveKeys.defaultPoolSize] ?? 0 }
}

import HarpCluster
import HarpConfig

/// The directives only the pgbouncer mode reads (defaults in `ProxyDirectives.all`).
extension EffectiveDirectives {
    var poolMode: PoolMode { string("pool_mode").flatMap(PoolMode.init) ?? .session }
    var sessionTransferMode: SessionTransferMode { string("session_transfer_mode").flatMap(SessionTransferMode.init) ?? .wait }
    /// `server_transfer_timeout`: how long a PAUSE may wait before KILL.
    var serverTransferTimeout: Duration { duration("server_transfer_timeout") ?? .zero }
    var authType: String { string("auth_type") ?? "" }
    var defaultPoolSize: Int { integer("default_pool_size") ?? 0 }
}

import HarpConfig
import Logging
import NIOCore

/// `type: pgbouncer`: harp-proxy launches a real PgBouncer for the instance and drives it through
/// its admin console: PAUSE while the lead master moves, repoint `[databases]`, RELOAD, RESUME.
/// Clients keep their connection to PgBouncer; only the server connection behind it is new.
public final class PgBouncerMode: ProxyMode {
    public static let typeName = "pgbouncer"
    /// Clients connect to PgBouncer, a process of its own with its own descriptor limit.
    public static let holdsClientConnections = false

    private let driver: PgBouncerDriver

    public init(instance: InstanceConfiguration, context: ModeContext, logger: Logger) {
        driver = PgBouncerDriver(instance: instance, logger: logger)
    }

    public func apply(_ plan: InstancePlan) { driver.apply(plan) }

    public func listener() async -> ListenerStatus {
        let published = driver.snapshot
        return ListenerStatus(listening: published.listening, error: published.listenError)
    }

    /// Clients PgBouncer holds now, active or waiting. PgBouncer counts no logins or refusals.
    public func counters() async -> ClientCounters {
        var counters = ClientCounters()
        if let summary = driver.snapshot.summary {
            counters.current = summary.clActive + summary.clWaiting
            counters.bytesToServer = summary.bytesReceived
            counters.bytesToClient = summary.bytesSent
        }
        return counters
    }

    /// PgBouncer's pools (`pool` in the status record, `harp_proxy_pgbouncer_*` gauges) and the
    /// pooling settings in force, which harpctl shows.
    public func report() async -> ModeReport {
        var report = ModeReport()
        if let d = driver.desiredDirectives {
            report.fields = ["pool_mode": .string(d.poolMode.rawValue), "auth_type": .string(d.authType),
                             "default_pool_size": .integer(d.defaultPoolSize)]
        }
        guard let pool = driver.snapshot.summary else { return report }
        report.fields["pool"] = pool.field
        report.gauges = [
            .init("harp_proxy_pgbouncer_clients", [("state", "active")], Double(pool.clActive), help: "PgBouncer clients (SHOW POOLS)"),
            .init("harp_proxy_pgbouncer_clients", [("state", "waiting")], Double(pool.clWaiting), help: "PgBouncer clients (SHOW POOLS)"),
            .init("harp_proxy_pgbouncer_servers", [("state", "active")], Double(pool.svActive), help: "PgBouncer server connections (SHOW POOLS)"),
            .init("harp_proxy_pgbouncer_servers", [("state", "idle")], Double(pool.svIdle), help: "PgBouncer server connections (SHOW POOLS)"),
            .init("harp_proxy_pgbouncer_paused", [], pool.paused ? 1 : 0, help: "1 while PgBouncer is paused"),
        ]
        return report
    }

    public func shutdown() async { await driver.stop() }
}

/// What the admin console says of an instance's pools, as status records carry it.
public struct PoolSummary: Sendable, Equatable {
    public var clActive = 0
    public var clWaiting = 0
    public var svActive = 0
    public var svIdle = 0
    public var totalXactCount = 0
    /// Microseconds, over every query PgBouncer has counted.
    public var avgQueryTime = 0
    public var paused = false
    /// Bytes PgBouncer received from clients and sent to them (`SHOW STATS`).
    public var bytesReceived = 0
    public var bytesSent = 0

    public init() {}

    var field: ModeReport.Field {
        .object(["cl_active": .integer(clActive), "cl_waiting": .integer(clWaiting), "sv_active": .integer(svActive), "sv_idle": .integer(svIdle),
                 "total_xact_count": .integer(totalXactCount), "avg_query_time": .integer(avgQueryTime), "paused": .boolean(paused)])
    }
}

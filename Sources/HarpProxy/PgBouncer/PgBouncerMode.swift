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

    public init(instance: InstanceConfiguration, group: any EventLoopGroup, loop: any EventLoop, logger: Logger) {
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

    public func poolSummary() async -> PoolSummary? { driver.snapshot.summary }

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

    public var json: [String: Any] {
        ["cl_active": clActive, "cl_waiting": clWaiting, "sv_active": svActive, "sv_idle": svIdle,
         "total_xact_count": totalXactCount, "avg_query_time": avgQueryTime, "paused": paused]
    }
}

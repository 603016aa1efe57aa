import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging

/// The status record each instance writes to `/harp/<cluster>/proxies/<name>/status` every
/// `monitor_interval`, on a lease of three intervals: if the process dies, the record goes.
public struct StatusRecord: Sendable {
    public var name: String
    public var location: String
    public var type: String
    public var managed: Bool
    public var listen: String?
    public var leader: LeaderTarget?
    public var state: String
    public var clients: ClientCounters
    public var maxClientConn: Int
    public var since: Date
    public var pool: PoolSummary?
    /// pgbouncer mode: the pooling settings in force, which harpctl shows (local ones included).
    public var pooling: [String: DirectiveValue] = [:]

    public init(_ status: InstanceStatus) {
        name = status.name
        location = status.location
        type = status.type
        managed = status.plan?.managed ?? true
        listen = status.listen
        leader = status.plan?.routing.target
        state = status.plan?.stateName ?? "stopped"
        clients = status.clients
        maxClientConn = status.plan?.maxClientConn ?? 0
        since = status.since
        pool = status.pool
        if type == PgBouncerMode.typeName, let d = status.plan?.directives {
            pooling = ["pool_mode": .string(d.string("pool_mode") ?? "session"), "auth_type": .string(d.string("auth_type") ?? "md5"),
                       "default_pool_size": .integer(d.integer("default_pool_size") ?? 25)]
        }
    }

    /// The JSON object, as the DCS record and the control socket show it.
    public var json: [String: Any] {
        var object: [String: Any] = [
            "name": name, "location": location, "type": type, "managed": managed,
            "listen": listen ?? NSNull(),
            "leader": leader.map { ["name": $0.name, "address": "\($0.address)"] as [String: Any] } ?? NSNull(),
            "state": state,
            "clients": ["current": clients.current, "total": clients.total, "refused": clients.refused],
            "max_client_conn": maxClientConn,
            "since": since.formatted(Date.ISO8601FormatStyle()),
        ]
        if let pool { object["pool"] = pool.json }
        object.merge(pooling.mapValues { $0.jsonValue }) { $1 }
        return object
    }

    public var jsonText: String {
        let data = (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// Writes one instance's status record on its own lease, renewing or replacing the lease as needed.
actor StatusWriter {
    private let client: EtcdClient
    private let key: String
    private let logger: Logger
    private var lease: (id: Int64, ttl: Int64)?
    private var finished = false

    init(client: EtcdClient, key: String, logger: Logger) {
        self.client = client
        self.key = key
        self.logger = logger
    }

    func write(_ record: StatusRecord, interval: Duration) async {
        guard !finished else { return }
        let ttl = max(2, Int64((interval * 3).seconds.rounded(.up)))
        do {
            if let current = lease, current.ttl == ttl {
                if try await client.leaseKeepAlive(current.id) <= 0 { lease = nil }
            } else {
                lease = nil
            }
            if lease == nil {
                let granted = try await client.leaseGrant(ttl: ttl)
                lease = (granted.id, ttl)
            }
            // A report that was under way when the instance stopped must not bring it back.
            guard !finished, let lease else { return }
            try await client.put(key, record.jsonText, lease: lease.id)
        } catch {
            lease = nil
            logger.debug("status record not written", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }

    /// The last record of a stopped instance (nil: none, the record goes at once). It stays on
    /// the lease, which is no longer renewed; later writes, from reports under way, are dropped.
    func finish(_ record: StatusRecord?, interval: Duration) async {
        guard !finished else { return }
        if let record {
            await write(record, interval: interval)
        } else if let lease {
            try? await client.leaseRevoke(lease.id)
        }
        finished = true
        lease = nil
    }
}

import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging

/// The status record each instance writes to `/harp/<cluster>/proxies/<name>/status` every
/// `monitor_interval`, on a lease of three intervals: if the process dies, the record goes.
public struct StatusRecord: Sendable {
    public var name: String
    public var location: String?
    public var type: String
    public var managed: Bool
    public var listen: String?
    public var listenError: String?
    public var leader: LeaderTarget?
    /// The TTL of the lead master's lease, once looked up: how long the proxy trusts it with the
    /// DCS unreachable (`dcs_failure_policy: fence`).
    public var leaderLeaseTTL: Duration?
    public var state: String
    public var clients: ClientCounters
    public var maxClientConn: Int
    public var since: Date
    /// Why the instance routes nowhere, when it does not.
    public var reason: String?
    /// The mode's own fields (pgbouncer: its pools and pooling settings).
    public var modeFields: [String: ModeReport.Field]
    /// A replica instance's candidates and excluded members.
    public var replicas: ReplicaRoute?

    public init(_ status: InstanceStatus) {
        name = status.name
        location = status.location
        type = status.type
        managed = status.plan?.managed ?? true
        listen = status.listen
        listenError = status.listenError
        leader = status.plan?.routing.target
        leaderLeaseTTL = status.leaderLeaseTTL
        state = status.state
        clients = status.clients
        maxClientConn = status.plan?.maxClientConn ?? 0
        since = status.since
        modeFields = status.report.fields
        reason = status.plan?.routing.reason
        replicas = status.plan?.replicas
        if let replicas, !(status.plan?.isFenced ?? false) { reason = replicas.reason }
    }

    /// The JSON object, as the DCS record and the control socket show it.
    public var json: [String: Any] {
        var object: [String: Any] = [
            "name": name, "location": location ?? NSNull(), "type": type, "managed": managed,
            "listen": listen ?? NSNull(),
            "leader": leader.map { leader -> [String: Any] in
                var object: [String: Any] = ["name": leader.name, "address": "\(leader.address)"]
                if let ttl = leaderLeaseTTL { object["lease_ttl_s"] = ttl.components.seconds }
                return object
            } ?? NSNull(),
            "state": state,
            "clients": ["current": clients.current, "total": clients.total, "refused": clients.refused],
            "max_client_conn": maxClientConn,
            "since": since.formatted(Date.ISO8601FormatStyle()),
        ]
        if let listenError { object["listen_error"] = listenError }
        if let replicas {
            let sessions = clients.sessionsByMember
            object["route_to"] = "replica"
            object["replicas"] = [
                "candidates": replicas.set.candidates.map { c -> [String: Any] in
                    ["name": c.name, "address": "\(c.target.address)", "lag_bytes": c.lag ?? NSNull(), "sessions": sessions[c.name] ?? 0]
                },
                "excluded": replicas.set.excluded.map { e -> [String: Any] in
                    ["name": e.name, "reason": e.reason, "lag_bytes": e.lag ?? NSNull(), "sessions": sessions[e.name] ?? 0, "sessions_cut": e.cutsSessions]
                },
                "fallback": replicas.fallback.map { $0.name } ?? NSNull(),
            ] as [String: Any]
        }
        // Why new clients are not sent to a lead master now.
        if let plan = reason { object["reason"] = plan }
        object.merge(modeFields.mapValues(\.json)) { shared, _ in shared }
        return object
    }

    public var jsonText: String {
        let data = (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// Writes one instance's status record on its own lease, renewing or replacing the lease as needed.
/// Writes go one after another, in the order asked for (an actor alone would interleave them at
/// each etcd call), so that the last record asked for is the one etcd keeps.
actor StatusWriter {
    private let client: EtcdClient
    private let key: String
    private let logger: Logger
    private var lease: (id: Int64, ttl: Int64)?
    private var finished = false
    /// The last write asked for; the next one waits for it.
    private var tail: Task<Void, Never>?

    init(client: EtcdClient, key: String, logger: Logger) {
        self.client = client
        self.key = key
        self.logger = logger
    }

    func write(_ record: StatusRecord, interval: Duration) async {
        guard !finished else { return }
        let ttl = max(2, Int64((interval * 3).seconds.rounded(.up)))
        await serially { await self.put(record, ttl: ttl) }
    }

    /// The last record of a stopped instance, on the lease it has, which is no longer renewed
    /// (nil: none, and the record goes at once). Writes asked for before go first; later ones
    /// are dropped. `reachable` false: the DCS is not answering, and nothing is tried.
    func finish(_ record: StatusRecord?, interval: Duration, reachable: Bool) async {
        guard !finished else { return }
        finished = true
        guard reachable else { return }
        let ttl = lease?.ttl ?? max(2, Int64((interval * 3).seconds.rounded(.up)))
        await serially {
            if let record {
                await self.put(record, ttl: ttl)
            } else if let lease = await self.lease {
                try? await self.client.leaseRevoke(lease.id)
            }
        }
    }

    private func serially(_ body: @escaping @Sendable () async -> Void) async {
        let previous = tail
        let task = Task {
            await previous?.value
            await body()
        }
        tail = task
        await task.value
    }

    private func put(_ record: StatusRecord, ttl: Int64) async {
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
            guard let lease else { return }
            try await client.put(key, record.jsonText, lease: lease.id)
        } catch {
            lease = nil
            logger.debug("status record not written", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }
}

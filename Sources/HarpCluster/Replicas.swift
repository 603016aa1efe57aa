/// The members of a location a read-only instance (`route_to: replica`) may send clients to,
/// and the others with why not: one snapshot's answer, as a plain value.
public struct ReplicaSet: Sendable, Equatable {
    /// A replica clients may go to: its address, and how far it is behind the lead master by
    /// the DCS (bytes; nil where the source does not say).
    public struct Candidate: Sendable, Equatable {
        public var target: LeaderTarget
        public var lag: Int?

        public init(target: LeaderTarget, lag: Int? = nil) {
            self.target = target
            self.lag = lag
        }

        public var name: String { target.name }
    }

    /// A member that gets no new client, and why.
    public struct Excluded: Sendable, Equatable {
        public var name: String
        public var reason: String
        /// Its sessions are cut: it leads now, or its PostgreSQL is not running. False when it
        /// only lags or is tagged out: its sessions stay.
        public var cutsSessions: Bool
        public var lag: Int?
        /// It is the lead master: never a replica candidate, and not a reason worth giving.
        public var leads: Bool

        public init(name: String, reason: String, cutsSessions: Bool, lag: Int? = nil, leads: Bool = false) {
            self.name = name
            self.reason = reason
            self.cutsSessions = cutsSessions
            self.lag = lag
            self.leads = leads
        }
    }

    public var candidates: [Candidate]
    public var excluded: [Excluded]

    public init(candidates: [Candidate] = [], excluded: [Excluded] = []) {
        self.candidates = candidates.sorted { $0.name < $1.name }
        self.excluded = excluded.sorted { $0.name < $1.name }
    }

    /// Members whose sessions stay: the candidates, and those excluded that only lag or are tagged out.
    public var keepsSessions: Set<String> {
        Set(candidates.map(\.name)).union(excluded.filter { !$0.cutsSessions }.map(\.name))
    }

    /// Why no member is a candidate, in a few words ("none running", or each member's reason).
    public func noCandidateReason(location: String, maxLag: Int?) -> String {
        let others = excluded.filter { !$0.leads }
        guard !others.isEmpty else { return "no replica of \(location) in the DCS" }
        let reasons = others.map { "\($0.name) \($0.reason)" }.joined(separator: "; ")
        if let maxLag, others.allSatisfy({ $0.lag.map { $0 > maxLag } ?? false }) {
            return "no replica of \(location) within max_replica_lag (\(maxLag) bytes): " + reasons
        }
        return "no replica of \(location) is a candidate: " + reasons
    }
}

extension ClusterState {
    /// HARP's layout: the location's data nodes other than the lead master (a witness holds no
    /// data). HARP's records carry no replication position: `max_replica_lag` cannot apply.
    public func replicas(of location: String, maxLag: Int?) -> ReplicaSet {
        let leader = leaders[location]?.name
        var candidates: [ReplicaSet.Candidate] = []
        var excluded: [ReplicaSet.Excluded] = []
        for node in nodes.values where node.location == location {
            if node.extra["node_type"] == "witness" { continue }
            if node.name == leader {
                excluded.append(.init(name: node.name, reason: "is the lead master", cutsSessions: true, leads: true))
                continue
            }
            switch DSN.address(node.dsn) {
            case .success(let address):
                let database = (try? DSN.parameters(node.dsn).get())?["dbname"].flatMap { $0.isEmpty ? nil : $0 }
                candidates.append(.init(target: LeaderTarget(name: node.name, address: address, database: database)))
            case .failure(let e):
                excluded.append(.init(name: node.name, reason: "bad dsn: \(e.message)", cutsSessions: true))
            }
        }
        return ReplicaSet(candidates: candidates, excluded: excluded)
    }
}

extension PatroniState {
    /// The scope's members other than the leader whose record says they replicate and run
    /// (`replica` or `sync_standby`, `running` or `streaming`), not tagged `noloadbalance`, and
    /// within `maxLag` bytes of the leader's last position in `<scope>/status` (`optime`), by
    /// their own record (`xlog_location` in Patroni 3, `replay_lsn` in 4). Both are written once
    /// per Patroni loop (`loop_wait`), so the lag is as of the last loop.
    public func replicas(of scope: String, maxLag: Int?) -> ReplicaSet {
        let leader = leaders[scope]?.name
        var candidates: [ReplicaSet.Candidate] = []
        var excluded: [ReplicaSet.Excluded] = []
        for (name, member) in members[scope] ?? [:] {
            if name == leader {
                excluded.append(.init(name: name, reason: "is the leader", cutsSessions: true, leads: true))
                continue
            }
            let role = member.role ?? "unknown", state = member.state ?? "unknown"
            guard Self.replicaRoles.contains(role) else {
                // A primary without the key (demoted, or promoted before the key moved): its
                // sessions are read-only clients on a node that may take writes.
                excluded.append(.init(name: name, reason: "has role \(role)", cutsSessions: true))
                continue
            }
            guard Self.runningStates.contains(state) else {
                excluded.append(.init(name: name, reason: "is \(state)", cutsSessions: true))
                continue
            }
            let address: DatabaseAddress
            switch DSN.address(member.connURL) {
            case .success(let a): address = a
            case .failure(let e):
                excluded.append(.init(name: name, reason: "has a bad conn_url: \(e.message)", cutsSessions: true))
                continue
            }
            let lag = optimes[scope].flatMap { optime in member.position.map { max(0, optime - $0) } }
            if member.noLoadBalance {
                excluded.append(.init(name: name, reason: "is tagged noloadbalance", cutsSessions: false, lag: lag))
                continue
            }
            if let maxLag {
                guard let lag else {
                    let why = member.position == nil ? "has no replication position in its record" : "has no leader position (optime) in \(namespace)/\(scope)/status to compare with"
                    excluded.append(.init(name: name, reason: why + ", so its lag is unknown", cutsSessions: false))
                    continue
                }
                if lag > maxLag {
                    excluded.append(.init(name: name, reason: "lags \(lag) bytes behind the leader (max_replica_lag \(maxLag))", cutsSessions: false, lag: lag))
                    continue
                }
            }
            candidates.append(.init(target: LeaderTarget(name: name, address: address), lag: lag))
        }
        return ReplicaSet(candidates: candidates, excluded: excluded)
    }

    /// Patroni 3 and 4 (`sync_standby` is 4's).
    static let replicaRoles = ["replica", "sync_standby"]
    static let runningStates = ["running", "streaming"]
}

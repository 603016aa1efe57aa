import Foundation
import HarpDCS

/// The lead masters Patroni names, decoded from one snapshot of its namespace (etcd v3,
/// Patroni 3 and 4). A location is a Patroni scope:
///
///     <namespace>/<scope>/leader          pg1     the leader's member name, on its lease
///     <namespace>/<scope>/members/pg1     {"conn_url":"postgres://10.0.0.1:5432/postgres","role":"master",...}
///
/// The leader key is the truth; the leader member's `conn_url` gives the address (its user and
/// database are ignored). A leader whose member record is missing or malformed is no leader.
public struct PatroniState: LeaderView {
    public let namespace: String
    /// Each scope's leader key, as written, with its lease.
    public let leaders: [String: LeaderRecord]
    /// Each scope's members' records, by member name.
    public let members: [String: [String: PatroniMember]]
    public let problems: [RecordProblem]
    public let locations: Set<String>
    /// Each scope's leader position at Patroni's last loop (`<scope>/status`'s `optime`), for
    /// replicas' lag.
    public let optimes: [String: Int]
    /// libpq settings to ask a named leader itself whether it is out of recovery (`dcs.patroni_check_dsn`).
    public let checkDSN: String?

    public init(snapshot: DCSSnapshot, namespace: String, checkDSN: String? = nil) {
        self.namespace = namespace
        self.checkDSN = checkDSN
        let prefix = namespace + "/"
        var leaders: [String: LeaderRecord] = [:]
        var members: [String: [String: PatroniMember]] = [:]
        var problems: [RecordProblem] = []
        var scopes: Set<String> = []
        var optimes: [String: Int] = [:]
        for kv in snapshot.values.values where kv.key.hasPrefix(prefix) {
            let path = kv.key.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard let scope = path.first, !scope.isEmpty else { continue }
            switch path.count {
            case 2 where path[1] == "leader":
                let name = kv.value.trimmingCharacters(in: .whitespacesAndNewlines)
                guard !name.isEmpty, !name.contains(where: { $0.isNewline }) else {
                    problems.append(RecordProblem(key: kv.key, reason: "expected a member name, got \(RecordDecoding.preview(kv.value))"))
                    continue
                }
                leaders[scope] = LeaderRecord(name: name, lease: kv.lease, modRevision: kv.modRevision)
                scopes.insert(scope)
            case 3 where path[1] == "members" && !path[2].isEmpty:
                switch PatroniMember.decode(kv) {
                case .success(let member): members[scope, default: [:]][path[2]] = member
                case .failure(let problem): problems.append(problem)
                }
                scopes.insert(scope)
            case 2 where path[1] == "initialize" || path[1] == "config":
                scopes.insert(scope)
            case 2 where path[1] == "status":
                // {"optime": 50331648, ...}; a value not of that form gives no lag, not an error.
                if case .success(let o) = RecordDecoding.object(kv), let optime = o["optime"] as? Int { optimes[scope] = optime }
            default:
                continue  // status, failover, history, sync, and keys of later versions
            }
        }
        self.leaders = leaders
        self.members = members
        self.problems = problems.sorted { $0.key < $1.key }
        locations = scopes
        self.optimes = optimes
    }

    /// The leader's record, read on every change, and the ways to ask the node itself. The
    /// leadership is (scope, member): Patroni restarted under a new lease is the same one.
    public func writability(of scope: String) -> WritabilityCheck? {
        guard let record = leaders[scope], let member = members[scope]?[record.name] else { return nil }
        var probes: [WritabilityProbe] = []
        // With credentials, PostgreSQL is asked itself, at the address the plan routes to.
        if let dsn = checkDSN, let address = try? DSN.address(member.connURL).get() {
            probes.append(.postgres(DirectCheck(address: address, conninfo: dsn)))
        }
        // api_url (http://host:8008/patroni) answers with the role PostgreSQL itself reports:
        // `replica` while it is in recovery. (`/primary` answers 200 as soon as Patroni holds the
        // key, before the promotion has finished.)
        if let api = member.apiURL, api.hasPrefix("http://") {
            probes.append(.httpJSON(url: api, expect: ["role": Self.primaryRoles, "state": ["running"]], label: "Patroni's REST API"))
        }
        return WritabilityCheck(location: scope, member: record.name, record: member.says,
                                recordRevision: member.modRevision, probes: probes)
    }

    /// `master` in Patroni 3, `primary` in Patroni 4.
    static let primaryRoles = ["master", "primary"]

    public func leaderKey(_ scope: String) -> String { "\(namespace)/\(scope)/leader" }
    public func memberKey(_ scope: String, _ name: String) -> String { "\(namespace)/\(scope)/members/\(name)" }

    public func leader(of scope: String) -> LeaderResolution {
        guard let record = leaders[scope] else { return .none }
        guard let member = members[scope]?[record.name] else {
            return .unresolvable(name: record.name, reason: "member '\(record.name)' named by \(leaderKey(scope)) has no usable record at \(memberKey(scope, record.name))")
        }
        switch DSN.address(member.connURL) {
        case .success(let address):
            return .leader(LeaderTarget(name: record.name, address: address, lease: record.lease))
        case .failure(let e):
            return .unresolvable(name: record.name, reason: "bad conn_url for member '\(record.name)': \(e.message)")
        }
    }
}

/// One member's record, as far as a proxy needs it.
public struct PatroniMember: Sendable, Equatable {
    public var connURL: String
    /// `master` (Patroni 3), `primary` (Patroni 4), `replica`, ...
    public var role: String?
    public var state: String?
    /// Patroni's REST API of the member (`http://host:8008/patroni`).
    public var apiURL: String?
    /// The record's `mod_revision`.
    public var modRevision: Int64 = 0
    /// Where its replay is, in bytes of WAL: `replay_lsn` (Patroni 4) or `xlog_location` (3).
    public var position: Int?
    /// `tags: {noloadbalance: true}`: no read clients for it (as Patroni's `/replica` check says).
    public var noLoadBalance = false

    /// Whether the member, as leader, takes writes by its record.
    var says: WritabilityCheck.RecordSays {
        let role = role ?? "unknown", state = state ?? "running"
        if role == "standby_leader" {
            return .neverWritable("a standby cluster's leader (role standby_leader): it replicates from another cluster and takes no writes")
        }
        guard PatroniState.primaryRoles.contains(role) else { return .notWritable("its record says role \(role), state \(state)") }
        guard state == "running" else { return .notWritable("its record says state \(state)") }
        return .writable
    }

    static func decode(_ kv: KeyValue) -> Result<PatroniMember, RecordProblem> {
        RecordDecoding.object(kv).flatMap { o in
            guard let url = o["conn_url"] as? String, !url.isEmpty else {
                return .failure(RecordProblem(key: kv.key, reason: "a member needs \"conn_url\" (a string)"))
            }
            guard url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") else {
                return .failure(RecordProblem(key: kv.key, reason: "\"conn_url\" is not a postgres:// URL: \(RecordDecoding.preview(url))"))
            }
            if let role = o["role"], !(role is String) {
                return .failure(RecordProblem(key: kv.key, reason: "\"role\" must be a string"))
            }
            let tags = o["tags"] as? [String: Any]
            let noLoadBalance = (tags?["noloadbalance"] as? Bool) ?? ((tags?["noloadbalance"] as? String).map { ["true", "on", "yes"].contains($0.lowercased()) } ?? false)
            return .success(PatroniMember(connURL: url, role: o["role"] as? String, state: o["state"] as? String, apiURL: o["api_url"] as? String,
                                          modRevision: kv.modRevision, position: (o["replay_lsn"] as? Int) ?? (o["xlog_location"] as? Int),
                                          noLoadBalance: noLoadBalance))
        }
    }
}

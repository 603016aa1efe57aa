import HarpDCS

/// Where each location's lead master comes from, as one DCS snapshot says: HARP's keys
/// (`ClusterState`) or Patroni's (`PatroniState`). The planner asks only this.
public protocol LeaderView: Sendable {
    /// The lead master of `location`, with its address and lease, or why there is none.
    func leader(of location: String) -> LeaderResolution
    /// Every location this source knows.
    var locations: Set<String> { get }
    /// Values that were not what the source expects; each is treated as absent.
    var problems: [RecordProblem] { get }
    /// How to tell whether the lead master of `location` takes writes: nil when the source
    /// names a leader only once it does, and never leaves one named that does not (HARP's).
    func writability(of location: String) -> WritabilityCheck?
    /// The members of `location` a read-only instance may send clients to, and the others with
    /// why not (`Replicas.swift`).
    func replicas(of location: String, maxLag: Int?) -> ReplicaSet
}

/// A named lead master that may not take writes at every moment it is named: Patroni takes its
/// leader key before `pg_ctl promote` has finished, restarts a crashed leader read-only before
/// promoting it again, and a standby cluster's leader never takes writes. New clients are held
/// while it may not; the host asks the node itself (`probes`) when it may again.
public struct WritabilityCheck: Sendable, Equatable {
    /// Names this leadership: the location and the member. The same member named again (its
    /// manager restarted under a new lease) is the same leadership, and keeps its sessions.
    public var key: String
    public var location: String
    /// The member's name, for the log.
    public var member: String
    /// What the leader's own record says of it now.
    public var record: RecordSays
    /// The revision of that record: one written after the node was seen to take writes, that
    /// says it may not, makes the host ask again.
    public var recordRevision: Int64
    /// Ways to ask the node itself, the first preferred; none: the record alone decides.
    public var probes: [WritabilityProbe]

    public enum RecordSays: Sendable, Equatable {
        /// The running primary (Patroni writes this as it takes the key, before the promotion
        /// has finished: with a probe, the node itself has the last word).
        case writable
        /// Not now: restarting, starting, crashed, in recovery; why, in a few words.
        case notWritable(String)
        /// Never, by design (a standby cluster's leader): new clients are refused at once.
        case neverWritable(String)
    }

    public init(location: String, member: String, record: RecordSays, recordRevision: Int64 = 0, probes: [WritabilityProbe] = []) {
        key = "\(location)|\(member)"
        self.location = location
        self.member = member
        self.record = record
        self.recordRevision = recordRevision
        self.probes = probes
    }
}

/// One way to ask a node whether it takes writes, knowing no particular leader source.
public enum WritabilityProbe: Sendable, Equatable {
    /// `SELECT pg_is_in_recovery()` on a connection of the proxy's own.
    case postgres(DirectCheck)
    /// `GET url` (plain HTTP) whose JSON body has, for each field, one of the listed values;
    /// `label` names the endpoint in the log ("Patroni's REST API").
    case httpJSON(url: String, expect: [String: [String]], label: String)

    /// What asks, for the log.
    public var label: String {
        switch self {
        case .postgres: return "PostgreSQL"
        case .httpJSON(_, _, let label): return label
        }
    }

    /// What a yes from this probe is, for the log.
    public var answer: String {
        switch self {
        case .postgres: return "PostgreSQL: pg_is_in_recovery() is false"
        case .httpJSON(_, let expect, let label):
            return "\(label): " + expect.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.joined(separator: "|"))" }.joined(separator: ", ")
        }
    }
}

/// A connection of the proxy's own to a named lead master: the configured libpq settings (user,
/// dbname, password or passfile, sslmode, ...), at the member's address.
public struct DirectCheck: Sendable, Equatable {
    public var address: DatabaseAddress
    /// libpq settings without host or port (`dcs.patroni_check_dsn`).
    public var conninfo: String

    public init(address: DatabaseAddress, conninfo: String) {
        self.address = address
        self.conninfo = conninfo
    }
}

extension LeaderView {
    /// The location an instance that names none follows: the only one the source holds. A
    /// location once followed is kept (`following`) while the source still holds it or holds no
    /// other.
    public func location(following: String?) -> LocationChoice {
        if let following { return .follow(following, warnAbout: locations.subtracting([following]).sorted()) }
        guard let only = locations.first else {
            return .wait(reason: "no location in the DCS yet: waiting for the first one (or set proxy.location)")
        }
        guard locations.count == 1 else {
            return .ambiguous(reason: "the DCS holds several locations (\(locations.sorted().joined(separator: ", "))): set proxy.location, or a top-level location, to the one to follow")
        }
        return .follow(only, warnAbout: [])
    }
}

extension ClusterState: LeaderView {
    /// HARP Manager names a lead master once it is one.
    public func writability(of location: String) -> WritabilityCheck? { nil }
}

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
    /// Whether the lead master of `location` is known to accept writes: nil when the source
    /// names a leader only once it does (HARP's); else a check the host makes before routing.
    func writability(of location: String) -> WritabilityCheck?
}

/// A named lead master that may still be promoting (Patroni takes its leader key before
/// `pg_ctl promote` has finished): clients are held until it accepts writes.
public struct WritabilityCheck: Sendable, Equatable {
    /// Names this leadership: the location, the member and the leader key's revision, so that
    /// a new election of the same member is checked again.
    public var key: String
    /// The member's name, for the log.
    public var member: String
    /// The member's record says it is the running primary, and there is no way to ask (Patroni
    /// writes that record as it takes the key, before the promotion has finished).
    public var recordSaysPrimary: Bool
    /// Where to ask whether it is the primary now (Patroni's REST API, `GET /patroni`: its
    /// `role` comes from `pg_is_in_recovery()`).
    public var primaryCheckURL: String?
    /// How to ask PostgreSQL itself (`pg_is_in_recovery()` on a connection of the proxy's own),
    /// when the configuration gives credentials for it.
    public var direct: DirectCheck?

    public init(key: String, member: String = "", recordSaysPrimary: Bool, primaryCheckURL: String?, direct: DirectCheck? = nil) {
        self.key = key
        self.member = member
        self.recordSaysPrimary = recordSaysPrimary
        self.primaryCheckURL = primaryCheckURL
        self.direct = direct
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

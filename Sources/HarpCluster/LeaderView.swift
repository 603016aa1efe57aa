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

extension ClusterState: LeaderView {}

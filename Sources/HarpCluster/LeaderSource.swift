import HarpConfig
import HarpDCS

/// A leader source: the plugin that turns DCS records into the lead master of each location,
/// with its address and lease (a `LeaderView`). A source is one type, in a file of its own, with
/// its name and its keys in the dcs stanza (`LeaderSourceKind`), and one line in
/// `LeaderSources.all`; the configuration loader, the host, the daemon and harpctl ask only this.
public protocol LeaderSource: LeaderSourceKind, Sendable {
    /// Made from the configuration's setting, which names this source and holds its keys.
    init(setting: LeaderSourceSetting)
    /// The key prefix of the source's own records, followed by a watch of its own; nil when they
    /// live in the cluster's prefix (HARP's layout).
    var ownPrefix: String? { get }
    /// The lead masters, from the cluster's state and, with an `ownPrefix`, the latest snapshot
    /// of it (empty until first read).
    func leaders(cluster: ClusterState, own: DCSSnapshot) -> any LeaderView
    /// Why `harpctl promote` must not write HARP's leader key, when something else owns
    /// leadership; nil when it may.
    var promotionRefusal: String? { get }
}

public enum LeaderSources {
    /// Every source this build knows; `dcs.leader_source` selects one by name.
    public static let all: [any LeaderSource.Type] = [HarpLeaderSource.self, PatroniLeaderSource.self]

    /// The source the setting names.
    public static func make(_ setting: LeaderSourceSetting) -> any LeaderSource {
        guard let type = all.first(where: { $0.name == setting.name }) else {
            preconditionFailure("leader source '\(setting.name)' passed the configuration check but is not in LeaderSources.all")
        }
        return type.init(setting: setting)
    }
}

/// HARP's own layout: `locations/<location>/leader` and `nodes/<node>`, under the cluster's
/// prefix, written by HARP Manager (or `harpctl promote`). The default.
public struct HarpLeaderSource: LeaderSource {
    public static let name = "harp"
    public static let options: [LeaderSourceOption] = []
    public init(setting: LeaderSourceSetting) {}
    public var ownPrefix: String? { nil }
    public func leaders(cluster: ClusterState, own: DCSSnapshot) -> any LeaderView { cluster }
    public var promotionRefusal: String? { nil }
}

import HarpConfig
import HarpDCS

/// Patroni's layout: `<namespace>/<scope>/leader` (the member's name, on Patroni's lease) and
/// `<namespace>/<scope>/members/<name>` (its `conn_url` and `api_url`). A location is a Patroni
/// scope. Patroni owns leadership: `harpctl promote` refuses, and a newly named leader is routed
/// to only once its REST API reports it out of recovery (`PatroniState.writability`).
public struct PatroniLeaderSource: LeaderSource {
    public static let name = "patroni"
    /// Patroni's `namespace` (`dcs.patroni_namespace`).
    public let namespace: String

    public init(setting: LeaderSourceSetting) {
        if case .patroni(let namespace) = setting { self.namespace = namespace } else { namespace = LeaderSourceSetting.defaultPatroniNamespace }
    }

    public var ownPrefix: String? { namespace + "/" }

    public func leaders(cluster: ClusterState, own: DCSSnapshot) -> any LeaderView {
        PatroniState(snapshot: own, namespace: namespace)
    }

    public var promotionRefusal: String? {
        "leadership belongs to Patroni here (dcs.leader_source: patroni): use patronictl switchover"
    }
}

import HarpConfig
import HarpDCS

/// Patroni's layout: `<namespace>/<scope>/leader` (the member's name, on Patroni's lease) and
/// `<namespace>/<scope>/members/<name>` (its `conn_url` and `api_url`). A location is a Patroni
/// scope. Patroni owns leadership: `harpctl promote` refuses, and a newly named leader is routed
/// to only once its REST API reports it out of recovery (`PatroniState.writability`).
public struct PatroniLeaderSource: LeaderSource {
    public static let name = "patroni"
    public static let defaultNamespace = "/service"
    /// `dcs.patroni_namespace`: Patroni's own `namespace` setting, a path; a trailing slash is the
    /// same namespace.
    public static let options = [
        LeaderSourceOption(key: "patroni_namespace", defaultValue: defaultNamespace, expected: "a path such as /service") { text in
            let trimmed = text.hasSuffix("/") && text.count > 1 ? String(text.dropLast()) : text
            let valid = trimmed.hasPrefix("/") && trimmed.count > 1 && trimmed.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value != 0x7f }
            return valid ? trimmed : nil
        },
    ]
    /// Patroni's `namespace` (`dcs.patroni_namespace`).
    public let namespace: String

    public init(setting: LeaderSourceSetting) {
        namespace = setting.options["patroni_namespace"] ?? Self.defaultNamespace
    }

    public var ownPrefix: String? { namespace + "/" }

    public func leaders(cluster: ClusterState, own: DCSSnapshot) -> any LeaderView {
        PatroniState(snapshot: own, namespace: namespace)
    }

    public var promotionRefusal: String? {
        "leadership belongs to Patroni here (dcs.leader_source: patroni): use patronictl switchover"
    }
}

import Foundation
import HarpConfig
import HarpDCS

/// Patroni's layout: `<namespace>/<scope>/leader` (the member's name, on Patroni's lease) and
/// `<namespace>/<scope>/members/<name>` (its `conn_url` and `api_url`). A location is a Patroni
/// scope. Patroni owns leadership: `harpctl promote` refuses, and a newly named leader is routed
/// to only once it is out of recovery, as its REST API reports or, with `patroni_check_dsn`, as it
/// answers itself (`PatroniState.writability`).
public struct PatroniLeaderSource: LeaderSource {
    public static let name = "patroni"
    public static let defaultNamespace = "/service"
    /// `dcs.patroni_namespace`: Patroni's own `namespace` setting, a path; a trailing slash is the
    /// same namespace.
    public static let options = [
        LeaderSourceOption(key: "patroni_namespace", defaultValue: defaultNamespace, expected: "a path such as /service") { text in
            let trimmed = text.hasSuffix("/") && text.count > 1 ? String(text.dropLast()) : text
            let valid = trimmed.hasPrefix("/") && trimmed.count > 1 && trimmed.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value != 0x7f }
            return valid ? .success(trimmed) : .failure(.init())
        },
        LeaderSourceOption(key: "patroni_check_dsn", defaultValue: "", expected: "a libpq connection string such as 'user=harp_check dbname=postgres'",
                           secret: true, check: checkDSN),
    ]
    /// Patroni's `namespace` (`dcs.patroni_namespace`).
    public let namespace: String
    /// `dcs.patroni_check_dsn`: how harp-proxy may connect to a member itself to ask whether it
    /// still is in recovery (user, dbname, password or passfile, sslmode, ...); the member's
    /// `conn_url` gives host and port. Without it, only Patroni's REST API is asked.
    public let checkDSN: String?

    public init(setting: LeaderSourceSetting) {
        namespace = setting.options["patroni_namespace"] ?? Self.defaultNamespace
        checkDSN = setting.options["patroni_check_dsn"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A DSN for the check: libpq's syntax, a user named (libpq's default is the OS user, which
    /// differs between root, postgres and a service account), and no address of its own.
    static func checkDSN(_ text: String) -> Result<String, LeaderSourceOption.Problem> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return .success("") }
        switch DSN.parameters(trimmed) {
        case .failure(let e): return .failure(.init("not a libpq connection string: \(e.message)"))
        case .success(let p):
            if let key = ["host", "hostaddr", "port"].first(where: { !(p[$0] ?? "").isEmpty }) {
                return .failure(.init("'\(key)' does not belong here: harp-proxy connects to the address in each member's conn_url"))
            }
            guard !(p["user"] ?? "").isEmpty else {
                return .failure(.init("name the user (user=...): libpq's default is the OS user, which differs between root, postgres and a service account"))
            }
            return .success(trimmed)
        }
    }

    public var ownPrefix: String? { namespace + "/" }

    public func leaders(cluster: ClusterState, own: DCSSnapshot) -> any LeaderView {
        PatroniState(snapshot: own, namespace: namespace, checkDSN: checkDSN)
    }

    public var promotionRefusal: String? {
        "leadership belongs to Patroni here (dcs.leader_source: patroni): use patronictl switchover"
    }
}

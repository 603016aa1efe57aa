/// `dcs.leader_source`: whose keys name each location's lead master, and that source's own keys
/// in the dcs stanza (`patroni_namespace`), checked. Proxy directives and status records stay in
/// HARP's layout under `cluster.name` whatever the source.
public struct LeaderSourceSetting: Sendable, Equatable, CustomStringConvertible {
    /// The source's name, as `dcs.leader_source` gives it (lower case).
    public var name: String
    /// The source's own keys, each with the value given or its default.
    public var options: [String: String]
    /// Those of its keys whose values may hold a secret (a password in a DSN): never shown.
    public var secretKeys: Set<String>

    public init(name: String, options: [String: String] = [:], secretKeys: Set<String> = []) {
        self.name = name
        self.options = options
        self.secretKeys = secretKeys
    }

    /// HARP's own keys: the default.
    public static let harp = LeaderSourceSetting(name: "harp")

    public var description: String {
        let shown = options.filter { !$0.value.isEmpty }.sorted { $0.key < $1.key }
            .map { secretKeys.contains($0.key) ? "\($0.key) set" : "\($0.key) \($0.value)" }
        return shown.isEmpty ? name : "\(name) (" + shown.joined(separator: ", ") + ")"
    }
}

/// What the configuration knows of a leader source: its name and the keys it reads from the dcs
/// stanza. A source declares both in its own file (`LeaderSource` in HarpCluster refines this);
/// the loader is handed the registry, so that adding a source touches no configuration code.
public protocol LeaderSourceKind {
    /// The value of `dcs.leader_source` that selects it.
    static var name: String { get }
    /// Its own keys in the dcs stanza, named after it (`patroni_namespace`).
    static var options: [LeaderSourceOption] { get }
}

/// One key a leader source reads from the dcs stanza.
public struct LeaderSourceOption: Sendable {
    public let key: String
    public let defaultValue: String
    /// What a valid value looks like, for the error message ("a path such as /service").
    public let expected: String
    /// The value may hold a secret: neither the log nor an error message shows it.
    public let secret: Bool
    /// The value as the source uses it, or why it is not valid (completing "expected ...").
    public let check: @Sendable (String) -> Result<String, Problem>

    /// Why a value is not valid; with no `reason`, `expected` says it.
    public struct Problem: Error, Sendable {
        public var reason: String?
        public init(_ reason: String? = nil) { self.reason = reason }
    }

    public init(key: String, defaultValue: String, expected: String, secret: Bool = false,
                check: @escaping @Sendable (String) -> Result<String, Problem>) {
        self.key = key
        self.defaultValue = defaultValue
        self.expected = expected
        self.secret = secret
        self.check = check
    }
}

/// `dcs.leader_source`: whose keys name each location's lead master, and that source's own keys
/// in the dcs stanza (`patroni_namespace`), checked. Proxy directives and status records stay in
/// HARP's layout under `cluster.name` whatever the source.
public struct LeaderSourceSetting: Sendable, Equatable, CustomStringConvertible {
    /// The source's name, as `dcs.leader_source` gives it (lower case).
    public var name: String
    /// The source's own keys, each with the value given or its default.
    public var options: [String: String]

    public init(name: String, options: [String: String] = [:]) {
        self.name = name
        self.options = options
    }

    /// HARP's own keys: the default.
    public static let harp = LeaderSourceSetting(name: "harp")

    public var description: String {
        options.isEmpty ? name : "\(name) (" + options.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
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
    /// The value as the source uses it, or nil when it is not valid.
    public let check: @Sendable (String) -> String?

    public init(key: String, defaultValue: String, expected: String, check: @escaping @Sendable (String) -> String?) {
        self.key = key
        self.defaultValue = defaultValue
        self.expected = expected
        self.check = check
    }
}

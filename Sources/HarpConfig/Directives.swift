/// A directive's value once parsed and checked against its `DirectiveSpec`.
public enum DirectiveValue: Sendable, Equatable, CustomStringConvertible {
    case string(String)
    case integer(Int)
    case duration(Duration)
    case boolean(Bool)

    public var description: String {
        switch self {
        case .string(let s): return s
        case .integer(let i): return String(i)
        case .duration(let d): return formatDuration(d)
        case .boolean(let b): return b ? "true" : "false"
        }
    }

    /// The value as JSON would hold it: what harpctl writes and the DCS stores.
    public var jsonValue: any Sendable {
        switch self {
        case .string(let s): return s
        case .integer(let i): return i
        case .duration(let d): return formatDuration(d)
        case .boolean(let b): return b
        }
    }
}

/// A value as it arrives, before it is checked: a YAML scalar or a JSON string, number or boolean.
public enum RawValue: Sendable, Equatable {
    case text(String)
    case number(Double)
    case boolean(Bool)

    public var display: String {
        switch self {
        case .text(let s): return "'\(s)'"
        case .number(let n): return n == n.rounded() && abs(n) < 1e15 ? String(Int(n)) : String(n)
        case .boolean(let b): return b ? "true" : "false"
        }
    }
}

/// The unit that a bare number means for a duration directive (HARP mixes seconds and milliseconds).
public enum DurationUnit: Sendable {
    case milliseconds, seconds

    var name: String { self == .milliseconds ? "milliseconds" : "seconds" }
}

public enum DirectiveKind: Sendable {
    case string
    case integer(ClosedRange<Int>)
    /// A bare number in `unit`, or a number with a suffix: `250ms`, `5s`, `1m`.
    case duration(DurationUnit)
    case choice([String])
    case boolean
    /// A size in bytes: a bare number, or a number with PostgreSQL's units (`kB`, `MB`, `GB`, `TB`:
    /// powers of 1024), as `max_wal_size` takes them.
    case bytes

    /// The expected form, for error messages.
    public var expectation: String {
        switch self {
        case .string: return "a string without control characters"
        case .integer(let r): return "an integer from \(r.lowerBound) to \(r.upperBound)"
        case .duration(let u): return "a duration: a number of \(u.name), or a number with ms, s or m (e.g. \(u == .milliseconds ? "250ms" : "5s"))"
        case .choice(let c): return "one of " + c.joined(separator: ", ")
        case .boolean: return "on/off or true/false"
        case .bytes: return "a size: a number of bytes, or a number with kB, MB, GB or TB (e.g. 16MB)"
        }
    }
}

/// The modes that read a directive.
public enum DirectiveScope: String, Sendable {
    case every = "both", builtin, pgbouncer
}

/// What a directive is called, what it takes, its default, which modes read it and whether
/// HARP has it: the one place that says so.
public struct DirectiveSpec: Sendable {
    public let name: String
    public let kind: DirectiveKind
    public let defaultValue: DirectiveValue?
    public let scope: DirectiveScope
    /// False for this implementation's additions, which HARP does not have.
    public let harp: Bool
    public let summary: String

    init(_ name: String, _ kind: DirectiveKind, _ defaultValue: DirectiveValue?, _ scope: DirectiveScope, harp: Bool = true, _ summary: String) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.scope = scope
        self.harp = harp
        self.summary = summary
    }

    /// Checks a raw value. The error text names the expected form; the caller adds where it came from.
    public func parse(_ raw: RawValue) -> Result<DirectiveValue, DirectiveValueError> {
        Self.parse(raw, as: kind).mapError { DirectiveValueError(directive: name, value: raw, expected: $0) }
    }

    static func parse(_ raw: RawValue, as kind: DirectiveKind) -> Result<DirectiveValue, ExpectationFailure> {
        let fail = Result<DirectiveValue, ExpectationFailure>.failure(ExpectationFailure(kind.expectation))
        switch kind {
        case .string:
            guard case .text(let s) = raw else {
                if case .number = raw { return .success(.string(raw.display)) }
                return fail
            }
            // Values end up in generated files and logs: a control character could forge a line.
            if s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) { return fail }
            return .success(.string(s))
        case .integer(let range):
            let value: Int?
            switch raw {
            case .number(let n): value = n == n.rounded() && abs(n) < 1e15 ? Int(n) : nil
            case .text(let s): value = Int(s.trimmingSpaces)
            case .boolean: value = nil
            }
            guard let value, range.contains(value) else { return fail }
            return .success(.integer(value))
        case .duration(let unit):
            guard let d = parseDuration(raw, unit: unit), d >= .zero else { return fail }
            return .success(.duration(d))
        case .choice(let choices):
            guard case .text(let s) = raw, let match = choices.first(where: { $0.lowercased() == s.lowercased() }) else { return fail }
            return .success(.string(match))
        case .boolean:
            guard let b = parseBoolean(raw) else { return fail }
            return .success(.boolean(b))
        case .bytes:
            guard let size = parseBytes(raw) else { return fail }
            return .success(.integer(size))
        }
    }
}

struct ExpectationFailure: Error { let expected: String; init(_ e: String) { expected = e } }

/// A directive value that does not fit: says which directive, what was given, and what it takes.
public struct DirectiveValueError: Error, Sendable, CustomStringConvertible {
    public let directive: String
    public let value: RawValue
    public let expected: String

    init(directive: String, value: RawValue, expected: ExpectationFailure) {
        self.directive = directive
        self.value = value
        self.expected = expected.expected
    }

    public var description: String { "invalid value \(value.display) for '\(directive)': expected \(expected)" }
}

/// HARP's proxy directives: set in the DCS (`proxies/global/config`, `proxies/<name>/config`) or as
/// local defaults in a `proxy:` stanza. Names and defaults follow HARP 2; `hold_timeout`,
/// `dcs_failure_policy`, `pool_mode` are this implementation's additions.
public enum ProxyDirectives {
    public static let all: [DirectiveSpec] = [
        .init("type", .choice(["builtin", "pgbouncer"]), .string("builtin"), .every, "proxy mode"),
        .init("listen_address", .string, .string("0.0.0.0"), .every, "address the proxy listens on"),
        .init("listen_port", .integer(1...65535), .integer(6432), .every, "port the proxy listens on"),
        .init("max_client_conn", .integer(1...1_000_000), .integer(100), .every, "most client connections at once"),
        .init("keepalive", .duration(.seconds), .duration(.seconds(5)), .builtin, "TCP keepalive idle time on leader and client sockets"),
        .init("timeout", .duration(.seconds), .duration(.seconds(1)), .builtin, "connect timeout to the lead master"),
        .init("hold_timeout", .duration(.milliseconds), .duration(.milliseconds(5000)), .builtin, harp: false, "how long a new client waits for a lead master to appear, or to listen again"),
        .init("dcs_failure_policy", .choice(DCSFailurePolicy.allCases.map(\.rawValue)), .string(DCSFailurePolicy.fence.rawValue), .every, harp: false,
              "what to do when the DCS is unreachable past the lease"),
        .init("leader_lease_duration", .duration(.seconds), .duration(.seconds(6)), .every, "lease TTL assumed when the leader key has no lease"),
        .init("monitor_interval", .duration(.seconds), .duration(.seconds(5)), .every, "how often the proxy writes its status"),
        .init("database_name", .string, nil, .pgbouncer, "client-facing database name, * for any"),
        .init("default_pool_size", .integer(1...100_000), .integer(25), .pgbouncer, "server connections per pool"),
        .init("auth_file", .string, .string("/etc/harp/userlist.txt"), .pgbouncer, "userlist file"),
        .init("auth_type", .choice(["md5", "scram-sha-256", "cert", "pam", "plain", "trust", "any", "hba"]), .string("md5"), .pgbouncer, "client authentication"),
        .init("auth_user", .string, nil, .pgbouncer, "user that runs auth_query"),
        .init("auth_query", .string, nil, .pgbouncer, "query that looks up a password"),
        .init("ignore_startup_parameters", .string, .string("extra_float_digits"), .pgbouncer, "startup parameters to ignore"),
        .init("client_tls_sslmode", .choice(tlsModes), .string("disable"), .pgbouncer, "TLS towards clients"),
        .init("client_tls_ca_file", .string, nil, .pgbouncer, "client TLS CA"),
        .init("client_tls_cert_file", .string, nil, .pgbouncer, "client TLS certificate"),
        .init("client_tls_key_file", .string, nil, .pgbouncer, "client TLS key"),
        .init("client_tls_protocols", .string, .string("secure"), .pgbouncer, "client TLS protocols"),
        .init("server_tls_sslmode", .choice(tlsModes), .string("disable"), .pgbouncer, "TLS towards PostgreSQL"),
        .init("server_tls_ca_file", .string, nil, .pgbouncer, "server TLS CA"),
        .init("server_tls_cert_file", .string, nil, .pgbouncer, "server TLS certificate"),
        .init("server_tls_key_file", .string, nil, .pgbouncer, "server TLS key"),
        .init("server_tls_protocols", .string, .string("secure"), .pgbouncer, "server TLS protocols"),
        .init("pool_mode", .choice(PoolMode.allCases.map(\.rawValue)), .string(PoolMode.session.rawValue), .pgbouncer, harp: false,
              "session or transaction pooling (only transaction pooling moves a connected client to a new lead master)"),
        .init("session_transfer_mode", .choice(SessionTransferMode.allCases.map(\.rawValue)), .string(SessionTransferMode.wait.rawValue), .pgbouncer,
              "on a switchover, wait (PAUSE, KILL after server_transfer_timeout), fast (KILL at once) or reconnect (RELOAD without PAUSE)"),
        .init("server_transfer_timeout", .duration(.seconds), .duration(.seconds(30)), .pgbouncer, "PAUSE wait before KILL"),
        .init("route_to", .choice(RouteTo.allCases.map(\.rawValue)), .string(RouteTo.leadMaster.rawValue), .every, harp: false,
              "where clients go: the location's lead master, or its replicas (builtin only)"),
        .init("max_replica_lag", .bytes, nil, .builtin, harp: false,
              "with route_to: replica, the most a replica may be behind the lead master (none set: no bound)"),
        .init("replica_fallback", .choice(ReplicaFallback.allCases.map(\.rawValue)), .string(ReplicaFallback.none.rawValue), .builtin, harp: false,
              "with route_to: replica, where clients go when no replica is a candidate: none (held, then refused) or lead_master"),
    ]

    /// A directive's default, as the table above says.
    public static func defaultValue(_ name: String) -> DirectiveValue? { byName[name]?.defaultValue }

    static let tlsModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

    public static let byName: [String: DirectiveSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
    public static var names: [String] { all.map(\.name) }

    public static func spec(_ name: String) -> DirectiveSpec? { byName[name] }
}

/// A directive's name with the type of its value, for the code that reads it: a misspelt key
/// fails to compile, and `DirectiveKeys.all` is checked against the table by a test.
public struct DirectiveKey<Value>: Sendable {
    public let name: String
    init(_ name: String) { self.name = name }
}

/// The directives the code reads by name.
public enum DirectiveKeys {
    public static let type = DirectiveKey<String>("type")
    public static let listenAddress = DirectiveKey<String>("listen_address")
    public static let listenPort = DirectiveKey<Int>("listen_port")
    public static let maxClientConn = DirectiveKey<Int>("max_client_conn")
    public static let dcsFailurePolicy = DirectiveKey<String>("dcs_failure_policy")
    public static let leaderLeaseDuration = DirectiveKey<Duration>("leader_lease_duration")
    public static let monitorInterval = DirectiveKey<Duration>("monitor_interval")
    // builtin
    public static let keepalive = DirectiveKey<Duration>("keepalive")
    public static let timeout = DirectiveKey<Duration>("timeout")
    public static let holdTimeout = DirectiveKey<Duration>("hold_timeout")
    // pgbouncer
    public static let poolMode = DirectiveKey<String>("pool_mode")
    public static let sessionTransferMode = DirectiveKey<String>("session_transfer_mode")
    public static let serverTransferTimeout = DirectiveKey<Duration>("server_transfer_timeout")
    public static let authType = DirectiveKey<String>("auth_type")
    public static let authFile = DirectiveKey<String>("auth_file")
    public static let authUser = DirectiveKey<String>("auth_user")
    public static let databaseName = DirectiveKey<String>("database_name")
    public static let defaultPoolSize = DirectiveKey<Int>("default_pool_size")
    // replicas
    public static let routeTo = DirectiveKey<String>("route_to")
    public static let maxReplicaLag = DirectiveKey<Int>("max_replica_lag")
    public static let replicaFallback = DirectiveKey<String>("replica_fallback")

    /// Every key above, with its value type's name, for the check against the table.
    public static let all: [(name: String, type: String)] = [
        (type.name, "String"), (listenAddress.name, "String"), (listenPort.name, "Int"), (maxClientConn.name, "Int"),
        (dcsFailurePolicy.name, "String"), (leaderLeaseDuration.name, "Duration"), (monitorInterval.name, "Duration"),
        (keepalive.name, "Duration"), (timeout.name, "Duration"), (holdTimeout.name, "Duration"),
        (poolMode.name, "String"), (sessionTransferMode.name, "String"), (serverTransferTimeout.name, "Duration"),
        (authType.name, "String"), (authFile.name, "String"), (authUser.name, "String"), (databaseName.name, "String"),
        (defaultPoolSize.name, "Int"), (routeTo.name, "String"), (maxReplicaLag.name, "Int"), (replicaFallback.name, "String"),
    ]
}

/// `dcs_failure_policy`: what an instance does once the DCS has been unreachable past the lease.
public enum DCSFailurePolicy: String, Sendable, CaseIterable {
    /// Route nowhere until the DCS is back: never a write to a node that may no longer lead.
    case fence
    /// Route on to the last known lead master.
    case keep
}

/// `route_to`: where an instance sends its clients.
public enum RouteTo: String, Sendable, CaseIterable {
    /// The location's lead master (HARP's only way).
    case leadMaster = "lead_master"
    /// The location's replicas that are running, not tagged out, and within `max_replica_lag`.
    case replica
}

/// `replica_fallback`: where a replica instance's clients go when no replica is a candidate.
public enum ReplicaFallback: String, Sendable, CaseIterable {
    /// Nowhere: held up to `hold_timeout`, then refused with the reason.
    case none
    /// The lead master (reads may then land on the primary; never the default).
    case leadMaster = "lead_master"
}

/// `pool_mode` (pgbouncer).
public enum PoolMode: String, Sendable, CaseIterable {
    case session, transaction
}

/// `session_transfer_mode` (pgbouncer).
public enum SessionTransferMode: String, Sendable, CaseIterable {
    case wait, fast, reconnect
}

/// A set of checked directive values, keyed by directive name.
public struct DirectiveSet: Sendable, Equatable {
    public private(set) var values: [String: DirectiveValue]

    public init(_ values: [String: DirectiveValue] = [:]) { self.values = values }

    public subscript(name: String) -> DirectiveValue? {
        get { values[name] }
        set { values[name] = newValue }
    }

    public var isEmpty: Bool { values.isEmpty }
}

// MARK: - Scalar helpers shared by the YAML and JSON paths

func parseBoolean(_ raw: RawValue) -> Bool? {
    switch raw {
    case .boolean(let b): return b
    case .number(let n): return n == 1 ? true : n == 0 ? false : nil
    case .text(let s):
        switch s.lowercased() {
        case "on", "true", "yes", "y", "1": return true
        case "off", "false", "no", "n", "0": return false
        default: return nil
        }
    }
}

/// `1048576` (bytes), `512kB`, `16MB`, `1GB`, `1TB`, with or without a space and in any case;
/// PostgreSQL's units, powers of 1024. Whole numbers of bytes only.
public func parseBytes(_ raw: RawValue) -> Int? {
    switch raw {
    case .boolean: return nil
    case .number(let n): return n.isFinite && n >= 0 && n == n.rounded() && n < 1e18 ? Int(n) : nil
    case .text(let text):
        let t = text.trimmingSpaces
        let digits = t.prefix { $0.isNumber }
        guard !digits.isEmpty, let number = Int(digits) else { return nil }
        let unit = String(t.dropFirst(digits.count)).trimmingSpaces.lowercased()
        let factors: [String: Int] = ["": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40]
        guard let factor = factors[unit] else { return nil }
        let (product, overflow) = number.multipliedReportingOverflow(by: factor)
        return overflow ? nil : product
    }
}

/// `5` (in `unit`), `250ms`, `5s`, `1.5s`, `2m`, `1h`.
public func parseDuration(_ raw: RawValue, unit: DurationUnit) -> Duration? {
    func scaled(_ n: Double, _ u: DurationUnit) -> Duration {
        u == .milliseconds ? .microseconds(Int64((n * 1000).rounded())) : .microseconds(Int64((n * 1_000_000).rounded()))
    }
    switch raw {
    case .boolean: return nil
    case .number(let n): return n.isFinite && n >= 0 && n < 1e12 ? scaled(n, unit) : nil
    case .text(let text):
        let s = text.trimmingSpaces.lowercased()
        let suffixes: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, seconds) in suffixes where s.hasSuffix(suffix) {
            guard let n = Double(s.dropLast(suffix.count)), n.isFinite, n >= 0, n < 1e9 else { return nil }
            return .microseconds(Int64((n * seconds * 1_000_000).rounded()))
        }
        guard let n = Double(s), n.isFinite, n >= 0, n < 1e12 else { return nil }
        return scaled(n, unit)
    }
}

/// The shortest exact spelling: `250ms`, `5s`, `1500ms`.
public func formatDuration(_ d: Duration) -> String {
    let ms = d.milliseconds
    if ms % 1000 == 0 { return "\(ms / 1000)s" }
    return "\(ms)ms"
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    public var seconds: Double { Double(milliseconds) / 1000 }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

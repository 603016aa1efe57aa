import Foundation
import HarpConfig
import HarpDCS

/// The cluster as one DCS snapshot describes it, decoded and checked. Plain values: each proxy
/// instance computes what it should do from this and its local configuration.
public struct ClusterState: Sendable {
    public let layout: DCSLayout
    public let revision: Int64
    public let nodes: [String: NodeRecord]
    /// The lead master record of each location that has one.
    public let leaders: [String: LeaderRecord]
    public let globalDirectives: DirectiveSet
    /// Each proxy's own directives, by proxy name.
    public let proxyDirectives: [String: DirectiveSet]
    /// Proxies whose `managed` key says "false".
    public let unmanaged: Set<String>
    /// Values that were not what the layout expects; each is treated as absent.
    public let problems: [RecordProblem]
    /// Every location the DCS knows: those with a key under `locations/`, and those nodes name.
    public let locations: Set<String>

    public init(snapshot: DCSSnapshot, layout: DCSLayout) {
        self.layout = layout
        revision = snapshot.revision
        var nodes: [String: NodeRecord] = [:]
        var leaders: [String: LeaderRecord] = [:]
        var proxies: [String: DirectiveSet] = [:]
        var global = DirectiveSet()
        var unmanaged: Set<String> = []
        var problems: [RecordProblem] = []
        var locations: Set<String> = []

        for kv in snapshot.values.values {
            guard kv.key.hasPrefix(layout.prefix) else { continue }
            let path = kv.key.dropFirst(layout.prefix.count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            if path.first == "locations", path.count >= 2, !path[1].isEmpty { locations.insert(path[1]) }
            switch path.first {
            case "nodes" where path.count == 2:
                switch RecordDecoding.node(kv, name: path[1]) {
                case .success(let node): nodes[node.name] = node
                case .failure(let p): problems.append(p)
                }
            case "locations" where path.count == 3 && path[2] == "leader":
                switch RecordDecoding.leader(kv) {
                case .success(let leader): leaders[path[1]] = leader
                case .failure(let p): problems.append(p)
                }
            case "proxies" where path.count == 3 && path[2] == "config":
                let (set, found) = Self.directives(kv)
                problems += found
                if path[1] == "global" { global = set } else { proxies[path[1]] = set }
            case "proxies" where path.count == 3 && path[2] == "managed":
                switch Self.managedFlag(kv) {
                case .success(false): unmanaged.insert(path[1])
                case .success(true): break
                case .failure(let p): problems.append(p)
                }
            default:
                continue  // status records, the cluster record and keys of later versions
            }
        }
        self.nodes = nodes
        self.leaders = leaders
        globalDirectives = global
        proxyDirectives = proxies
        self.unmanaged = unmanaged
        self.problems = problems.sorted { $0.key < $1.key }
        self.locations = locations.union(nodes.values.map(\.location))
    }

    // MARK: - Questions an instance asks

    /// The lead master of `location`: the leader key names a node, the node's DSN gives the address.
    public func leader(of location: String) -> LeaderResolution {
        guard let record = leaders[location] else { return .none }
        guard let node = nodes[record.name] else {
            return .unresolvable(name: record.name, reason: "node '\(record.name)' named by \(layout.leader(location: location)) has no record at \(layout.node(record.name))")
        }
        guard node.location == location else {
            return .unresolvable(name: record.name, reason: "node '\(record.name)' belongs to location '\(node.location)', not '\(location)'")
        }
        switch DSN.address(node.dsn) {
        case .success(let address):
            let database = (try? DSN.parameters(node.dsn).get())?["dbname"].flatMap { $0.isEmpty ? nil : $0 }
            return .leader(LeaderTarget(name: node.name, address: address, database: database, lease: record.lease))
        case .failure(let e): return .unresolvable(name: record.name, reason: "bad dsn for node '\(record.name)': \(e.message)")
        }
    }

    /// The directives in force for an instance: its DCS config, then global, then the local
    /// `proxy` stanza, then HARP's defaults.
    public func effectiveDirectives(for instance: InstanceConfiguration) -> EffectiveDirectives {
        EffectiveDirectives(instance: proxyDirectives[instance.name] ?? DirectiveSet(), global: globalDirectives, local: instance.directives)
    }

    public func isManaged(_ instance: String) -> Bool { !unmanaged.contains(instance) }

    // MARK: - Decoding

    static func directives(_ kv: KeyValue) -> (DirectiveSet, [RecordProblem]) {
        var set = DirectiveSet()
        var problems: [RecordProblem] = []
        switch RecordDecoding.object(kv) {
        case .failure(let p): return (set, [p])
        case .success(let object):
            for (name, value) in object.sorted(by: { $0.key < $1.key }) {
                guard let spec = ProxyDirectives.spec(name) else {
                    if name == "name" { continue }  // HARP's bootstrap repeats the instance name
                    let hint = closestName(to: name, among: ProxyDirectives.names).map { "; did you mean '\($0)'?" } ?? ""
                    problems.append(RecordProblem(key: kv.key, reason: "unknown directive '\(name)'\(hint)"))
                    continue
                }
                guard let raw = rawValue(value) else {
                    problems.append(RecordProblem(key: kv.key, reason: "'\(name)' must be a string, number or boolean"))
                    continue
                }
                switch spec.parse(raw) {
                case .success(let v): set[name] = v
                case .failure(let e): problems.append(RecordProblem(key: kv.key, reason: e.description))
                }
            }
        }
        return (set, problems)
    }

    static func managedFlag(_ kv: KeyValue) -> Result<Bool, RecordProblem> {
        var text = kv.value.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.hasPrefix("\""), text.hasSuffix("\""), text.count >= 2 { text = String(text.dropFirst().dropLast()) }
        switch text.lowercased() {
        case "true": return .success(true)
        case "false": return .success(false)
        default: return .failure(RecordProblem(key: kv.key, reason: "expected \"true\" or \"false\", got \(RecordDecoding.preview(kv.value))"))
        }
    }

    /// A JSON value as a directive's raw input. JSON booleans arrive as NSNumber; their type
    /// code is "c", which tells `true` from `1`.
    static func rawValue(_ value: Any) -> RawValue? {
        if let s = value as? String { return .text(s) }
        if let n = value as? NSNumber {
            return String(cString: n.objCType) == "c" ? .boolean(n.boolValue) : .number(n.doubleValue)
        }
        return nil
    }
}

/// Which location an instance without `proxy.location` follows.
public enum LocationChoice: Sendable, Equatable {
    /// This one; `warnAbout` lists other locations that appeared since it was chosen.
    case follow(String, warnAbout: [String])
    /// None yet: the DCS holds no location.
    case wait(reason: String)
    /// Several, and no way to tell which: the instance stays down until the configuration says.
    case ambiguous(reason: String)
}

/// Where an instance should send its clients, as far as the DCS says.
public struct LeaderTarget: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var address: DatabaseAddress
    /// The DSN's `dbname`, if it names one: where a pgbouncer instance sends its database.
    public var database: String?
    /// The etcd lease under the leader key, 0 for none: its TTL bounds how long the proxy may
    /// trust this leader while the DCS is unreachable.
    public var lease: Int64

    public init(name: String, address: DatabaseAddress, database: String? = nil, lease: Int64 = 0) {
        self.name = name
        self.address = address
        self.database = database
        self.lease = lease
    }

    public var description: String { "\(name) (\(address))" }

    /// Whether clients would be sent to the same place: the same node at the same address. A new
    /// lease under the same leader is not a move and must not cut anyone.
    public func sameRoute(as other: LeaderTarget?) -> Bool {
        guard let other else { return false }
        return name == other.name && address == other.address && database == other.database
    }
}

/// Whether clients that went to `old` must now go elsewhere: the one place that decides that a
/// lead master moved (or went, or came). A new lease under the same node at the same address is
/// not a move.
public func leaderMoved(from old: LeaderTarget?, to new: LeaderTarget?) -> Bool {
    guard let new else { return old != nil }
    return !new.sameRoute(as: old)
}

public enum LeaderResolution: Sendable, Equatable {
    case leader(LeaderTarget)
    /// No leader key: the location has no lead master now.
    case none
    /// A leader key that cannot be followed; `reason` says why. Treated as no leader.
    case unresolvable(name: String?, reason: String)

    public var target: LeaderTarget? {
        if case .leader(let t) = self { return t }
        return nil
    }
}

/// Where a directive's value came from, highest precedence first.
public enum DirectiveSource: String, Sendable {
    case instanceDCS = "dcs:instance", globalDCS = "dcs:global", localFile = "config", defaultValue = "default"
}

/// Every directive's value for one instance after precedence, with typed accessors.
public struct EffectiveDirectives: Sendable, Equatable {
    public let values: [String: DirectiveValue]
    public let sources: [String: DirectiveSource]

    public init(instance: DirectiveSet, global: DirectiveSet, local: DirectiveSet) {
        var values: [String: DirectiveValue] = [:]
        var sources: [String: DirectiveSource] = [:]
        for spec in ProxyDirectives.all {
            let layers: [(DirectiveValue?, DirectiveSource)] = [
                (instance[spec.name], .instanceDCS), (global[spec.name], .globalDCS),
                (local[spec.name], .localFile), (spec.defaultValue, .defaultValue),
            ]
            if let (value, source) = layers.first(where: { $0.0 != nil }) {
                values[spec.name] = value
                sources[spec.name] = source
            }
        }
        self.values = values
        self.sources = sources
    }

    public subscript(name: String) -> DirectiveValue? { values[name] }

    /// The value in force: every directive with a default has one, since `init` fills them in
    /// from the table; the table's default stands in for one that is missing all the same.
    private func value(_ name: String) -> DirectiveValue? { values[name] ?? ProxyDirectives.defaultValue(name) }

    public subscript(_ key: DirectiveKey<String>) -> String? {
        if case .string(let s) = value(key.name) { return s }
        return nil
    }

    public subscript(_ key: DirectiveKey<Int>) -> Int? {
        if case .integer(let i) = value(key.name) { return i }
        return nil
    }

    public subscript(_ key: DirectiveKey<Duration>) -> Duration? {
        if case .duration(let d) = value(key.name) { return d }
        return nil
    }

    /// A string directive named at run time (PgBouncer's pass-through settings, by the table).
    public func string(named name: String) -> String? {
        if case .string(let s) = value(name) { return s }
        return nil
    }

    // The directives every mode reads; their defaults are in `ProxyDirectives.all`. Those of one
    // mode are read in that mode (`BuiltinDirectives.swift`, `PgBouncerSettings.swift`).
    public var type: String { self[DirectiveKeys.type] ?? "" }
    public var listenAddress: String { self[DirectiveKeys.listenAddress] ?? "" }
    public var listenPort: Int { self[DirectiveKeys.listenPort] ?? 0 }
    public var maxClientConn: Int { self[DirectiveKeys.maxClientConn] ?? 0 }
    public var dcsFailurePolicy: DCSFailurePolicy { self[DirectiveKeys.dcsFailurePolicy].flatMap(DCSFailurePolicy.init) ?? .fence }
    public var leaderLeaseDuration: Duration { self[DirectiveKeys.leaderLeaseDuration] ?? .zero }
    public var monitorInterval: Duration { self[DirectiveKeys.monitorInterval] ?? .zero }
}

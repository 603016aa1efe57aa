import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show cluster state.",
        subcommands: [GetCluster.self, GetNodes.self, GetNode.self, GetLocations.self, GetLocation.self, GetLeader.self,
                      GetProxies.self, GetProxy.self])
}

struct GetCluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster", abstract: "The cluster and whether it is managed.")
    @OptionGroup var options: DCSOptions

    func run() async throws {
        let access = try ClusterAccess(options)
        let snapshot = try await access.snapshot()
        let record = snapshot[access.layout.clusterKey].flatMap { jsonObject($0.value) } ?? [:]
        var listing = Listing(headers: ["Name", "Enabled"], keys: ["name", "is_managed"])
        listing.rows = [["name": access.cluster, "is_managed": record["is_managed"] as? Bool ?? true]]
        listing.print(options.output, single: true)
    }
}

/// A node as `get nodes` shows it.
func nodeRow(_ node: NodeRecord, _ state: ClusterState, cluster: String) -> [String: Any] {
    let leading = state.leaders[node.location]?.name == node.name
    return ["cluster": cluster, "name": node.name, "location": node.location, "role": leading ? "lead master" : "shadow",
            "dsn": maskedDSN(node.dsn)]
}

let nodeHeaders = (["Cluster", "Name", "Location", "Role", "DSN"], ["cluster", "name", "location", "role", "dsn"])

struct GetNodes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "nodes", abstract: "Every node: location, role and DSN (password masked).")
    @OptionGroup var options: DCSOptions

    func run() async throws {
        let access = try ClusterAccess(options)
        var listing = Listing(headers: nodeHeaders.0, keys: nodeHeaders.1)
        if let patroni = try await access.leaders() as? PatroniState {
            // Patroni's members: a location is a scope, the leader key says who leads it.
            listing.rows = patroni.members.sorted { $0.key < $1.key }.flatMap { scope, members in
                members.sorted { $0.key < $1.key }.map { name, member -> [String: Any] in
                    let role = patroni.leaders[scope]?.name == name ? "lead master" : (member.role ?? "member")
                    return ["cluster": access.cluster, "name": name, "location": scope, "role": role, "dsn": maskedDSN(member.connURL)]
                }
            }
            listing.print(options.output)
            return
        }
        let (state, _) = try await access.state()
        listing.rows = state.nodes.values.sorted { $0.name < $1.name }.map { nodeRow($0, state, cluster: access.cluster) }
        listing.print(options.output)
    }
}

struct GetNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "node", abstract: "One node.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The node's name.") var name: String

    func run() async throws {
        let access = try ClusterAccess(options)
        let (state, _) = try await access.state()
        guard let node = state.nodes[name] else { fail("no node '\(name)' (nodes: \(state.nodes.keys.sorted().joined(separator: ", ")))") }
        var listing = Listing(headers: nodeHeaders.0, keys: nodeHeaders.1)
        listing.rows = [nodeRow(node, state, cluster: access.cluster)]
        listing.print(options.output, single: true)
    }
}

func locationRow(_ location: String, _ state: any LeaderView, cluster: String) -> [String: Any] {
    var row: [String: Any] = ["cluster": cluster, "location": location, "leader": NSNull(), "address": NSNull()]
    switch state.leader(of: location) {
    case .leader(let target): row["leader"] = target.name; row["address"] = "\(target.address)"
    case .none: break
    case .unresolvable(let name, let reason): row["leader"] = name ?? NSNull(); row["address"] = "unresolvable: \(reason)"
    }
    return row
}

let locationHeaders = (["Cluster", "Location", "Leader", "Address"], ["cluster", "location", "leader", "address"])

struct GetLocations: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "locations", abstract: "Every location and its lead master.")
    @OptionGroup var options: DCSOptions

    func run() async throws {
        let access = try ClusterAccess(options)
        let state = try await access.leaders()
        var listing = Listing(headers: locationHeaders.0, keys: locationHeaders.1)
        listing.rows = state.locations.sorted().map { locationRow($0, state, cluster: access.cluster) }
        listing.print(options.output)
    }
}

struct GetLocation: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "location", abstract: "One location and its lead master.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The location; by default the one config.yml names, else the only one in the DCS.") var location: String?

    func run() async throws {
        let access = try ClusterAccess(options)
        let state = try await access.leaders()
        let location = access.location(self.location, in: state)
        guard state.locations.contains(location) else { fail("no location '\(location)'") }
        var listing = Listing(headers: locationHeaders.0, keys: locationHeaders.1)
        listing.rows = [locationRow(location, state, cluster: access.cluster)]
        listing.print(options.output, single: true)
    }
}

struct GetLeader: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "leader", abstract: "The lead master of a location.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The location (with leader_source patroni: the scope).") var location: String

    func run() async throws {
        let access = try ClusterAccess(options)
        let state = try await access.leaders()
        switch state.leader(of: location) {
        case .leader:
            var listing = Listing(headers: locationHeaders.0, keys: locationHeaders.1)
            listing.rows = [locationRow(location, state, cluster: access.cluster)]
            listing.print(options.output, single: true)
        case .none:
            fail("location '\(location)' has no lead master")
        case .unresolvable(_, let reason):
            fail("location '\(location)': \(reason)")
        }
    }
}

/// A proxy as `get proxies` shows it: its effective directives (DCS global and instance config
/// over the defaults) and its live status, `down` without one.
func proxyRow(_ name: String, _ state: ClusterState, _ snapshot: DCSSnapshot, cluster: String) -> [String: Any] {
    let local = InstanceConfiguration(name: name, location: "", source: SourceLocation(file: "", line: 0, column: 0))
    let effective = name == "global"
        ? EffectiveDirectives(instance: DirectiveSet(), global: state.globalDirectives, local: DirectiveSet())
        : state.effectiveDirectives(for: local)
    let status = snapshot[state.layout.proxyStatus(name)].flatMap { jsonObject($0.value) }
    var row: [String: Any] = [
        "cluster": cluster, "name": name, "type": status?["type"] as? String ?? effective.type,
        "location": status?["location"] ?? NSNull(),
        "state": name == "global" ? "" : status?["state"] as? String ?? "down",
        "leader": (status?["leader"] as? [String: Any])?["name"] ?? NSNull(),
        "listen": status?["listen"] ?? "\(effective.listenAddress):\(effective.listenPort)",
        "clients": (status?["clients"] as? [String: Any])?["current"] ?? NSNull(),
        "max_client_conn": status?["max_client_conn"] ?? effective.maxClientConn,
        "managed": state.isManaged(name),
        "directives": effective.values.mapValues { $0.jsonValue },
    ]
    if row["type"] as? String == "pgbouncer" {
        // The running instance's record knows its local directives too; the DCS alone does not.
        row["pool_mode"] = status?["pool_mode"] ?? effective[DirectiveKeys.poolMode] ?? ""
        row["auth_type"] = status?["auth_type"] ?? effective[DirectiveKeys.authType] ?? ""
        row["default_pool_size"] = status?["default_pool_size"] ?? effective[DirectiveKeys.defaultPoolSize] ?? 0
        if let pool = status?["pool"] { row["pool"] = pool }
    }
    return row
}

func proxyNames(_ state: ClusterState, _ snapshot: DCSSnapshot) -> [String] {
    var names = Set(state.proxyDirectives.keys)
    for kv in snapshot.keys(under: state.layout.proxiesPrefix) {
        if let name = kv.key.dropFirst(state.layout.proxiesPrefix.count).split(separator: "/").first { names.insert(String(name)) }
    }
    names.remove("global")
    return ["global"] + names.sorted()
}

func proxyListing(_ rows: [[String: Any]]) -> Listing {
    let pgbouncer = rows.contains { $0["type"] as? String == "pgbouncer" }
    var headers = ["Cluster", "Name", "Location", "Type", "State", "Leader", "Listen", "Clients", "Max Client Conn", "Managed"]
    var keys = ["cluster", "name", "location", "type", "state", "leader", "listen", "clients", "max_client_conn", "managed"]
    if pgbouncer {
        headers += ["Pool Mode", "Auth Type", "Default Pool Size"]
        keys += ["pool_mode", "auth_type", "default_pool_size"]
    }
    var listing = Listing(headers: headers, keys: keys)
    listing.rows = rows
    return listing
}

struct GetProxies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "proxies", abstract: "Every proxy, global first: effective directives and live status.")
    @OptionGroup var options: DCSOptions

    func run() async throws {
        let access = try ClusterAccess(options)
        let (state, snapshot) = try await access.state()
        proxyListing(proxyNames(state, snapshot).map { proxyRow($0, state, snapshot, cluster: access.cluster) }).print(options.output)
    }
}

struct GetProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "proxy", abstract: "One proxy, or 'global'.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The proxy's name, or global.") var name: String

    func run() async throws {
        let access = try ClusterAccess(options)
        let (state, snapshot) = try await access.state()
        guard proxyNames(state, snapshot).contains(name) else { fail("no proxy '\(name)'") }
        proxyListing([proxyRow(name, state, snapshot, cluster: access.cluster)]).print(options.output, single: true)
    }
}

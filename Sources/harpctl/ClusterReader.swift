import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

/// What harpctl reads and writes: the cluster's keys in one linearizable read, and the client.
struct ClusterAccess {
    let cluster: String
    let layout: DCSLayout
    let client: EtcdClient
    /// The location config.yml names, if any (see `HarpConfiguration.location`).
    let configLocation: String?
    /// Whose records name the lead masters (`dcs.leader_source`).
    let leaderSource: any LeaderSource

    init(_ options: DCSOptions) throws {
        let (cluster, dcs, location, source) = try options.resolve()
        self.cluster = cluster
        configLocation = location
        leaderSource = LeaderSources.make(source)
        layout = DCSLayout(cluster: cluster)
        client = EtcdClient(configuration: dcs)
    }

    func snapshot() async throws -> DCSSnapshot {
        let result = try await dcs { try await client.range(layout.prefix, prefix: true) }
        return DCSSnapshot(revision: result.revision, values: Dictionary(result.kvs.map { ($0.key, $0) }, uniquingKeysWith: { $1 }))
    }

    func state() async throws -> (ClusterState, DCSSnapshot) {
        let s = try await snapshot()
        return (ClusterState(snapshot: s, layout: layout), s)
    }

    /// Where the lead masters come from: the source's view of HARP's records and, for a source
    /// with records of its own (Patroni's namespace), of those.
    func leaders() async throws -> any LeaderView {
        let (state, _) = try await self.state()
        var own = DCSSnapshot(revision: 0, values: [:])
        if let prefix = leaderSource.ownPrefix {
            let result = try await dcs { try await client.range(prefix, prefix: true) }
            own = DCSSnapshot(revision: result.revision, values: Dictionary(result.kvs.map { ($0.key, $0) }, uniquingKeysWith: { $1 }))
        }
        return leaderSource.leaders(cluster: state, own: own)
    }

    /// The location a command without one works on: the argument, else the one config.yml
    /// names, else the only one the DCS holds (the proxy's rule); several fail with their names.
    func location(_ argument: String?, in state: any LeaderView) -> String {
        if let given = argument ?? configLocation { return given }
        switch state.location(following: nil) {
        case .follow(let only, _): return only
        case .wait: fail("no location in the DCS; name one")
        case .ambiguous: fail("no location given, and the DCS holds several (\(state.locations.sorted().joined(separator: ", "))): name one")
        }
    }

    /// Runs a DCS call; its failure is reported on stderr and exits 1.
    func dcs<T>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch {
            fail("\(error)")
        }
    }
}

/// Reports an operation's failure on stderr and exits 1.
func fail(_ message: String) -> Never {
    printError("harpctl: \(message)")
    exit(1)
}

/// Reports a usage error on stderr and exits 2.
func usage(_ message: String) -> Never {
    printError("harpctl: \(message)")
    exit(2)
}

func jsonObject(_ text: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
}

func jsonText(_ object: Any) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("null".utf8)
    return String(decoding: data, as: UTF8.self)
}

/// A DSN with its password masked, for display.
func maskedDSN(_ dsn: String) -> String {
    var text = dsn
    if let range = text.range(of: #"password\s*=\s*('([^'\\]|\\.)*'|\S+)"#, options: .regularExpression) {
        text.replaceSubrange(range, with: "password=***")
    }
    if let range = text.range(of: #"://[^:/@]+:[^@]*@"#, options: .regularExpression) {
        let user = text[range].dropFirst(3).prefix { $0 != ":" }
        text.replaceSubrange(range, with: "://\(user):***@")
    }
    return text
}

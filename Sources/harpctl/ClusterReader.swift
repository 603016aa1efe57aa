import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

/// What harpctl reads and writes: the cluster's keys in one linearizable read, and the client.
struct ClusterAccess {
    let cluster: String
    let layout: DCSLayout
    let client: EtcdClient

    init(_ options: DCSOptions) throws {
        let (cluster, dcs) = try options.resolve()
        self.cluster = cluster
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

import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

/// `harpctl apply bootstrap.yml`: HARP's bootstrap format, written in one transaction.
///
///     cluster: {name: mycluster}
///     locations: [{location: dc1}]
///     nodes: [{name: node1, location: dc1, dsn: "host=... port=5432", priority: 100}]
///     proxies:
///       max_client_conn: 1000        # global directives
///       instances: [{name: proxy1, listen_port: 6432}]
struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Load a bootstrap file (cluster, locations, nodes, proxies) in one transaction.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The bootstrap YAML file.") var file: String

    func run() async throws {
        let root: YAMLNode
        do {
            guard let node = try loadYAMLFile(file) else { usage("\(file): the file is empty") }
            root = node
        } catch {
            usage("\(error)")
        }
        guard let top = root.mappingEntries else { usage("\(root.location): a bootstrap file is a mapping of cluster, locations, nodes and proxies") }
        let access = try ClusterAccess(options)
        var writes: [(key: String, value: String)] = []
        var problems: [String] = []
        var cluster = access.cluster
        for (section, value) in top {
            switch section {
            case "cluster":
                if let name = value.mappingEntries?.first(where: { $0.key == "name" })?.value.scalarText { cluster = name }
            case "locations", "nodes", "proxies":
                break
            default:
                problems.append("\(value.location): unknown section '\(section)'; expected cluster, locations, nodes or proxies")
            }
        }
        let layout = DCSLayout(cluster: cluster)
        var recordsByKey: [String: [String: Any]] = [:]
        for (section, value) in top {
            switch section {
            case "cluster":
                recordsByKey[layout.clusterKey] = ["name": cluster, "is_managed": true]
            case "locations":
                for item in value.sequenceItems ?? [] {
                    guard let name = item.mappingEntries?.first(where: { $0.key == "location" })?.value.scalarText ?? item.scalarText else {
                        problems.append("\(item.location): a location needs 'location: NAME'")
                        continue
                    }
                    recordsByKey[layout.locationsPrefix + name + "/config"] = ["location": name]
                }
            case "nodes":
                for item in value.sequenceItems ?? [] {
                    guard let fields = item.mappingEntries else { problems.append("\(item.location): a node is a mapping"); continue }
                    var record: [String: Any] = [:]
                    for (k, v) in fields { record[k] = v.scalarText.map { Int($0).map { $0 as Any } ?? $0 } ?? NSNull() }
                    guard let name = record["name"] as? String, record["location"] is String, let dsn = record["dsn"] as? String else {
                        problems.append("\(item.location): a node needs name, location and dsn")
                        continue
                    }
                    if case .failure(let e) = DSN.address(dsn) { problems.append("\(item.location): node \(name): invalid dsn: \(e.message)") }
                    recordsByKey[layout.node(name)] = record
                }
            case "proxies":
                guard let fields = value.mappingEntries else { problems.append("\(value.location): proxies is a mapping"); continue }
                var global: [String: Any] = [:]
                for (k, v) in fields where k != "instances" {
                    if let record = directive(k, v, &problems) { global[k] = record }
                }
                recordsByKey[layout.globalProxyConfig] = global
                for item in fields.first(where: { $0.key == "instances" })?.value.sequenceItems ?? [] {
                    guard let entries = item.mappingEntries, let name = entries.first(where: { $0.key == "name" })?.value.scalarText else {
                        problems.append("\(item.location): an instance needs 'name'")
                        continue
                    }
                    var config: [String: Any] = [:]
                    for (k, v) in entries where k != "name" {
                        if let record = directive(k, v, &problems) { config[k] = record }
                    }
                    recordsByKey[layout.proxyConfig(name)] = config
                }
            default:
                break
            }
        }
        guard problems.isEmpty else {
            problems.forEach { printError($0) }
            Foundation.exit(2)
        }
        let current = try await access.dcs { try await access.client.range(layout.prefix, prefix: true) }
        let existing = Dictionary(current.kvs.map { ($0.key, $0.value) }, uniquingKeysWith: { $1 })
        var report: [String] = []
        for key in recordsByKey.keys.sorted() {
            let text = jsonText(recordsByKey[key]!)
            let before = existing[key]
            if before == nil { report.append("created  \(key)") }
            else if jsonObject(before!).map({ jsonText($0) }) != text { report.append("updated  \(key)") }
            else { report.append("unchanged \(key)"); continue }
            writes.append((key, text))
        }
        if !writes.isEmpty {
            let result = try await access.dcs {
                try await access.client.txn(compare: [], success: writes.map { .put(key: $0.key, value: $0.value) })
            }
            guard result.succeeded else { fail("the transaction did not apply") }
        }
        report.forEach { print($0) }
        print("\(writes.count) key\(writes.count == 1 ? "" : "s") written in one transaction to cluster \(cluster)")
    }

    private func directive(_ name: String, _ node: YAMLNode, _ problems: inout [String]) -> Any? {
        guard let spec = ProxyDirectives.spec(name) else {
            let hint = closestName(to: name, among: ProxyDirectives.names).map { "; did you mean '\($0)'?" } ?? ""
            problems.append("\(node.location): unknown directive '\(name)'\(hint)")
            return nil
        }
        guard let text = node.scalarText else { problems.append("\(node.location): '\(name)' needs a value"); return nil }
        switch spec.parse(.text(text)) {
        case .success(let value): return value.jsonValue
        case .failure(let e): problems.append("\(node.location): \(e.description)"); return nil
        }
    }
}

import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Change proxy directives or node fields.",
                                                    subcommands: [SetProxy.self, SetNode.self])
}

/// `key=value` words, in order.
func assignments(_ words: [String]) -> [(String, String)] {
    words.map { word in
        guard let eq = word.firstIndex(of: "="), eq != word.startIndex else { usage("expected key=value, got '\(word)'") }
        return (String(word[..<eq]), String(word[word.index(after: eq)...]))
    }
}

/// Replaces a JSON record with compare-and-swap on its revision, so that no concurrent change is lost.
func updateRecord(_ access: ClusterAccess, key: String, requireExisting: Bool, _ change: (inout [String: Any]) -> Void) async throws -> [String: Any] {
    for _ in 0..<5 {
        let current = try await access.dcs { try await access.client.range(key) }.kvs.first
        if requireExisting && current == nil { fail("\(key) does not exist") }
        var object = current.flatMap { jsonObject($0.value) } ?? [:]
        change(&object)
        let text = jsonText(object)
        let guardOn: EtcdCompare = current.map { EtcdCompare(key: key, .equal, .modRevision($0.modRevision)) } ?? .absent(key)
        let result = try await access.dcs { try await access.client.txn(compare: [guardOn], success: [.put(key: key, value: text)]) }
        if result.succeeded { return object }
    }
    fail("\(key) kept changing under this command; try again")
}

struct SetProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy", abstract: "Set directives for one proxy or for global.",
        discussion: "Valid directives: \(ProxyDirectives.names.joined(separator: ", ")).")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The proxy's name, or global.") var name: String
    @Argument(help: "key=value ...") var settings: [String]

    func run() async throws {
        guard !settings.isEmpty else { usage("give at least one directive=value") }
        var parsed: [(String, DirectiveValue)] = []
        for (key, text) in assignments(settings) {
            guard let spec = ProxyDirectives.spec(key) else {
                let hint = closestName(to: key, among: ProxyDirectives.names).map { " (did you mean '\($0)'?)" } ?? ""
                usage("unknown directive '\(key)'\(hint); valid directives: \(ProxyDirectives.names.joined(separator: ", "))")
            }
            switch spec.parse(.text(text)) {
            case .success(let value): parsed.append((key, value))
            case .failure(let error): usage(error.description)
            }
        }
        let access = try ClusterAccess(options)
        let record = try await updateRecord(access, key: access.layout.proxyConfig(name), requireExisting: false) { object in
            for (key, value) in parsed { object[key] = value.jsonValue }
        }
        print("proxy \(name): \(jsonText(record))")
    }
}

struct SetNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "node", abstract: "Set fields of a node record (dsn, location, priority, ...).")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The node's name.") var name: String
    @Argument(help: "key=value ...") var settings: [String]

    func run() async throws {
        guard !settings.isEmpty else { usage("give at least one field=value") }
        let pairs = assignments(settings)
        for (key, value) in pairs {
            if key == "name" { usage("a node's name is its key; it cannot be set") }
            if value.unicodeScalars.contains(where: { $0.value < 0x20 }) { usage("'\(key)' contains a control character") }
            if key == "dsn", case .failure(let e) = DSN.address(value) { usage("invalid dsn: \(e.message)") }
        }
        let access = try ClusterAccess(options)
        let record = try await updateRecord(access, key: access.layout.node(name), requireExisting: true) { object in
            // Names and DSNs stay strings ("01" is not 1); other plain integers (priority) are numbers.
            for (key, value) in pairs {
                object[key] = ["dsn", "location"].contains(key) || String(Int(value) ?? -1) != value ? value : Int(value)!
            }
        }
        var shown = record
        if let dsn = shown["dsn"] as? String { shown["dsn"] = maskedDSN(dsn) }
        print("node \(name): \(jsonText(shown))")
    }
}

struct Manage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a proxy follow the leader again.", subcommands: [ManageProxy.self])
}

struct Unmanage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a proxy keep its target and connections whatever the leader does.",
                                                    subcommands: [UnmanageProxy.self])
}

func setManaged(_ options: DCSOptions, _ name: String, _ managed: Bool) async throws {
    let access = try ClusterAccess(options)
    _ = try await access.dcs { try await access.client.put(access.layout.proxyManaged(name), managed ? #""true""# : #""false""#) }
    print("proxy \(name): \(managed ? "managed" : "unmanaged")")
}

struct ManageProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "proxy", abstract: "Manage one proxy instance.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The proxy's name.") var name: String
    func run() async throws { try await setManaged(options, name, true) }
}

struct UnmanageProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "proxy", abstract: "Unmanage one proxy instance.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The proxy's name.") var name: String
    func run() async throws { try await setManaged(options, name, false) }
}

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a node the lead master of its location.",
        discussion: "The leader key moves with a compare-and-swap on its current value: if another change races this one, it fails and says so.")
    @OptionGroup var options: DCSOptions
    @Argument(help: "The node to promote.") var node: String
    @Option(help: "The location; by default the node's own.") var location: String?
    @Option(help: "Put the leader key on a lease of this many seconds.") var ttl: Int?

    func run() async throws {
        if let ttl, ttl < 1 { usage("--ttl takes a number of seconds, at least 1") }
        let access = try ClusterAccess(options)
        if let refusal = access.leaderSource.promotionRefusal { fail(refusal) }
        let (state, snapshot) = try await access.state()
        let promotion: LeaderPromotion
        switch LeaderPromotion.prepare(node: node, location: location, state: state, snapshot: snapshot) {
        case .success(let p): promotion = p
        case .failure(let error): fail(error.description)
        }
        let place = promotion.location
        if promotion.previous == node, ttl == nil {
            print("\(node) already leads \(place)")
            return
        }
        var lease: Int64 = 0
        if let ttl { lease = try await access.dcs { try await access.client.leaseGrant(ttl: Int64(ttl)) }.id }
        switch try await access.dcs({ try await promotion.commit(access.client, lease: lease) }) {
        case .raced(let now):
            if lease != 0 { try? await access.client.leaseRevoke(lease) }
            fail("another change to \(place)'s leader raced this promote; the leader is now \(now ?? "no one"). Check, then try again")
        case .promoted(let previous):
            print("\(place): lead master \(previous ?? "none") -> \(node)" + (ttl.map { " (lease \($0) s)" } ?? ""))
        }
    }
}

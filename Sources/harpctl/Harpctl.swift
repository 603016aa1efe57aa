import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

@main
enum HarpctlMain {
    static func main() async {
        await Harpctl.main(hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst())))
    }
}

/// HARP writes global options before the command (`harpctl -f config.yml get leader dc1`);
/// argument-parser reads them on the subcommand, so leading ones move to the end.
func hoistingGlobalOptions(_ arguments: [String]) -> [String] {
    let withValue: Set<String> = ["-f", "--config-file", "--dcs", "-c", "--cluster", "-o", "--output"]
    var leading: [String] = []
    var rest = arguments[...]
    while let first = rest.first, withValue.contains(first) || withValue.contains(where: { first.hasPrefix($0 + "=") && $0.hasPrefix("--") }) {
        leading.append(rest.removeFirst())
        if !first.contains("="), let value = rest.first {
            leading.append(value)
            rest.removeFirst()
        }
    }
    return Array(rest) + leading
}

struct Harpctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harpctl",
        abstract: "Read and change the HARP cluster state in the DCS (etcd).",
        version: HarpVersion.string,
        subcommands: [Version.self, Get.self])
}

/// Options every command that talks to the DCS shares.
struct DCSOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config-file")], help: ArgumentHelp("The configuration file whose cluster and dcs stanzas to use.", valueName: "file"))
    var configFile: String = ConfigLoader.defaultPath

    @Option(name: .customLong("dcs"), help: ArgumentHelp("An etcd endpoint (host:port), instead of the file's; repeatable.", valueName: "endpoint"))
    var endpoints: [String] = []

    @Option(name: [.customShort("c"), .customLong("cluster")], help: "The cluster name, instead of the file's.")
    var cluster: String?

    /// The file's DCS settings with the command line's overrides.
    func resolve() throws -> (cluster: String, dcs: DCSConfiguration) {
        let configuration: HarpConfiguration
        do {
            configuration = try ConfigLoader.load(file: configFile, includeInstances: false)
        } catch {
            for e in error.errors { printError("\(e)") }
            throw ExitCode(1)
        }
        var dcs = configuration.dcs
        if !endpoints.isEmpty {
            dcs.endpoints = try endpoints.map { text in
                guard let endpoint = DCSEndpoint.parse(text, defaultTLS: dcs.usesTLS) else {
                    throw ValidationError("invalid --dcs '\(text)': expected host:port or http(s)://host:port")
                }
                return endpoint
            }
        }
        return (cluster ?? configuration.clusterName, dcs)
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print harpctl's version.")
    func run() { print("harpctl \(HarpVersion.string)") }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show cluster state.", subcommands: [GetLeader.self])
}

struct GetLeader: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "leader", abstract: "Show the lead master of a location.")

    @OptionGroup var options: DCSOptions
    @Argument(help: "The location.") var location: String

    func run() async throws {
        let (cluster, dcs) = try options.resolve()
        let layout = DCSLayout(cluster: cluster)
        let client = EtcdClient(configuration: dcs)
        let snapshot: DCSSnapshot
        do {
            let result = try await client.range(layout.prefix, prefix: true)
            snapshot = DCSSnapshot(revision: result.revision, values: Dictionary(result.kvs.map { ($0.key, $0) }, uniquingKeysWith: { $1 }))
        } catch {
            printError("harpctl: \(error)")
            throw ExitCode(1)
        }
        let state = ClusterState(snapshot: snapshot, layout: layout)
        switch state.leader(of: location) {
        case .leader(let target):
            var table = TextTable(headers: ["Cluster", "Location", "Leader", "Address"])
            table.rows.append([cluster, location, target.name, "\(target.address)"])
            print(table.render())
        case .none:
            printError("harpctl: location '\(location)' has no lead master")
            throw ExitCode(1)
        case .unresolvable(_, let reason):
            printError("harpctl: location '\(location)': \(reason)")
            throw ExitCode(1)
        }
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

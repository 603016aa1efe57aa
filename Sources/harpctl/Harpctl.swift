import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS

@main
enum HarpctlMain {
    /// Exit codes: 0 when it worked, 1 when the operation failed, 2 for a usage error.
    static func main() async {
        let arguments = hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try Harpctl.parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            if Harpctl.exitCode(for: error) == .success { Harpctl.exit(withError: error) }  // --help, --version
            printError(Harpctl.fullMessage(for: error))
            exit(2)
        }
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
        discussion: "Exit status: 0 when it worked, 1 when the operation failed, 2 for a usage error.",
        version: HarpVersion.string,
        subcommands: [Get.self, SetCommand.self, Apply.self, Manage.self, Unmanage.self, Promote.self, Version.self])
}

/// Options every command that talks to the DCS shares.
struct DCSOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config-file")], help: ArgumentHelp("The configuration file whose cluster and dcs stanzas to use.", valueName: "file"))
    var configFile: String = ConfigLoader.defaultPath

    @Option(name: .customLong("dcs"), help: ArgumentHelp("An etcd endpoint (host:port), instead of the file's; repeatable.", valueName: "endpoint"))
    var endpoints: [String] = []

    @Option(name: [.customShort("c"), .customLong("cluster")], help: "The cluster name, instead of the file's.")
    var cluster: String?

    @Option(name: [.customShort("o"), .customLong("output")], help: "table (HARP's), json or yaml.")
    var output: OutputFormat = .table

    /// The file's DCS settings with the command line's overrides.
    func resolve() throws -> (cluster: String, dcs: DCSConfiguration, location: String?, leaderSource: LeaderSourceSetting) {
        let configuration: HarpConfiguration
        do {
            configuration = try ConfigLoader.load(file: configFile, includeInstances: false, leaderSources: LeaderSources.all)
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
        return (cluster ?? configuration.clusterName, dcs, configuration.location, configuration.leaderSource)
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print harpctl's version.")
    /// Accepted, so that `harpctl -f FILE version` works like every other command.
    @OptionGroup var options: DCSOptions
    func run() { print("harpctl \(HarpVersion.string)") }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

import ArgumentParser
import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import Logging

@main
struct HarpProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harp-proxy",
        abstract: "Route PostgreSQL clients to the lead master of their location, as the DCS (etcd) says.",
        discussion: """
            One process runs every proxy instance: the `proxy` stanza of config.yml and one per \
            *.yml file in the conf.d folder beside it. All share one etcd session. Logs go to stdout; \
            run it under systemd or a container, it does not daemonize.

            Check a configuration before a restart:  harp-proxy --check -f /etc/harp/config.yml
            """,
        version: HarpVersion.string)

    @Option(name: [.customShort("f"), .customLong("config")], help: ArgumentHelp("The configuration file.", valueName: "file"))
    var config: String = ConfigLoader.defaultPath

    @Flag(help: "Check config.yml and conf.d, print one line per instance (name, location, type), and exit: 0 when valid, 1 otherwise.")
    var check = false

    func run() async throws {
        let configuration: HarpConfiguration
        do {
            configuration = try ConfigLoader.load(file: config, leaderSources: LeaderSources.all)
        } catch {
            for e in error.errors { printError("\(e)") }
            printError("harp-proxy: \(error.errors.count) configuration error\(error.errors.count == 1 ? "" : "s"); nothing started")
            throw ExitCode(1)
        }
        if configuration.instances.isEmpty {
            printError("\(config): no proxy instance: add a 'proxy' stanza here or a file to \(configuration.includeDirectory)")
            throw ExitCode(1)
        }
        for warning in configuration.warnings { printError("\(warning.location): warning: \(warning.message)") }

        if check {
            // What the DCS may still change is marked: a listener without a local listen_port
            // (proxies/<name>/config or proxies/global/config set it), a location from the DCS.
            let rows = configuration.instances.map { i -> [String] in
                let listen = i.localListen
                let location = switch i.locationSource {
                case .stanza: i.location ?? ""
                case .topLevel: (i.location ?? "") + " (top-level)"
                case .dcs: "(the DCS's only location)"
                }
                let listener = i.fixedListen == nil ? "(DCS, else \(listen.address):\(listen.port))" : "\(listen.address):\(listen.port)"
                return [i.name, location, i.directives["type"]?.description ?? "builtin", listener, "\(i.source.file):\(i.source.line)"]
            }
            let widths = (0..<5).map { c in rows.map { $0[c].count }.max() ?? 0 }
            for row in rows {
                print(row.enumerated().map { $0.offset == 4 ? $0.element : $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  "))
            }
            printError("\(config): configuration OK, \(rows.count) instance\(rows.count == 1 ? "" : "s"), cluster \(configuration.clusterName)")
            return
        }

        try await Daemon(configuration: configuration).run()
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

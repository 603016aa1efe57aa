import Foundation

/// Turns one line of the control protocol into one JSON reply line.
struct ControlCommands: Sendable {
    let actions: any ControlActions
    /// The uid that may change things besides root: the daemon's own.
    let ownerUID: UInt32

    static let help: [String: String] = [
        "status": "the process and every instance; 'status NAME' for one instance",
        "instances": "the instance names",
        "unmanage NAME": "stop following the leader (keeps connections and target); root or the daemon's user only",
        "manage NAME": "follow the leader again; root or the daemon's user only",
        "reload": "re-read config.yml and conf.d, as SIGHUP does; root or the daemon's user only",
        "help": "this list",
    ]

    func reply(to line: String, peerUID: UInt32?) async -> String {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let command = words.first?.lowercased() else { return Self.error("empty command; try 'help'") }
        let argument = words.count > 1 ? words[1] : nil
        if words.count > 2 { return Self.error("'\(command)' takes at most one argument") }
        switch command {
        case "help":
            return Self.json(["commands": Self.help])
        case "instances":
            return Self.json(["instances": await actions.instanceNames()])
        case "status":
            guard let name = argument else { return await actions.status() }
            return await instance(name) { await actions.status(of: name) }
        case "manage", "unmanage":
            guard let name = argument else { return Self.error("usage: \(command) NAME") }
            guard allowed(peerUID) else { return Self.error("permission denied") }
            guard await actions.instanceNames().contains(name) else { return await unknown(name) }
            do {
                return try await actions.setManaged(name, command == "manage")
            } catch {
                return Self.error("could not write the managed key: \(error)")
            }
        case "reload":
            guard allowed(peerUID) else { return Self.error("permission denied") }
            return await actions.reload()
        default:
            return Self.json(["error": "unknown command \"\(Self.printable(command))\"", "commands": Self.help.keys.sorted()])
        }
    }

    private func allowed(_ uid: UInt32?) -> Bool {
        guard let uid else { return false }
        return uid == 0 || uid == ownerUID
    }

    private func instance(_ name: String, _ body: () async -> String?) async -> String {
        if let found = await body() { return found }
        return await unknown(name)
    }

    private func unknown(_ name: String) async -> String {
        Self.json(["error": "unknown instance \"\(Self.printable(name))\"", "instances": await actions.instanceNames()])
    }

    static func error(_ message: String) -> String { json(["error": message]) }

    static func json(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// Echoed input, cut short and without control characters.
    static func printable(_ text: String) -> String {
        String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7f }.prefix(64).map(Character.init))
    }
}

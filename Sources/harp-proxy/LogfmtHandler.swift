import Foundation
import Logging

/// One line per event on stdout: logfmt (`time=… level=warning msg="…" key=value`) or, with
/// `log_format: json`, one JSON object. Under journald (`JOURNAL_STREAM` set) the journal stamps
/// the time, so the line does not.
struct LogfmtHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level
    let label: String
    let stampTime: Bool
    let json: Bool

    init(label: String, level: Logger.Level, json: Bool = false) {
        self.label = label
        logLevel = level
        self.json = json
        stampTime = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] == nil
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if json {
            var object: [String: String] = merged.mapValues { "\($0)" }
            object["level"] = event.level.harpName
            object["msg"] = event.message.description
            if stampTime { object["time"] = Self.timestamp() }
            // JSONSerialization escapes control characters: a value can never start a new line.
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            FileHandle.standardOutput.write(data + Data("\n".utf8))
            return
        }
        var line = ""
        if stampTime { line += "time=" + Self.timestamp() + " " }
        line += "level=\(event.level.harpName) msg=\(Self.quote(event.message.description))"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(Self.quote("\(value)"))"
        }
        line += "\n"
        FileHandle.standardOutput.write(Data(line.utf8))
    }

    /// Quotes a value when it needs it; a newline can never start a forged line.
    static func quote(_ value: String) -> String {
        let plain = !value.isEmpty && value.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f && $0 != "\"" && $0 != "=" && $0 != "\\" }
        if plain { return value }
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }

    private static let format = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

    static func timestamp() -> String { format.format(Date()) }
}

extension Logger.Level {
    /// HARP's level names.
    var harpName: String {
        switch self {
        case .trace, .debug: return "debug"
        case .info, .notice: return "info"
        case .warning: return "warning"
        case .error: return "error"
        case .critical: return "critical"
        }
    }
}

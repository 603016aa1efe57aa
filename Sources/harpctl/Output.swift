import ArgumentParser
import Foundation

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, yaml
}

/// Rows of a `get` command, printed as HARP's table, JSON or YAML.
struct Listing {
    let headers: [String]
    /// JSON keys, in the headers' order.
    let keys: [String]
    var rows: [[String: Any]] = []

    func print(_ format: OutputFormat, single: Bool = false) {
        switch format {
        case .table:
            var table = TextTable(headers: headers)
            table.rows = rows.map { row in keys.map { display(row[$0]) } }
            Swift.print(table.render())
        case .json:
            Swift.print(jsonText(single && rows.count == 1 ? rows[0] : rows as Any))
        case .yaml:
            Swift.print(yaml(single && rows.count == 1 ? rows[0] as Any : rows as Any, indent: 0), terminator: "")
        }
    }

    private func display(_ value: Any?) -> String {
        switch value {
        case nil, is NSNull: return ""
        case let b? where isBoolean(b): return (b as? Bool) == true ? "true" : "false"
        case let d as [String: Any]: return d.sorted { $0.key < $1.key }.map { "\($0.key)=\(display($0.value))" }.joined(separator: ",")
        default: return "\(value!)"
        }
    }
}

/// A small YAML emitter for the JSON-shaped values harpctl prints.
func yaml(_ value: Any, indent: Int) -> String {
    let pad = String(repeating: " ", count: indent)
    switch value {
    case let d as [String: Any]:
        if d.isEmpty { return "{}\n" }
        return d.keys.sorted().map { key in
            let v = d[key]!
            if let nested = v as? [String: Any], !nested.isEmpty { return "\(pad)\(key):\n" + yaml(nested, indent: indent + 2) }
            if let list = v as? [Any], !list.isEmpty { return "\(pad)\(key):\n" + yaml(list, indent: indent + 2) }
            return "\(pad)\(key): \(yamlScalar(v))\n"
        }.joined()
    case let list as [Any]:
        if list.isEmpty { return "\(pad)[]\n" }
        return list.map { item in
            if let d = item as? [String: Any], !d.isEmpty {
                let body = yaml(d, indent: indent + 2)
                return pad + "- " + body.dropFirst(indent + 2)
            }
            return "\(pad)- \(yamlScalar(item))\n"
        }.joined()
    default:
        return "\(pad)\(yamlScalar(value))\n"
    }
}

private func yamlScalar(_ value: Any) -> String {
    switch value {
    case is NSNull: return "null"
    case let b where isBoolean(b): return (b as? Bool) == true ? "true" : "false"
    case let n as Int: return String(n)
    case let n as Double: return String(n)
    case let d as [String: Any] where d.isEmpty: return "{}"
    case let a as [Any] where a.isEmpty: return "[]"
    default: return jsonText("\(value)")  // a JSON string is a valid YAML scalar
    }
}

/// Whether a JSON value is a boolean. On Linux every NSNumber casts to Bool, so a number from
/// the DCS (a client count of 1) would print as "true" without this check.
func isBoolean(_ value: Any) -> Bool {
    if let n = value as? NSNumber, !(type(of: value) == Bool.self) { return String(cString: n.objCType) == "c" }
    return type(of: value) == Bool.self
}

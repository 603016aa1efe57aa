/// Where a node's PostgreSQL listens, from its DSN.
public enum DatabaseAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    /// A Unix socket: the folder and the port in the socket's name (`.s.PGSQL.<port>`).
    case unixSocket(directory: String, port: Int)

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unixSocket(let directory, let port): return "\(directory)/.s.PGSQL.\(port)"
        }
    }

    public var port: Int {
        switch self {
        case .tcp(_, let p), .unixSocket(_, let p): return p
        }
    }
}

/// libpq connection strings, both forms: `host=h port=5432 dbname=app` and
/// `postgresql://user@h:5432/app?sslmode=require`.
public enum DSN {
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The DSN's parameters, by libpq keyword.
    public static func parameters(_ dsn: String) -> Result<[String: String], ParseError> {
        let trimmed = dsn.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("postgresql://") || trimmed.hasPrefix("postgres://") { return uri(trimmed) }
        return keywordValue(trimmed)
    }

    /// The address to connect to: `hostaddr` before `host`; a host that begins with `/` is a
    /// Unix socket folder; no host means the default socket folder; port 5432 unless given.
    public static func address(_ dsn: String) -> Result<DatabaseAddress, ParseError> {
        parameters(dsn).flatMap { p in
            let portText = p["port"] ?? "5432"
            guard let port = Int(portText), (1...65535).contains(port) else {
                return .failure(ParseError(message: "port '\(portText)' is not a TCP port"))
            }
            let host = (p["hostaddr"].flatMap { $0.isEmpty ? nil : $0 }) ?? p["host"] ?? ""
            if host.contains(",") {
                return .failure(ParseError(message: "several hosts ('\(host)'): a node's DSN must name one server"))
            }
            if host.isEmpty { return .success(.unixSocket(directory: "/var/run/postgresql", port: port)) }
            if host.hasPrefix("/") { return .success(.unixSocket(directory: host, port: port)) }
            return .success(.tcp(host: host, port: port))
        }
    }

    private static func keywordValue(_ text: String) -> Result<[String: String], ParseError> {
        var result: [String: String] = [:]
        var chars = Array(text)[...]
        func skipSpaces() { while let c = chars.first, c.isWhitespace { chars.removeFirst() } }
        skipSpaces()
        while !chars.isEmpty {
            var key = ""
            while let c = chars.first, c != "=", !c.isWhitespace { key.append(c); chars.removeFirst() }
            skipSpaces()
            guard chars.first == "=" else {
                return .failure(ParseError(message: "expected '=' after '\(key)' (key=value pairs, or a postgresql:// URI)"))
            }
            chars.removeFirst()
            skipSpaces()
            var value = ""
            if chars.first == "'" {
                chars.removeFirst()
                var closed = false
                while let c = chars.popFirst() {
                    if c == "\\", let next = chars.popFirst() { value.append(next); continue }
                    if c == "'" { closed = true; break }
                    value.append(c)
                }
                guard closed else { return .failure(ParseError(message: "unterminated quoted value for '\(key)'")) }
            } else {
                while let c = chars.first, !c.isWhitespace {
                    chars.removeFirst()
                    if c == "\\", let next = chars.popFirst() { value.append(next) } else { value.append(c) }
                }
            }
            guard !key.isEmpty else { return .failure(ParseError(message: "a parameter has no name")) }
            result[key] = value
            skipSpaces()
        }
        return .success(result)
    }

    private static func uri(_ text: String) -> Result<[String: String], ParseError> {
        var rest = Substring(text[text.range(of: "://")!.upperBound...])
        var result: [String: String] = [:]
        var query = Substring("")
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        if let slash = rest.firstIndex(of: "/") {
            let db = percentDecoded(rest[rest.index(after: slash)...])
            if !db.isEmpty { result["dbname"] = db }
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let user = rest[..<at]
            if let colon = user.firstIndex(of: ":") {
                result["user"] = percentDecoded(user[..<colon])
                result["password"] = percentDecoded(user[user.index(after: colon)...])
            } else if !user.isEmpty {
                result["user"] = percentDecoded(user)
            }
            rest = rest[rest.index(after: at)...]
        }
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return .failure(ParseError(message: "unterminated [ in the URI's host")) }
            result["host"] = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { result["port"] = String(after.dropFirst()) }
        } else if let colon = rest.lastIndex(of: ":") {
            let host = percentDecoded(rest[..<colon])
            if !host.isEmpty { result["host"] = host }
            result["port"] = String(rest[rest.index(after: colon)...])
        } else if !rest.isEmpty {
            result["host"] = percentDecoded(rest)
        }
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = parts.first, !name.isEmpty else { return .failure(ParseError(message: "a URI parameter has no name")) }
            result[percentDecoded(name)] = parts.count > 1 ? percentDecoded(parts[1]) : ""
        }
        return .success(result)
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let b = iterator.popFirst() {
            if b == UInt8(ascii: "%"), iterator.count >= 2,
               let value = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

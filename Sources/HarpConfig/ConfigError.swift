/// A problem in a configuration file, reported as `FILE:LINE:COLUMN: message`.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }

    public var description: String { "\(location): \(message)" }
}

/// Several problems found in one pass: a person fixes them all at once rather than one per run.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) { self.errors = errors }

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Something worth a WARNING at start that does not stop the daemon (a certificate close to expiry).
public struct ConfigWarning: Sendable, Equatable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public var description: String { "\(location): \(message)" }
}

/// The valid name closest to a mistyped one, if it is close enough to be the likely intent.
public func closestName(to name: String, among candidates: [String]) -> String? {
    let lowered = name.lowercased()
    var best: (name: String, distance: Int)?
    for candidate in candidates {
        let d = editDistance(lowered, candidate.lowercased())
        if d < (best?.distance ?? .max) { best = (candidate, d) }
    }
    guard let best else { return nil }
    let allowed = max(2, name.count / 3)
    return best.distance <= allowed ? best.name : nil
}

/// "unknown key 'x'; did you mean 'y'?" or, with no close name, the list of valid ones.
func unknownKeyMessage(_ key: String, in section: String, valid: [String]) -> String {
    if let suggestion = closestName(to: key, among: valid) {
        return "unknown key '\(key)' in \(section); did you mean '\(suggestion)'?"
    }
    return "unknown key '\(key)' in \(section); valid keys: \(valid.sorted().joined(separator: ", "))"
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in 0...a.count { d[i][0] = i }
    for j in 0...b.count { d[0][j] = j }
    for i in 1...a.count {
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
            }
        }
    }
    return d[a.count][b.count]
}

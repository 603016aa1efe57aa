/// One mapping of the file: checks its keys, and reads typed values with their positions.
struct Section {
    let name: String
    let location: SourceLocation
    let isMapping: Bool
    var entries: [String: (key: YAMLNode, value: YAMLNode)] = [:]

    init(_ node: YAMLNode, name: String, known: [String], errors: inout [ConfigError]) {
        self.name = name
        self.location = node.location
        guard case .mapping(let pairs, _) = node else {
            isMapping = false
            errors.append(ConfigError(node.location, "\(name) must be a mapping of key: value, not \(node.kindName)"))
            return
        }
        isMapping = true
        for pair in pairs {
            guard case .scalar(let key, _, let keyLocation) = pair.key else {
                errors.append(ConfigError(pair.key.location, "a key in \(name) must be a plain name, not \(pair.key.kindName)"))
                continue
            }
            if !known.contains(key) {
                errors.append(ConfigError(keyLocation, unknownKeyMessage(key, in: name, valid: known)))
                continue
            }
            if let first = entries[key] {
                errors.append(ConfigError(keyLocation, "duplicate key '\(key)' in \(name): first given at line \(first.key.location.line)"))
                continue
            }
            entries[key] = pair
        }
    }

    private func qualified(_ key: String) -> String {
        name.hasPrefix("'") ? "'\(name.dropFirst().dropLast()).\(key)'" : name == "the top level" ? "'\(key)'" : "'\(name).\(key)'"
    }

    /// - Parameter requiredKeys: of a required stanza written with nothing under it (`cluster:`),
    ///   the keys it lacks are named, as for any other missing key.
    func section(_ key: String, known: [String], required: Bool, requiredKeys: [String] = [], errors: inout [ConfigError]) -> Section? {
        guard let entry = entries[key] else {
            if required { errors.append(ConfigError(location, "missing required stanza '\(key)'")) }
            return nil
        }
        if entry.value.isNull {
            guard required else { return nil }
            let prefix = name == "the top level" ? key : "\(name).\(key)"
            for missing in requiredKeys { errors.append(ConfigError(entry.key.location, "missing required key '\(prefix).\(missing)'")) }
            if requiredKeys.isEmpty { errors.append(ConfigError(entry.key.location, "'\(prefix)' is empty: expected a mapping of key: value")) }
            return nil
        }
        let sub = Section(entry.value, name: name == "the top level" ? key : "\(name).\(key)", known: known, errors: &errors)
        return sub.isMapping ? sub : nil
    }

    /// The text of a scalar value with its position; nil when absent or null.
    func scalar(_ key: String, required: Bool = false, errors: inout [ConfigError]) -> (String, SourceLocation)? {
        guard let entry = entries[key], !entry.value.isNull else {
            if required {
                let at = entries[key]?.key.location ?? location
                errors.append(ConfigError(at, "missing required key \(qualified(key))"))
            }
            return nil
        }
        guard case .scalar(let text, _, let l) = entry.value else {
            errors.append(ConfigError(entry.value.location, "\(qualified(key)) must be a single value, not \(entry.value.kindName)"))
            return nil
        }
        return (text, l)
    }

    func string(_ key: String, required: Bool = false, errors: inout [ConfigError]) -> String? {
        guard let (text, l) = scalar(key, required: required, errors: &errors) else { return nil }
        if case .failure(let e) = DirectiveSpec.parse(.text(text), as: .string) {
            errors.append(ConfigError(l, "invalid value for \(qualified(key)): expected \(e.expected)"))
            return nil
        }
        return text
    }

    /// A name used in DCS keys and file names: letters, digits, `_`, `-` and `.`.
    func identifier(_ key: String, required: Bool = false, errors: inout [ConfigError]) -> String? {
        guard let (text, l) = scalar(key, required: required, errors: &errors) else { return nil }
        let valid = !text.hasPrefix(".") && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) }
        guard valid else {
            errors.append(ConfigError(l, "invalid value '\(text)' for \(qualified(key)): expected letters, digits, '_', '-' and '.' only"))
            return nil
        }
        return text
    }

    func boolean(_ key: String, errors: inout [ConfigError]) -> Bool? {
        guard let (text, l) = scalar(key, errors: &errors) else { return nil }
        guard let b = parseBoolean(.text(text)) else {
            errors.append(ConfigError(l, "invalid value '\(text)' for \(qualified(key)): expected on/off or true/false"))
            return nil
        }
        return b
    }

    func integer(_ key: String, range: ClosedRange<Int>, errors: inout [ConfigError]) -> Int? {
        guard let (text, l) = scalar(key, errors: &errors) else { return nil }
        guard case .success(.integer(let i)) = DirectiveSpec.parse(.text(text), as: .integer(range)) else {
            errors.append(ConfigError(l, "invalid value '\(text)' for \(qualified(key)): expected \(DirectiveKind.integer(range).expectation)"))
            return nil
        }
        return i
    }

    func duration(_ key: String, unit: DurationUnit, errors: inout [ConfigError]) -> Duration? {
        guard let (text, l) = scalar(key, errors: &errors) else { return nil }
        guard let d = parseDuration(.text(text), unit: unit) else {
            errors.append(ConfigError(l, "invalid value '\(text)' for \(qualified(key)): expected \(DirectiveKind.duration(unit).expectation)"))
            return nil
        }
        return d
    }

    func logLevel(_ key: String, errors: inout [ConfigError]) -> LogLevel? {
        guard let (text, l) = scalar(key, errors: &errors) else { return nil }
        guard let level = LogLevel(rawValue: text.uppercased()) else {
            errors.append(ConfigError(l, "invalid value '\(text)' for \(qualified(key)): expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)"))
            return nil
        }
        return level
    }
}

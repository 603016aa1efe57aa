import CYAML

/// A position in a configuration file, 1-based, as people and editors count.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// A YAML node with the place it was written, so that every error can point at it.
public indirect enum YAMLNode: Sendable {
    /// `plain` is true for an unquoted scalar: only those can be null or a boolean word.
    case scalar(String, plain: Bool, SourceLocation)
    case sequence([YAMLNode], SourceLocation)
    case mapping([(key: YAMLNode, value: YAMLNode)], SourceLocation)

    public var location: SourceLocation {
        switch self {
        case .scalar(_, _, let l), .sequence(_, let l), .mapping(_, let l): return l
        }
    }

    /// A plain `~`, `null` or empty scalar: the key is written but has no value.
    public var isNull: Bool {
        if case .scalar(let s, true, _) = self { return s.isEmpty || s == "~" || s.lowercased() == "null" }
        return false
    }

    var kindName: String {
        switch self {
        case .scalar: return "a scalar"
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        }
    }
}

/// Parses YAML text with libyaml into `YAMLNode`s. Aliases are resolved by libyaml.
enum YAMLReader {
    /// Returns nil for a file with no document at all (empty or only comments).
    static func parse(_ text: String, file: String) throws(ConfigError) -> YAMLNode? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            throw ConfigError(SourceLocation(file: file, line: 1, column: 1), "cannot initialise the YAML parser")
        }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        var document = yaml_document_t()
        let loaded: Int32 = bytes.withUnsafeBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            return yaml_parser_load(&parser, &document)
        }
        guard loaded == 1 else {
            let mark = parser.problem_mark
            let problem = parser.problem.map { String(cString: $0) } ?? "malformed YAML"
            var message = "invalid YAML: \(problem)"
            if let context = parser.context { message += " (\(String(cString: context)))" }
            throw ConfigError(SourceLocation(file: file, line: Int(mark.line) + 1, column: Int(mark.column) + 1), message)
        }
        defer { yaml_document_delete(&document) }
        guard let root = yaml_document_get_root_node(&document) else { return nil }
        return convert(root, in: &document, file: file)
    }

    private static func convert(_ node: UnsafeMutablePointer<yaml_node_t>, in document: inout yaml_document_t, file: String) -> YAMLNode {
        let mark = node.pointee.start_mark
        let location = SourceLocation(file: file, line: Int(mark.line) + 1, column: Int(mark.column) + 1)
        switch node.pointee.type {
        case YAML_SCALAR_NODE:
            let scalar = node.pointee.data.scalar
            let value = String(decoding: UnsafeBufferPointer(start: scalar.value, count: Int(scalar.length)), as: UTF8.self)
            return .scalar(value, plain: scalar.style == YAML_PLAIN_SCALAR_STYLE, location)
        case YAML_SEQUENCE_NODE:
            var items: [YAMLNode] = []
            var item = node.pointee.data.sequence.items.start
            while let current = item, current != node.pointee.data.sequence.items.top {
                if let child = yaml_document_get_node(&document, current.pointee) {
                    items.append(convert(child, in: &document, file: file))
                }
                item = current + 1
            }
            return .sequence(items, location)
        case YAML_MAPPING_NODE:
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            var pair = node.pointee.data.mapping.pairs.start
            while let current = pair, current != node.pointee.data.mapping.pairs.top {
                if let key = yaml_document_get_node(&document, current.pointee.key),
                   let value = yaml_document_get_node(&document, current.pointee.value) {
                    pairs.append((convert(key, in: &document, file: file), convert(value, in: &document, file: file)))
                }
                pair = current + 1
            }
            return .mapping(pairs, location)
        default:
            return .scalar("", plain: true, location)
        }
    }
}

/// Reads a YAML file (harpctl's bootstrap files) with positions kept for error messages.
public func loadYAMLFile(_ path: String) throws(ConfigError) -> YAMLNode? {
    try YAMLReader.parse(try readTextFile(path), file: path)
}

extension YAMLNode {
    /// A scalar's text; nil for lists, mappings and nulls.
    public var scalarText: String? {
        if case .scalar(let s, _, _) = self, !isNull { return s }
        return nil
    }

    /// A mapping's entries by key (the last of duplicates); nil for other nodes.
    public var mappingEntries: [(key: String, value: YAMLNode)]? {
        guard case .mapping(let pairs, _) = self else { return nil }
        return pairs.compactMap { pair in pair.key.scalarText.map { ($0, pair.value) } }
    }

    public var sequenceItems: [YAMLNode]? {
        if case .sequence(let items, _) = self { return items }
        return nil
    }
}

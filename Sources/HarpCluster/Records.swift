import Foundation
import HarpDCS

/// A database node as registered in the DCS.
public struct NodeRecord: Sendable, Equatable {
    public var name: String
    public var location: String
    public var dsn: String
    /// Other fields of the record (priority, db_data_dir, ...), kept as they were written.
    public var extra: [String: String]

    public init(name: String, location: String, dsn: String, extra: [String: String] = [:]) {
        self.name = name
        self.location = location
        self.dsn = dsn
        self.extra = extra
    }
}

/// The lead master lease of one location: which node holds it, and the etcd lease under it.
public struct LeaderRecord: Sendable, Equatable {
    public var name: String
    /// The etcd lease the key sits on; 0 when it has none.
    public var lease: Int64
    public var modRevision: Int64
}

/// A value in the DCS that is not what the layout says it should be.
public struct RecordProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var reason: String
    public var description: String { "ignoring malformed DCS value at \(key): \(reason)" }
}

enum RecordDecoding {
    static func object(_ kv: KeyValue) -> Result<[String: Any], RecordProblem> {
        guard let data = kv.value.data(using: .utf8),
              let parsed = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else {
            return .failure(RecordProblem(key: kv.key, reason: "not JSON: \(preview(kv.value))"))
        }
        guard let object = parsed as? [String: Any] else {
            return .failure(RecordProblem(key: kv.key, reason: "expected a JSON object, got \(preview(kv.value))"))
        }
        return .success(object)
    }

    static func node(_ kv: KeyValue, name: String) -> Result<NodeRecord, RecordProblem> {
        object(kv).flatMap { o in
            guard let dsn = o["dsn"] as? String, !dsn.isEmpty else {
                return .failure(RecordProblem(key: kv.key, reason: "a node needs \"dsn\" (a string)"))
            }
            guard let location = o["location"] as? String, !location.isEmpty else {
                return .failure(RecordProblem(key: kv.key, reason: "a node needs \"location\" (a string)"))
            }
            if let written = o["name"] as? String, written != name {
                return .failure(RecordProblem(key: kv.key, reason: "\"name\" is \"\(written)\" but the key says \"\(name)\""))
            }
            var extra: [String: String] = [:]
            for (k, v) in o where !["name", "location", "dsn"].contains(k) { extra[k] = "\(v)" }
            return .success(NodeRecord(name: name, location: location, dsn: dsn, extra: extra))
        }
    }

    static func leader(_ kv: KeyValue) -> Result<LeaderRecord, RecordProblem> {
        object(kv).flatMap { o in
            guard let name = o["name"] as? String, !name.isEmpty else {
                return .failure(RecordProblem(key: kv.key, reason: "a leader needs \"name\" (the node's name)"))
            }
            return .success(LeaderRecord(name: name, lease: kv.lease, modRevision: kv.modRevision))
        }
    }

    static func preview(_ text: String) -> String {
        let cut = text.prefix(60)
        return "'" + cut.replacingOccurrences(of: "\n", with: "\\n") + (text.count > 60 ? "…'" : "'")
    }
}

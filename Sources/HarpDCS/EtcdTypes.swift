/// One key as etcd stores it. Keys and values are text here: HARP's values are JSON.
public struct KeyValue: Sendable, Equatable {
    public var key: String
    public var value: String
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    /// The etcd lease the key sits on, 0 for none.
    public var lease: Int64

    public init(key: String, value: String, createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0, lease: Int64 = 0) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }
}

public struct RangeResult: Sendable {
    /// The store's revision when the range was read.
    public var revision: Int64
    public var kvs: [KeyValue]
}

/// One condition of a transaction, compared against the key's current state.
public struct EtcdCompare: Sendable {
    public enum Target: Sendable {
        case value(String)
        case version(Int64)
        case createRevision(Int64)
        case modRevision(Int64)
    }

    public enum Result: String, Sendable {
        case equal = "EQUAL", notEqual = "NOT_EQUAL", greater = "GREATER", less = "LESS"
    }

    public var key: String
    public var target: Target
    public var result: Result

    public init(key: String, _ result: Result, _ target: Target) {
        self.key = key
        self.target = target
        self.result = result
    }

    /// True when the key does not exist (its create revision is 0).
    public static func absent(_ key: String) -> EtcdCompare { EtcdCompare(key: key, .equal, .createRevision(0)) }
}

/// One operation of a transaction branch.
public enum EtcdOperation: Sendable {
    case put(key: String, value: String, lease: Int64 = 0)
    case delete(key: String, prefix: Bool = false)
    case range(key: String, prefix: Bool = false)
}

public struct TxnResult: Sendable {
    /// Whether every compare held, so that the success branch ran.
    public var succeeded: Bool
    public var revision: Int64
    /// For each range operation of the branch that ran, in order, the keys it read.
    public var ranges: [[KeyValue]]
}

public struct LeaseGrant: Sendable, Equatable {
    public var id: Int64
    public var ttl: Int64
}

/// A watch event as the session sees it.
public struct WatchEvent: Sendable, Equatable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    public var kv: KeyValue
}

/// The end of the byte range that covers every key starting with `prefix` (etcd's `range_end`).
func prefixRangeEnd(_ prefix: String) -> [UInt8] {
    var bytes = Array(prefix.utf8)
    while let last = bytes.last {
        if last < 0xff {
            bytes[bytes.count - 1] = last + 1
            return bytes
        }
        bytes.removeLast()
    }
    return [0]  // every key
}

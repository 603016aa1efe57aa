import Foundation

/// What the session knows of the DCS at one revision: immutable, so every instance can read it
/// without locks and reconcile against it.
public struct DCSSnapshot: Sendable {
    /// The etcd revision this snapshot reflects (0 before the first read).
    public let revision: Int64
    /// Every key under the session's prefix, by full key.
    public let values: [String: KeyValue]
    /// False until the first full read of the prefix succeeded: until then nothing is known.
    public let synced: Bool
    /// Whether the DCS answered the session's last attempt.
    public let reachable: Bool
    /// When the DCS stopped answering; nil while it answers.
    public let unreachableSince: Date?
    /// When the session made it: for a watch event, the moment the event reached this process.
    public let madeAt: ContinuousClock.Instant

    public init(revision: Int64, values: [String: KeyValue], synced: Bool = true, reachable: Bool = true, unreachableSince: Date? = nil,
                madeAt: ContinuousClock.Instant = .now) {
        self.madeAt = madeAt
        self.revision = revision
        self.values = values
        self.synced = synced
        self.reachable = reachable
        self.unreachableSince = unreachableSince
    }

    public subscript(key: String) -> KeyValue? { values[key] }

    /// The keys under `prefix`, sorted.
    public func keys(under prefix: String) -> [KeyValue] {
        values.values.filter { $0.key.hasPrefix(prefix) }.sorted { $0.key < $1.key }
    }
}

/// How the session is doing, for status output and logs.
public struct DCSHealth: Sendable, Equatable {
    public var reachable: Bool
    /// When `reachable` last changed, or when the session started.
    public var since: Date
    public var lastContact: Date?
    /// The same moment on the monotonic clock: what fencing measures outages against, so that a
    /// wall-clock step cannot delay it.
    public var lastContactAt: ContinuousClock.Instant?
    /// The endpoint the watch streams from, when it is connected.
    public var watchEndpoint: String?
}

/// Counters that tell whether the watch is healthy.
public struct DCSStatistics: Sendable, Equatable {
    /// Full re-reads of the prefix that succeeded.
    public var resyncs = 0
    /// Keys that a resync found changed although the watch had not delivered the change.
    public var repairs = 0
    public var watchRestarts = 0
    /// Times the watch asked for a revision etcd had compacted away.
    public var compactions = 0
    public var eventsApplied = 0
}

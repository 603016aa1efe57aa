import HarpConfig
import HarpDCS
import Logging
import Synchronization

/// Turns DCS snapshots into `ClusterState`s and logs each malformed value once (per key and
/// revision), so a bad value is reported where an operator sees it without flooding the log.
/// One view per source of values (HARP's keys, Patroni's): each remembers what it reported.
public final class ClusterView: Sendable {
    public let layout: DCSLayout
    private let logger: Logger
    private let reported = Mutex<Set<String>>([])

    public init(layout: DCSLayout, logger: Logger) {
        self.layout = layout
        self.logger = logger
    }

    public func state(of snapshot: DCSSnapshot) -> ClusterState {
        let state = ClusterState(snapshot: snapshot, layout: layout)
        report(state.problems, in: snapshot)
        return state
    }

    /// Logs each problem not logged yet for that key and revision.
    public func report(_ problems: [RecordProblem], in snapshot: DCSSnapshot) {
        let current = Set(problems.map { "\($0.key)@\(snapshot[$0.key]?.modRevision ?? 0): \($0.reason)" })
        let fresh = reported.withLock { seen -> Set<String> in
            let new = current.subtracting(seen)
            seen = current  // forget fixed values, so that a value broken again is reported again
            return new
        }
        for problem in problems where fresh.contains("\(problem.key)@\(snapshot[problem.key]?.modRevision ?? 0): \(problem.reason)") {
            logger.warning("ignoring malformed DCS value", metadata: ["key": "\(problem.key)", "reason": "\(problem.reason)"])
        }
    }
}

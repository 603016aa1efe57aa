import Dispatch
import HarpCluster
import Logging
import Synchronization

/// Whether a named lead master takes writes, for as long as it leads: the planner holds new
/// clients while the leader's record, or what the host has seen (`readiness`), says it may not;
/// the host then asks the node itself with the source's probes, in their order, and releases
/// the clients the moment one answers that it does.
///
/// Each check runs on threads of its own (blocking probes, paced, each looking at its
/// `StopSignal` every few ms) and is not awaited: a stop, when the plan no longer waits for that
/// leader or the process stops, ends it within milliseconds.
extension ProxyHost {
    /// Ends the checks the plan no longer waits for and starts those it does; forgets what was
    /// seen of leaderships no plan follows now (one named again later is asked again).
    func updateReadinessChecks(wanted: [String: WritabilityCheck], live: Set<String>) {
        for (key, stop) in readinessChecks where wanted[key] == nil {
            stop.set()
            readinessChecks[key] = nil
        }
        readiness = readiness.filter { live.contains($0.key) }
        for check in wanted.values where readinessChecks[check.key] == nil { startCheck(check) }
    }

    private func startCheck(_ check: WritabilityCheck) {
        guard !shuttingDown, !check.probes.isEmpty else { return }
        let stop = StopSignal()
        readinessChecks[check.key] = stop
        let answered = Atomic<Bool>(false)
        let logger = self.logger
        // Probe `i`, and the next one too from the moment `i` cannot ask (the DSN's user unknown,
        // the node down): whichever answers first releases the clients.
        @Sendable func run(_ i: Int) {
            let started = Atomic<Bool>(false)
            let startNext: @Sendable (String) -> Void = { reason in
                guard started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
                let next = i + 1 < check.probes.count ? check.probes[i + 1].label : nil
                logger.warning("cannot ask lead master \(check.member) itself whether it takes writes\(next.map { "; \($0) is asked meanwhile" } ?? ": new clients wait until it answers or hold_timeout")",
                               metadata: ["probe": "\(check.probes[i].kind)", "reason": "\(reason)"])
                if i + 1 < check.probes.count { DispatchQueue.global().async { run(i + 1) } }
            }
            let yes: Bool
            switch check.probes[i] {
            case .postgres(let direct):
                yes = PostgresProbe.run(direct, stop: stop, failed: startNext) == .outOfRecovery
            case .httpJSON(let url, let expect, _):
                yes = HTTPProbe.run(url, expect: expect, stop: stop)
            }
            guard yes, !stop.isSet, answered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            stop.set()
            Task { await self.leaderTakesWrites(check, answer: check.probes[i].answer, stop) }
        }
        DispatchQueue.global().async { run(0) }
    }

    func leaderTakesWrites(_ check: WritabilityCheck, answer: String, _ stop: StopSignal) {
        guard readinessChecks[check.key] === stop else { return }  // no longer waited for
        readinessChecks[check.key] = nil
        // The record as it is now: only one written after this can cast doubt again.
        let revision = currentLeaders()?.writability(of: check.location)?.recordRevision ?? check.recordRevision
        readiness[check.key] = .takesWrites(recordRevision: max(revision, check.recordRevision))
        logger.info("lead master \(check.member) takes writes: new clients go to it", metadata: ["answer": "\(answer)"])
        reconcile(observedAt: .now)
    }

    /// A mode's word that a connect to `target` was refused (nothing listens: its postmaster
    /// died, or is stopping or starting). Where the source can ask the node, new clients wait
    /// until it says it takes writes again: a crashed leader comes back read-only first.
    func leaderRefusedConnection(instance: String, target: LeaderTarget) {
        guard let location = running[instance]?.plan?.location, let check = currentLeaders()?.writability(of: location),
              check.member == target.name, !check.probes.isEmpty, case .takesWrites? = readiness[check.key] else { return }
        readiness[check.key] = .doubted("it refused a connection (its postmaster is down, stopping or starting)")
        running[instance]?.logger.warning("lead master \(target.name) refused a connection: new clients wait until it takes writes again",
                                          metadata: ["leader": "\(target)"])
        reconcile(observedAt: .now)
    }

    /// Stops every check at once (the process is stopping).
    func stopReadinessChecks() {
        for stop in readinessChecks.values { stop.set() }
        readinessChecks = [:]
    }
}

extension WritabilityProbe {
    /// A word for the log.
    var kind: String {
        switch self {
        case .postgres: return "postgresql"
        case .httpJSON: return "http"
        }
    }
}

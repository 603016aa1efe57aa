import HarpCluster
import HarpDCS

/// What the host does besides planning: tasks it starts that come back to it (cancelled and
/// awaited at shutdown), leader-lease lookups, and the timer that re-plans when a fencing
/// deadline passes, since no DCS event will come to say so.
extension ProxyHost {
    /// Starts `body` as one of the host's chores (see `shutdown`); none once it is shutting down.
    @discardableResult
    func chore(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never>? {
        guard !shuttingDown else { return nil }
        nextChore += 1
        let id = nextChore
        let task = Task {
            await body()
            await self.choreDone(id)
        }
        chores[id] = task
        return task
    }

    func choreDone(_ id: Int) { chores[id] = nil }

    /// Asks etcd for a leader lease's granted TTL, once however many instances see the lease.
    func lookUpLease(_ id: Int64) {
        guard leaseLookups.insert(id).inserted else { return }
        let client = session.client
        chore {
            let ttl = try? await client.leaseTimeToLive(id)
            await self.recordLease(id, ttl: ttl.flatMap { $0.granted > 0 ? .seconds($0.granted) : nil })
        }
    }

    /// Records a looked-up TTL; without one, the next snapshot may ask again.
    func recordLease(_ id: Int64, ttl: Duration?) {
        leaseLookups.remove(id)
        guard let ttl else { return }
        leaseTTLs[id] = ttl
        if leaseTTLs.count > 1000 { leaseTTLs = [id: ttl] }
    }

    /// Asks a named lead master that may still be promoting whether it takes writes until it
    /// says it does (the plan then routes to it), the plan stops waiting for it (another is
    /// named: `updateChecks`), or 120 s have passed. PostgreSQL itself is asked where
    /// `patroni_check_dsn` allows; Patroni's REST API where there is none, or from the moment
    /// that connection fails (many requests at once weigh on Patroni while it promotes). With
    /// no way to ask, the record alone decides (Patroni's next loop), and no check is made.
    func checkWritable(_ check: WritabilityCheck) {
        guard writableChecks[check.key] == nil, check.direct != nil || check.primaryCheckURL != nil else { return }
        let stop = CheckFlag(), directFailed = CheckFlag()
        writableChecks[check.key] = stop
        let logger = self.logger
        chore {
            let deadline = ContinuousClock.now + .seconds(120)
            await withTaskGroup(of: String?.self) { group in
                if let direct = check.direct {
                    group.addTask {
                        let outcome = await RecoveryCheck.wait(direct, stop: stop, deadline: deadline) { reason in
                            directFailed.set()
                            logger.warning("cannot ask lead master \(check.member) itself whether it takes writes (dcs.patroni_check_dsn)\(check.primaryCheckURL == nil ? ", and there is no REST API to ask: new clients wait until it answers or hold_timeout" : "; Patroni's REST API is asked meanwhile")",
                                           metadata: ["address": "\(direct.address)", "reason": "\(reason)"])
                        }
                        return outcome == .outOfRecovery ? "PostgreSQL: pg_is_in_recovery() is false" : nil
                    }
                }
                if let url = check.primaryCheckURL {
                    group.addTask {
                        while check.direct != nil, !directFailed.isSet, !stop.isSet, ContinuousClock.now < deadline {
                            try? await Task.sleep(for: .milliseconds(5))
                        }
                        return await PatroniAPI.waitForPrimary(url, stop: stop, deadline: deadline) ? "Patroni's REST API: role master" : nil
                    }
                }
                for await answer in group {
                    guard let answer else { continue }
                    stop.set()
                    await self.leaderWritable(check, answer: answer, stop)
                    return
                }
            }
            await self.checkEnded(check.key, stop)
        }
    }

    func leaderWritable(_ check: WritabilityCheck, answer: String, _ stop: CheckFlag) {
        guard writableChecks[check.key] === stop else { return }  // no longer waited for
        writableChecks[check.key] = nil
        writable.insert(check.key)
        if writable.count > 1000 { writable = [check.key] }
        logger.info("lead master \(check.member) takes writes: new clients go to it", metadata: ["answer": "\(answer)"])
        reconcile(observedAt: .now)
    }

    func checkEnded(_ key: String, _ stop: CheckFlag) {
        if writableChecks[key] === stop { writableChecks[key] = nil }
    }

    /// Ends the checks of leaders the plan no longer waits for, and starts those it does.
    func updateChecks(_ unchecked: [String: WritabilityCheck]) {
        for (key, stop) in writableChecks where unchecked[key] == nil {
            stop.set()
            writableChecks[key] = nil
        }
        for check in unchecked.values { checkWritable(check) }
    }

    /// Re-plans when a fencing deadline passes, since no DCS event will come to say so.
    func scheduleFenceCheck(at deadline: ContinuousClock.Instant?) {
        fenceTimer?.cancel()
        guard let deadline else { return }
        fenceTimer = chore {
            try? await Task.sleep(until: deadline, clock: .continuous)
            guard !Task.isCancelled else { return }
            await self.fenceDeadlinePassed()
        }
    }

    func fenceDeadlinePassed() {
        reconcile(observedAt: .now)
    }
}

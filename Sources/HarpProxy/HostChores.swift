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

    /// Asks a named lead master that may still be promoting whether it takes writes, every
    /// 2 ms after each answer (an answer takes a few: Patroni asks PostgreSQL), until it does (the plan then routes to it), another is named, or its record says
    /// so. Without an API to ask, the record alone decides (Patroni's next loop).
    func checkWritable(_ key: String, url: String?) {
        guard writableChecks.insert(key).inserted else { return }
        chore {
            let deadline = ContinuousClock.now + .seconds(120)
            while !Task.isCancelled, ContinuousClock.now < deadline, await self.unchecked.contains(key) {
                if let url, await PatroniAPI.isPrimary(url) == true {
                    await self.leaderWritable(key)
                    return
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
            await self.checkEnded(key)
        }
    }

    func leaderWritable(_ key: String) {
        writableChecks.remove(key)
        writable.insert(key)
        if writable.count > 1000 { writable = [key] }
        reconcile(observedAt: .now)
    }

    func checkEnded(_ key: String) { writableChecks.remove(key) }

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

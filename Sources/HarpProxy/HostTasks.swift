import HarpCluster
import HarpDCS

/// What the host does besides planning: tasks it starts that come back to it (cancelled and
/// awaited at shutdown), leader-lease lookups, and the timer that re-plans when a fencing
/// deadline passes, since no DCS event will come to say so. (Asking a lead master whether it
/// takes writes is in `LeaderReadiness/`.)
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

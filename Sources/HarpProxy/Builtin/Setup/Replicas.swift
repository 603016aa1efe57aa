import HarpCluster
import Logging
import NIOCore

/// A replica instance (`route_to: replica`): each new client goes to the candidate with the
/// fewest of this instance's sessions (ties in turn), a client whose replica does not answer
/// goes straight to the next, and a session stays on its replica until that replica is promoted,
/// stops or leaves the DCS (then it is cut with 57P01 and the reason). One that only lags or is
/// tagged out keeps its sessions and gets no new client. All on `loop`.
extension BuiltinMode {
    /// Applies a replica instance's plan: cuts the sessions of members it may no longer keep,
    /// starts again the clients still connecting to members no longer candidates, and admits
    /// the waiters once there is a candidate.
    func reconcileReplicas(_ plan: InstancePlan, _ route: ReplicaRoute) {
        let targets = route.targets
        let keep = route.keepsSessions
        let changed = targets != replicaTargets
        let previous = replicaRoute
        replicaTargets = targets
        replicaRoute = route
        replicaFailedAt = replicaFailedAt.filter { name, _ in targets.contains { $0.name == name } }
        admitting = !targets.isEmpty
        if changed { generation += 1 }
        publishRoute()
        logReplicaChanges(from: previous, to: route, location: plan.location ?? "none")
        var sessions: [(any DataPathSession, String)] = []
        for entry in clients.values {
            guard let target = entry.target else { continue }
            if let session = entry.session {
                guard !keep.contains(target.name) else { continue }
                entry.target = nil
                sessions.append((session, target.name))
            } else if entry.waiter == nil, !targets.contains(where: { $0.sameRoute(as: target) }) {
                _ = startAgain(entry)
            }
        }
        for (session, member) in sessions {
            session.cut(with: replicaCutMessage(member, route: route, location: plan.location ?? "none"))
        }
        if !sessions.isEmpty {
            clientCounters.cut += sessions.count
            logger.info("replica sessions cut", metadata: ["closed": "\(sessions.count)", "members": "\(Set(sessions.map(\.1)).sorted().joined(separator: ","))"])
        }
        if !targets.isEmpty {
            for entry in clients.values {
                guard let waiter = entry.waiter else { continue }
                entry.waiter = nil
                waiter.timeout.cancel()
                let target = pickReplica(for: entry, among: targets)
                entry.target = target
                waiter.promise.succeed(admission(target, plan))
            }
        }
    }

    /// `route_to` changed: every session is cut (its clients came for the other kind of node),
    /// clients still connecting start again, and the instance routes the new way.
    func switchRouteTo(replicas: Bool) {
        let now = replicas ? "replica" : "lead_master"
        let error = PostgresWire.errorResponse(sqlstate: "57P01", message: "terminating connection because route_to changed to \(now) (proxy \(instance.name))",
                                               allocator: ByteBufferAllocator())
        var cut = 0
        for entry in clients.values where entry.target != nil {
            if let session = entry.session {
                entry.target = nil
                session.cut(with: error)
                cut += 1
            } else if entry.waiter == nil {
                _ = startAgain(entry)
            }
        }
        clientCounters.cut += cut
        servingReplicas = replicas
        target = nil
        replicaTargets = []
        replicaRoute = nil
        admitting = false
        generation += 1
        logger.info("route_to changed: sessions cut", metadata: ["route_to": "\(now)", "closed": "\(cut)"])
    }

    /// The candidate with the fewest of this instance's sessions (and clients on their way to
    /// it), among those `entry` has not tried; ties in turn. A candidate that failed a connect
    /// in the last two seconds comes last: its clients would each wait for it first (until
    /// `timeout`, if it does not answer at all) before the DCS says it is gone.
    func pickReplica(for entry: ClientEntry, among targets: [LeaderTarget]) -> LeaderTarget {
        let untried = targets.filter { !entry.tried.contains($0.name) }
        var choices = untried.isEmpty ? targets : untried
        let now = NIODeadline.now()
        let healthy = choices.filter { replicaFailedAt[$0.name].map { now - $0 > .seconds(2) } ?? true }
        if !healthy.isEmpty { choices = healthy }
        var counts: [String: Int] = [:]
        for other in clients.values { if let name = other.target?.name { counts[name, default: 0] += 1 } }
        let fewest = choices.map { counts[$0.name] ?? 0 }.min() ?? 0
        let tied = choices.filter { (counts[$0.name] ?? 0) == fewest }
        defer { replicaTurn &+= 1 }
        return tied[replicaTurn % tied.count]
    }

    /// A client on `loop` for a replica instance: a candidate now, a refusal if every candidate
    /// failed it, else the hold.
    func assignReplica(_ entry: ClientEntry, _ plan: InstancePlan) -> EventLoopFuture<Admission> {
        let untried = replicaTargets.filter { !entry.tried.contains($0.name) }
        if !untried.isEmpty, admitting {
            let target = pickReplica(for: entry, among: untried)
            entry.target = target
            return loop.makeSucceededFuture(admission(target, plan))
        }
        if !entry.failures.isEmpty {
            let failures = entry.failures.map { "\($0.name): \($0.error)" }.joined(separator: "; ")
            noteRefusal("no replica answered", reason: "replica_unreachable", ["location": "\(plan.location ?? "none")", "errors": "\(failures)"])
            return loop.makeFailedFuture(Refusal(sqlstate: "08006", message: "cannot connect to any replica of \(plan.location ?? "none"): \(failures) (proxy \(instance.name))"))
        }
        return hold(entry, plan)
    }

    /// A replica that did not answer `channel`'s connect: noted for that client, which asks for
    /// the next candidate.
    func replicaFailed(_ channel: any Channel, target: LeaderTarget, error: String) -> EventLoopFuture<Admission> {
        loop.flatSubmit {
            guard !self.stopped, let plan = self.plan, let entry = self.clients[ObjectIdentifier(channel)],
                  entry.session == nil, entry.waiter == nil else {
                return self.loop.makeFailedFuture(Refusal.shuttingDown)
            }
            entry.tried.insert(target.name)
            entry.failures.append((target.name, error))
            self.replicaFailedAt[target.name] = .now()
            entry.target = nil
            return self.assignReplica(entry, plan)
        }
    }

    /// The 57P01 a replica's session reads when it is cut: why that member may no longer serve reads.
    func replicaCutMessage(_ member: String, route: ReplicaRoute, location: String) -> ByteBuffer {
        let why: String
        if stopped {
            why = "proxy \(instance.name) is stopping"
        } else if let excluded = route.set.excluded.first(where: { $0.name == member }) {
            why = "replica \(member) of \(location) \(excluded.reason)"
        } else if route.reason?.hasPrefix("fenced") ?? false {
            why = "the proxy is \(route.reason ?? "fenced")"
        } else {
            why = "replica \(member) of \(location) is no longer in the DCS"
        }
        return PostgresWire.errorResponse(sqlstate: "57P01", message: "terminating connection because \(why) (proxy \(instance.name))",
                                          allocator: ByteBufferAllocator())
    }

    /// Says which members joined or left the candidates, and why, once per change.
    private func logReplicaChanges(from old: ReplicaRoute?, to new: ReplicaRoute, location: String) {
        let before = Set(old?.set.candidates.map(\.name) ?? [])
        let after = Set(new.set.candidates.map(\.name))
        let sessions = sessionsByMember()
        for name in after.subtracting(before).sorted() {
            logger.info("replica is a candidate: new clients may go to it", metadata: ["location": "\(location)", "member": "\(name)"])
        }
        for excluded in new.set.excluded where before.contains(excluded.name) {
            let kept = excluded.cutsSessions ? "its sessions are cut" : "its \(sessions[excluded.name] ?? 0) sessions stay"
            logger.info("replica is no longer a candidate: \(kept)", metadata: ["location": "\(location)", "member": "\(excluded.name)", "reason": "\(excluded.reason)"])
        }
        for name in before.subtracting(after).subtracting(new.set.excluded.map(\.name)).sorted() {
            logger.info("replica left the DCS: its sessions are cut", metadata: ["location": "\(location)", "member": "\(name)"])
        }
        if let fallback = new.fallback, old?.fallback == nil {
            logger.warning("no replica is a candidate: new clients go to the lead master (replica_fallback)", metadata: ["location": "\(location)", "leader": "\(fallback)"])
        }
        if let reason = new.reason, old?.reason != reason {
            logger.warning("no replica for new clients: they wait up to hold_timeout", metadata: ["reason": "\(reason)"])
        }
    }

    /// Sessions by member, for status and metrics: every member that may have some, 0 included.
    func sessionsByMember() -> [String: Int] {
        var sessions = Dictionary(uniqueKeysWithValues: (replicaRoute?.keepsSessions ?? []).map { ($0, 0) })
        for entry in clients.values where entry.session != nil { if let name = entry.target?.name { sessions[name, default: 0] += 1 } }
        return sessions
    }
}

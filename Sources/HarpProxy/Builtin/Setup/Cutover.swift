import HarpCluster
import Logging
import NIOCore

/// What a leader change, fencing or a stop does to sessions: the joined ones are cut with a
/// 57P01 that says why, both sides; the ones still connecting start again with the new lead
/// master (nothing of theirs reached the old one).
extension BuiltinMode {
    /// Closes every connection of a lead master that is no longer the one, both sides, with a
    /// 57P01 that says why. A client still connecting has sent nothing to the old one: it starts
    /// again instead (`startAgain`).
    func closeConnections(from previous: LeaderTarget?, to next: LeaderTarget?, observedAt: ContinuousClock.Instant) {
        var closed: [EventLoopFuture<Void>] = []
        var restarting: [EventLoopFuture<ClientHandler.Restart>] = []
        var sessions: [any DataPathSession] = []
        for entry in clients.values where entry.target != nil {
            guard let session = entry.session else {
                restarting.append(startAgain(entry))
                continue
            }
            entry.target = nil
            sessions.append(session)
            closed.append(session.closed)
        }
        let error = cutMessage(from: previous, to: next)
        for session in sessions { session.cut(with: error) }
        guard previous != nil else { return }
        let metadata: Logger.Metadata = ["from": "\(previous.map { "\($0)" } ?? "none")", "to": "\(next.map { "\($0)" } ?? "none")"]
        let attached = sessions.count
        let allClosed = EventLoopFuture.andAllComplete(closed, on: loop)
        let restartingCount = restarting.count
        EventLoopFuture.whenAllComplete(restarting, on: loop).and(allClosed).whenComplete { [logger] result in
            let outcomes = (try? result.get().0.map { try? $0.get() }) ?? []
            let restarted = outcomes.count { $0 == .startsAgain }
            // Being refused (their lead master did not answer): neither cut nor started again.
            let refused = outcomes.count { $0 == .beingRefused }
            let closed = attached + restartingCount - restarted - refused
            self.clientCounters.cut += closed
            self.clientCounters.startedAgain += restarted
            var m = metadata
            m["closed"] = "\(closed)"
            if restarted > 0 { m["started_again"] = "\(restarted)" }
            m["ms_since_dcs_event"] = "\(String(format: "%.2f", (ContinuousClock.now - observedAt).fractionalMilliseconds))"
            logger.info("lead master changed: connections to the old one closed", metadata: m)
        }
    }

    /// The lead master stays, but new clients wait until it takes writes: those admitted to it and
    /// still connecting (or asking again after a refused connect) start again, and so wait too.
    /// Joined sessions stay.
    func holdClientsNotJoined() {
        for entry in clients.values where entry.target != nil && entry.session == nil && entry.waiter == nil {
            _ = startAgain(entry)
        }
    }

    /// The FATAL 57P01 a session cut by a move from `previous` to `next` reads (see `DataPath.cut`).
    func cutMessage(from previous: LeaderTarget?, to next: LeaderTarget?) -> ByteBuffer {
        let reason: Refusal
        if stopped {
            reason = Refusal(sqlstate: "57P01", message: "terminating connection because proxy \(instance.name) is stopping")
        } else {
            reason = Refusal.cut(instance: instance.name, location: plan?.location ?? "", from: previous, to: next,
                                 fenced: { if case .fenced(let r) = plan?.routing { return r } else { return nil } }())
        }
        return PostgresWire.errorResponse(sqlstate: reason.sqlstate, message: reason.message, allocator: ByteBufferAllocator())
    }

    /// Tells a client admitted to a lead master that has moved, and not joined to it as far as
    /// `loop` knows, to start again: no byte of it has reached the old one, so it goes to the
    /// new one (or waits for one) instead of being cut. In an unplanned failover, a connect to
    /// the failed node that would hang until `timeout` is dropped at once. A client joined
    /// meanwhile on its own loop is cut when its session is recorded (`joined`); one being
    /// refused reads its error.
    func startAgain(_ entry: ClientEntry) -> EventLoopFuture<ClientHandler.Restart> {
        entry.target = nil
        let channel = entry.channel
        let generation = self.generation
        return channel.eventLoop.submit {
            let handler = try? channel.pipeline.syncOperations.handler(type: ClientHandler.self)
            let outcome = handler?.startAgain(movedAt: generation) ?? .mustClose
            if outcome == .mustClose { channel.close(promise: nil) }
            return outcome
        }
    }

    /// Called on the client's loop once it is joined, before its session starts: the entry keeps
    /// the session, and ends when it closes. A session whose lead master moved or went meanwhile,
    /// or that the instance's stop did not see, is cut here. One joined to the lead master still
    /// in place stays, even if that lead master does not take new clients now: sessions of a
    /// node that is only in doubt are kept.
    func joined(_ client: any Channel, _ session: any DataPathSession, to joinedTarget: LeaderTarget) {
        let id = ObjectIdentifier(client)
        loop.execute {
            guard let entry = self.clients[id] else {
                session.cut(with: self.cutMessage(from: self.target, to: nil))
                return
            }
            entry.session = session
            session.closed.whenComplete { _ in self.loop.execute { self.dropClient(id) } }
            if self.servingReplicas {
                guard !self.stopped, let route = self.replicaRoute, route.keepsSessions.contains(joinedTarget.name) else {
                    entry.target = nil
                    session.cut(with: self.replicaCutMessage(joinedTarget.name, route: self.replicaRoute ?? ReplicaRoute(set: ReplicaSet()),
                                                             location: self.plan?.location ?? "none"))
                    return
                }
                entry.target = joinedTarget
                return
            }
            guard !self.stopped, joinedTarget.sameRoute(as: self.target) else {
                entry.target = nil
                session.cut(with: self.cutMessage(from: joinedTarget, to: self.target))
                return
            }
            entry.target = joinedTarget
        }
    }

    /// Called on the client's loop once the connection to `target` is up: false if the lead
    /// master moved meanwhile (as published), and the caller must close it rather than pass a
    /// byte. A move after this check is found by `joined`.
    func mayJoin(_ target: LeaderTarget) -> Bool {
        let route = route.withLock { $0 }
        guard !route.stopped else { return false }
        if let replicas = route.replicas { return replicas.contains { $0.sameRoute(as: target) } }
        guard let current = route.admission, current.target.sameRoute(as: target) else { return false }
        return true
    }

    func stop() -> EventLoopFuture<Void> {
        stopped = true
        publishRoute()
        refusalSummary?.cancel()
        refusalSummary = nil
        logRefusals()  // refusals not yet reported
        var closing: [EventLoopFuture<Void>] = []
        let stopping = cutMessage(from: target, to: nil)
        closing.append(listenSocket.close())
        for entry in clients.values {
            if let waiter = entry.waiter {
                entry.waiter = nil
                waiter.timeout.cancel()
                waiter.promise.fail(Refusal.shuttingDown)
            }
            if let session = entry.session {
                session.cut(with: stopping)
                closing.append(session.closed)
                continue
            }
            // Not joined: nothing passed yet, and nothing to say between two messages. One
            // joined meanwhile is cut by `joined`.
            let channel = entry.channel
            channel.eventLoop.execute { channel.close(promise: nil) }
            closing.append(channel.closeFuture)
        }
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }
}

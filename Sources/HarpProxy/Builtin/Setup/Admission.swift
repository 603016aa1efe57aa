import HarpCluster
import Logging
import NIOCore

/// Who gets in: a client is admitted to the lead master at once, held up to `hold_timeout`
/// while there is none or it does not take writes yet, or refused (`max_client_conn`, no lead
/// master in time, the lead master unreachable, a standby cluster's leader), and every refusal
/// is counted and logged without flooding the log.
extension BuiltinMode {
    func publishRoute() {
        let admission = admitting && !servingReplicas ? target.flatMap { target in plan.map { self.admission(target, $0) } } : nil
        // Unmanaged too: the instance keeps routing new clients to the target it had.
        let route = Route(admission: stopped ? nil : admission, generation: generation,
                          maxClientConn: plan?.maxClientConn ?? 0, stopped: stopped, replicas: servingReplicas ? replicaTargets : nil)
        self.route.withLock { $0 = route }
    }

    /// One place for `max_client_conn`: takes a slot if one is free.
    func takeSlot(max: Int) -> Bool {
        var current = admitted.load(ordering: .relaxed)
        while current < max {
            let (exchanged, original) = admitted.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Takes a client out of `clients` and gives its slot back.
    @discardableResult
    func dropClient(_ id: ObjectIdentifier) -> ClientEntry? {
        guard let entry = clients.removeValue(forKey: id) else { return nil }
        admitted.subtract(1, ordering: .relaxed)
        return entry
    }

    func admitWaiters(to target: LeaderTarget, plan: InstancePlan) {
        for entry in clients.values {
            guard let waiter = entry.waiter else { continue }
            entry.waiter = nil
            waiter.timeout.cancel()
            entry.target = target
            waiter.promise.succeed(admission(target, plan))
        }
    }

    func admission(_ target: LeaderTarget, _ plan: InstancePlan) -> Admission {
        Admission(target: target, connectTimeout: .milliseconds(max(1, plan.directives.connectTimeout.milliseconds)),
                  holdTimeout: .milliseconds(plan.directives.holdTimeout.milliseconds),
                         // TCP_KEEPIDLE and TCP_KEEPINTVL take 1 to 32767 s; beyond that setsockopt fails and so would every connect.
                         keepaliveSeconds: Int(min(32767, max(1, plan.directives.keepalive.milliseconds / 1000))),
                         generation: generation)
    }

    /// Decides what a new client gets: a lead master now, one within `hold_timeout`, or a refusal.
    ///
    /// With a lead master known, on the client's own loop and at once; `loop` enters the client
    /// in `clients` next, and closes it then if the lead master moved in between. Otherwise (no
    /// lead master, the limit reached, stopping) on `loop`.
    func admit(_ channel: any Channel) -> EventLoopFuture<Admission> {
        let route = route.withLock { $0 }
        if !route.stopped, let admission = route.admission, takeSlot(max: route.maxClientConn) {
            loop.execute { self.enter(channel, admission: admission, generation: route.generation) }
            return channel.eventLoop.makeSucceededFuture(admission)
        }
        return loop.flatSubmit { self.admitOnLoop(channel) }
    }

    func enter(_ channel: any Channel, admission: Admission, generation: UInt64) {
        let id = ObjectIdentifier(channel)
        let entry = ClientEntry(channel: channel)
        clients[id] = entry
        clientCounters.total += 1
        guard !stopped else {
            channel.close(promise: nil)  // `stop` did not see it: closed here
            return
        }
        guard generation == self.generation, admission.target.sameRoute(as: target) else {
            _ = startAgain(entry)  // the lead master moved since: not a byte to the old one
            return
        }
        entry.target = admission.target
    }

    func admitOnLoop(_ channel: any Channel) -> EventLoopFuture<Admission> {
        guard !stopped, let plan else { return loop.makeFailedFuture(Refusal.shuttingDown) }
        guard takeSlot(max: plan.maxClientConn) else {
            noteRefusal("too many connections", reason: "max_client_conn", ["max_client_conn": "\(plan.maxClientConn)"])
            return loop.makeFailedFuture(Refusal.tooMany(instance: instance.name))
        }
        let id = ObjectIdentifier(channel)
        let entry = ClientEntry(channel: channel)
        clients[id] = entry
        clientCounters.total += 1
        return assign(entry, plan)
    }

    /// A client on `loop`: the lead master if it takes writes, a refusal if it never will (a
    /// standby cluster's leader: waiting would not help), else the hold.
    private func assign(_ entry: ClientEntry, _ plan: InstancePlan) -> EventLoopFuture<Admission> {
        if servingReplicas { return assignReplica(entry, plan) }
        if let target, admitting {
            entry.target = target
            return loop.makeSucceededFuture(admission(target, plan))
        }
        if case .readOnlyLeader(_, let reason) = plan.routing {
            noteRefusal("the lead master takes no writes", reason: "read_only_leader", ["location": "\(plan.location ?? "none")"])
            return loop.makeFailedFuture(Refusal.readOnlyLeader(reason, instance: instance.name))
        }
        return hold(entry, plan)
    }

    /// No lead master: the client waits for one, up to `hold_timeout`, then is refused with 57P03.
    func hold(_ entry: ClientEntry, _ plan: InstancePlan) -> EventLoopFuture<Admission> {
        let promise = loop.makePromise(of: Admission.self)
        let reason: String
        switch plan.routing {
        case _ where servingReplicas: reason = ""
        case .fenced(let r): reason = ": fenced, \(r)"
        case .waitingForWrites(_, let r): reason = ": \(r)"
        case .noLeader(let r) where plan.location == nil: reason = ": \(r)"
        default: reason = ""
        }
        let timeout = loop.scheduleTask(in: .milliseconds(plan.directives.holdTimeout.milliseconds)) {
            guard let waiter = entry.waiter else { return }
            entry.waiter = nil
            if self.servingReplicas {
                let why = self.replicaRoute?.reason ?? "no replica"
                self.noteRefusal("no replica within hold_timeout", reason: "no_replica", ["location": "\(plan.location ?? "none")", "reason": "\(why)"])
                waiter.promise.fail(Refusal(sqlstate: "57P03", message: "\(why) (proxy \(self.instance.name))"))
                return
            }
            self.noteRefusal("no lead master within hold_timeout", reason: "no_leader", ["location": "\(plan.location ?? "none")"])
            var refusal = Refusal.noLeader(location: plan.location, instance: self.instance.name)
            refusal.message += reason
            waiter.promise.fail(refusal)
        }
        entry.waiter = (promise, timeout)
        return promise.futureResult
    }

    /// A client told to start again (its lead master moved before it was joined) asks here for
    /// the current lead master, or waits for one. It keeps its place under `max_client_conn`.
    func readmit(_ channel: any Channel) -> EventLoopFuture<Admission> {
        loop.flatSubmit {
            guard !self.stopped, let plan = self.plan, let entry = self.clients[ObjectIdentifier(channel)],
                  entry.session == nil, entry.waiter == nil else {
                return self.loop.makeFailedFuture(Refusal.shuttingDown)
            }
            return self.assign(entry, plan)
        }
    }

    /// The count of lead-master moves as last published (any thread).
    var routeGeneration: UInt64 { route.withLock { $0.generation } }

    /// Whether the instance sends clients to replicas now (any thread).
    var routesToReplicas: Bool { route.withLock { $0.replicas != nil } }

    /// A client that was admitted but could not be served (the lead master did not answer).
    func connectFailed(_ error: String, target: LeaderTarget) {
        loop.execute { self.noteRefusal("cannot connect to the lead master", reason: "leader_unreachable", ["leader": "\(target)", "error": "\(error)"]) }
    }

    /// A client gone before it was joined (its handler says so, on the client's loop): its
    /// entry ends. A joined client's entry ends with its session instead.
    func left(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        loop.execute {
            guard self.clients[id]?.session == nil, let entry = self.dropClient(id) else { return }
            if let waiter = entry.waiter {
                waiter.timeout.cancel()
                waiter.promise.fail(Refusal.shuttingDown)
            }
        }
    }

    /// Counts a refusal and logs at most one line per five seconds. Refusals within the five
    /// seconds after a line are summed up in one more line when they end, by reason, so that a
    /// burst is never reported as a single refusal.
    func noteRefusal(_ what: String, reason: String, _ metadata: Logger.Metadata) {
        clientCounters.refused += 1
        clientCounters.refusedByReason[reason, default: 0] += 1
        refusalsNotLogged[reason, default: 0] += 1
        lastRefusal = (what, metadata)
        // Stopped (a connect that failed just before the stop, say): said at once, no timer left.
        if !stopped, let last = lastRefusalLog, NIODeadline.now() - last < .seconds(5) {
            if refusalSummary == nil {
                refusalSummary = loop.scheduleTask(deadline: last + .seconds(5)) {
                    self.refusalSummary = nil
                    self.logRefusals()
                }
            }
            return
        }
        logRefusals()
    }

    func logRefusals() {
        guard let (what, metadata) = lastRefusal, !refusalsNotLogged.isEmpty else { return }
        var m = metadata
        m["refused"] = "\(refusalsNotLogged.values.reduce(0, +))"
        if refusalsNotLogged.count > 1 {
            m["by_reason"] = "\(refusalsNotLogged.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))"
        }
        logger.warning("client refused: \(what)", metadata: m)
        refusalsNotLogged = [:]
        lastRefusalLog = .now()
    }
}

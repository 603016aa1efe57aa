import Foundation
import HarpCluster
import HarpConfig
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// HARP's default mode: a layer-4 pass-through. Each client is joined to the lead master known
/// when it connects; when the lead master changes or goes, every connection to the old one is
/// closed at once, on both sides, and new clients go to the new one.
///
/// All mutable state lives on one event loop (`loop`); connections run on every loop of the group.
final class BuiltinMode: ProxyMode, @unchecked Sendable {
    static let typeName = "builtin"
    static let holdsClientConnections = true

    let instance: InstanceConfiguration
    let group: any EventLoopGroup
    let loop: any EventLoop
    let logger: Logger

    /// What a client gets once admitted: where to connect, and how.
    struct Admission: Sendable {
        var target: LeaderTarget
        var connectTimeout: TimeAmount
        var keepaliveSeconds: Int
        /// The instance's count of lead-master moves when this was given: a client told that the
        /// lead master moved later than this starts again (see `startAgain`).
        var generation: UInt64
    }

    private struct ListenAddress: Equatable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Touched only on `loop`; Sendable so that `loop`'s own closures may hold it.
    private final class ClientEntry: @unchecked Sendable {
        /// The client's channel. Kept for the entry's life: its identity is the entry's key, so
        /// it must not be freed (and its address reused) while the entry lives.
        let channel: any Channel
        /// nil while the client waits for a lead master.
        var target: LeaderTarget?
        var server: (any Channel)?
        var waiter: (promise: EventLoopPromise<Admission>, timeout: Scheduled<Void>)?

        init(channel: any Channel) { self.channel = channel }
    }

    // Confined to `loop`.
    private var plan: InstancePlan?
    private var target: LeaderTarget?
    private var listener: (any Channel)?
    private var listeningOn: ListenAddress?
    private var binding: ListenAddress?
    private var bindFailureLogged: ListenAddress?
    /// Why the listener the plan asks for is not held (another instance or process has it).
    private var listenError: String?
    private var bindRetry: Scheduled<Void>?
    private var clients: [ObjectIdentifier: ClientEntry] = [:]
    /// Total and refused; `current` is `clients.count`, filled in by `counters()`.
    private var clientCounters = ClientCounters()
    /// Bytes each way, added to by the connections' glue handlers on any event loop.
    let traffic = Traffic()
    private var stopped = false
    /// Refusals since the last "client refused" line, by reason, and the last one's details.
    private var refusalsNotLogged: [String: Int] = [:]
    private var lastRefusal: (what: String, metadata: Logger.Metadata)?
    private var lastRefusalLog: NIODeadline?
    private var refusalSummary: Scheduled<Void>?
    /// What a new client gets when there is a lead master, published by `loop` after every
    /// reconcile so that the client's own loop can admit it without a hop (two thread wake-ups
    /// per connection less); `generation` changes with every move of the lead master.
    private struct Route: Sendable {
        var admission: Admission?
        var generation: UInt64 = 0
        var maxClientConn = 0
        var stopped = false
    }
    private let route = Mutex(Route())
    private var generation: UInt64 = 0
    /// Clients admitted and not yet gone, for `max_client_conn`: `clients` plus admissions on
    /// their way to `loop`. Taken by any loop, given back on `loop` when an entry leaves.
    private let admitted = Atomic<Int>(0)

    init(instance: InstanceConfiguration, group: any EventLoopGroup, loop: any EventLoop, logger: Logger) {
        self.instance = instance
        self.group = group
        self.logger = logger
        self.loop = loop
    }

    // MARK: - ProxyMode

    func apply(_ plan: InstancePlan) {
        // The host applies plans on this loop (see `ProxyHost.hostLoop`): at once, not queued.
        if loop.inEventLoop { reconcile(plan) } else { loop.execute { self.reconcile(plan) } }
    }

    func listener() async -> ListenerStatus {
        (try? await loop.submit { ListenerStatus(listening: self.listeningOn?.description, error: self.listenError) }.get()) ?? ListenerStatus()
    }

    func counters() async -> ClientCounters {
        (try? await loop.submit {
            var counters = self.clientCounters
            counters.current = self.clients.count
            counters.bytesToServer = self.traffic.toServer.load(ordering: .relaxed)
            counters.bytesToClient = self.traffic.toClient.load(ordering: .relaxed)
            return counters
        }.get()) ?? ClientCounters()
    }

    func shutdown() async {
        try? await loop.flatSubmit { self.stop() }.get()
    }

    // MARK: - Reconcile

    private func reconcile(_ plan: InstancePlan) {
        guard !stopped else { return }
        defer { publishRoute() }
        self.plan = plan
        reconcileListener(plan)
        // Unmanaged: keep the current target and every connection, whatever the DCS says.
        guard plan.managed else { return }
        let next = plan.routing.target
        let moved = leaderMoved(from: target, to: next)
        let previous = target
        target = next  // if it did not move: the same node, its lease may be new
        if moved { generation += 1 }
        // Published first: from here on a new client goes to `next` (or waits for one), and one
        // admitted to `previous` just before is turned away by `attach` or `enter`. Then the
        // waiters: a waiter's connect can finish on its own loop before this returns, and
        // `attach` checks it against the published route.
        publishRoute()
        if moved { closeConnections(from: previous, to: next, observedAt: plan.observedAt) }
        if let next { admitWaiters(to: next, plan: plan) }
    }

    /// Closes every connection of a lead master that is no longer the one, both sides: every
    /// client first, then every lead-master side. Each server-side close wakes a backend that
    /// exits and competes for the CPU; the clients should not wait behind that. A client still
    /// connecting has sent nothing to the old one: it starts again instead (`startAgain`).
    private func closeConnections(from previous: LeaderTarget?, to next: LeaderTarget?, observedAt: ContinuousClock.Instant) {
        var closed: [EventLoopFuture<Void>] = []
        var restarting: [EventLoopFuture<ClientHandler.Restart>] = []
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, clients: [any Channel], servers: [any Channel])] = [:]
        for entry in clients.values where entry.target != nil {
            if entry.server == nil {
                restarting.append(startAgain(entry))
                continue
            }
            entry.target = nil
            let loop = entry.channel.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [], [])].clients.append(entry.channel)
            closed.append(entry.channel.closeFuture)
            if let server = entry.server {
                byLoop[ObjectIdentifier(server.eventLoop), default: (server.eventLoop, [], [])].servers.append(server)
                closed.append(server.closeFuture)
            }
        }
        // One task per event loop, its clients first, then its lead-master sides. The other
        // loops' tasks go out first, so that their threads wake while this one does its share.
        let error = cutMessage(from: previous, to: next)
        var own: (clients: [any Channel], servers: [any Channel])?
        for (loop, clients, servers) in byLoop.values {
            if loop.inEventLoop {
                own = (clients, servers)
            } else {
                loop.execute {
                    for client in clients { GlueHandler.cut(client, with: error) }
                    for server in servers { server.close(promise: nil) }
                }
            }
        }
        if let own {
            for client in own.clients { GlueHandler.cut(client, with: error) }
            for server in own.servers { server.close(promise: nil) }
        }
        guard previous != nil else { return }
        let metadata: Logger.Metadata = ["from": "\(previous.map { "\($0)" } ?? "none")", "to": "\(next.map { "\($0)" } ?? "none")"]
        let attached = byLoop.values.reduce(0) { $0 + $1.clients.count }
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

    /// The FATAL 57P01 a session cut by a move from `previous` to `next` reads (see `GlueHandler.cut`).
    private func cutMessage(from previous: LeaderTarget?, to next: LeaderTarget?) -> ByteBuffer {
        let reason: Refusal
        if stopped {
            reason = Refusal(sqlstate: "57P01", message: "terminating connection because proxy \(instance.name) is stopping")
        } else {
            reason = Refusal.cut(instance: instance.name, location: plan?.location ?? "", from: previous, to: next,
                                 fenced: { if case .fenced(let r) = plan?.routing { return r } else { return nil } }())
        }
        return PostgresWire.errorResponse(sqlstate: reason.sqlstate, message: reason.message, allocator: ByteBufferAllocator())
    }

    private func publishRoute() {
        let admission = target.flatMap { target in plan.map { self.admission(target, $0) } }
        // Unmanaged too: the instance keeps routing new clients to the target it had.
        let route = Route(admission: stopped ? nil : admission, generation: generation,
                          maxClientConn: plan?.maxClientConn ?? 0, stopped: stopped)
        self.route.withLock { $0 = route }
    }

    /// One place for `max_client_conn`: takes a slot if one is free.
    private func takeSlot(max: Int) -> Bool {
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
    private func dropClient(_ id: ObjectIdentifier) -> ClientEntry? {
        guard let entry = clients.removeValue(forKey: id) else { return nil }
        admitted.subtract(1, ordering: .relaxed)
        return entry
    }

    private func admitWaiters(to target: LeaderTarget, plan: InstancePlan) {
        for entry in clients.values {
            guard let waiter = entry.waiter else { continue }
            entry.waiter = nil
            waiter.timeout.cancel()
            entry.target = target
            waiter.promise.succeed(admission(target, plan))
        }
    }

    private func admission(_ target: LeaderTarget, _ plan: InstancePlan) -> Admission {
        Admission(target: target, connectTimeout: .milliseconds(max(1, plan.directives.connectTimeout.milliseconds)),
                         // TCP_KEEPIDLE and TCP_KEEPINTVL take 1 to 32767 s; beyond that setsockopt fails and so would every connect.
                         keepaliveSeconds: Int(min(32767, max(1, plan.directives.keepalive.milliseconds / 1000))),
                         generation: generation)
    }

    // MARK: - Clients (called by ClientHandler)

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

    private func enter(_ channel: any Channel, admission: Admission, generation: UInt64) {
        let id = ObjectIdentifier(channel)
        let entry = ClientEntry(channel: channel)
        clients[id] = entry
        clientCounters.total += 1
        channel.closeFuture.whenComplete { _ in self.loop.execute { self.remove(id, closing: channel) } }
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

    private func admitOnLoop(_ channel: any Channel) -> EventLoopFuture<Admission> {
        guard !stopped, let plan else { return loop.makeFailedFuture(Refusal.shuttingDown) }
        guard takeSlot(max: plan.maxClientConn) else {
            noteRefusal("too many connections", reason: "max_client_conn", ["max_client_conn": "\(plan.maxClientConn)"])
            return loop.makeFailedFuture(Refusal.tooMany(instance: instance.name))
        }
        let id = ObjectIdentifier(channel)
        let entry = ClientEntry(channel: channel)
        clients[id] = entry
        clientCounters.total += 1
        channel.closeFuture.whenComplete { _ in self.loop.execute { self.remove(id, closing: channel) } }
        if let target {
            entry.target = target
            return loop.makeSucceededFuture(admission(target, plan))
        }
        return hold(entry, plan)
    }

    /// No lead master: the client waits for one, up to `hold_timeout`, then is refused with 57P03.
    private func hold(_ entry: ClientEntry, _ plan: InstancePlan) -> EventLoopFuture<Admission> {
        let promise = loop.makePromise(of: Admission.self)
        let reason: String
        switch plan.routing {
        case .fenced(let r): reason = ": fenced, \(r)"
        case .noLeader(let r) where plan.location == nil: reason = ": \(r)"
        default: reason = ""
        }
        let timeout = loop.scheduleTask(in: .milliseconds(plan.directives.holdTimeout.milliseconds)) {
            guard let waiter = entry.waiter else { return }
            entry.waiter = nil
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
                  entry.server == nil, entry.waiter == nil else {
                return self.loop.makeFailedFuture(Refusal.shuttingDown)
            }
            if let target = self.target {
                entry.target = target
                return self.loop.makeSucceededFuture(self.admission(target, plan))
            }
            return self.hold(entry, plan)
        }
    }

    /// Tells a client admitted to a lead master that has moved, and not joined to it as far as
    /// `loop` knows, to start again: no byte of it has reached the old one, so it goes to the
    /// new one (or waits for one) instead of being cut. In an unplanned failover, a connect to
    /// the failed node that would hang until `timeout` is dropped at once. A client that was
    /// joined meanwhile, on its own loop, is closed; one being refused reads its error.
    private func startAgain(_ entry: ClientEntry) -> EventLoopFuture<ClientHandler.Restart> {
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

    /// The count of lead-master moves as last published (any thread).
    var routeGeneration: UInt64 { route.withLock { $0.generation } }

    /// Called on the client's loop once the connection to `target` is up: false if the lead
    /// master moved meanwhile, and the caller must close both sides rather than pass a byte. A
    /// move after this check closes both: `loop` closes the client (whose glue closes the
    /// server), or finds the server here.
    func attach(_ client: any Channel, server: any Channel, target: LeaderTarget) -> Bool {
        let route = route.withLock { $0 }
        guard !route.stopped, let current = route.admission, current.target.sameRoute(as: target) else { return false }
        loop.execute {
            guard !self.stopped, let entry = self.clients[ObjectIdentifier(client)], target.sameRoute(as: entry.target),
                  target.sameRoute(as: self.target) else {
                // Joined on its loop just before the move reached it: cut like the others.
                let error = self.cutMessage(from: target, to: self.target)
                client.eventLoop.execute { GlueHandler.cut(client, with: error) }
                server.close(promise: nil)
                return
            }
            entry.server = server
        }
        return true
    }

    /// A client that was admitted but could not be served (the lead master did not answer).
    func connectFailed(_ error: String, target: LeaderTarget) {
        loop.execute { self.noteRefusal("cannot connect to the lead master", reason: "leader_unreachable", ["leader": "\(target)", "error": "\(error)"]) }
    }

    private func remove(_ id: ObjectIdentifier, closing channel: any Channel) {
        guard let entry = dropClient(id) else { return }
        if let waiter = entry.waiter {
            waiter.timeout.cancel()
            waiter.promise.fail(Refusal.shuttingDown)
        }
        entry.server?.close(promise: nil)
    }

    /// Counts a refusal and logs at most one line per five seconds. Refusals within the five
    /// seconds after a line are summed up in one more line when they end, by reason, so that a
    /// burst is never reported as a single refusal.
    private func noteRefusal(_ what: String, reason: String, _ metadata: Logger.Metadata) {
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

    private func logRefusals() {
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

    // MARK: - Listener

    /// Binds the listener the plan asks for. Existing connections stay when it moves; a bind that
    /// fails is logged and retried every second while the old listener, if any, keeps serving.
    private func reconcileListener(_ plan: InstancePlan) {
        let wanted = ListenAddress(host: plan.directives.listenAddress, port: plan.directives.listenPort)
        if wanted == listeningOn || plan.listenBlocked != nil {
            // Back to where it listens, or the wanted address is another instance's (the host
            // logged it): forget any bind under way for another address; keep the listener held.
            binding = nil
            bindRetry?.cancel()
            bindRetry = nil
            bindFailureLogged = nil
            listenError = plan.listenBlocked
            return
        }
        guard wanted != binding else { return }
        bindRetry?.cancel()
        bindRetry = nil
        binding = wanted
        if let old = listener, listeningOn?.port == wanted.port {
            // Another address on the same port: the old listener holds the port, so it goes first.
            // Established connections stay; only new ones wait for the new bind.
            old.close(promise: nil)
            listener = nil
            listeningOn = nil
        }
        ServerBootstrap(group: loop, childGroup: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ClientHandler(mode: self))
                }
            }
            .bind(host: wanted.host, port: wanted.port)
            .hop(to: loop)
            .whenComplete { result in self.bound(wanted, result) }
    }

    private func bound(_ wanted: ListenAddress, _ result: Result<any Channel, any Error>) {
        guard binding == wanted, !stopped else {
            if case .success(let channel) = result { channel.close(promise: nil) }
            return
        }
        binding = nil
        switch result {
        case .success(let channel):
            let old = listener
            listener = channel
            listeningOn = wanted
            bindFailureLogged = nil
            listenError = nil
            old?.close(promise: nil)
            logger.info("listening", metadata: ["listen": "\(wanted)"])
        case .failure(let error):
            listenError = "cannot listen on \(wanted): \(Self.bindErrorText(error))"
            if bindFailureLogged != wanted {
                logger.error("cannot listen; retrying every second", metadata: ["listen": "\(wanted)", "error": "\(error)"])
                bindFailureLogged = wanted
            }
            bindRetry = loop.scheduleTask(in: .seconds(1)) {
                self.bindRetry = nil
                if let plan = self.plan { self.reconcileListener(plan) }
            }
        }
    }

    /// `Address already in use`, rather than NIO's `bind(descriptor:ptr:bytes:): ... (errno: 98)`.
    private static func bindErrorText(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        return "\(error)"
    }

    // MARK: - Stop

    private func stop() -> EventLoopFuture<Void> {
        stopped = true
        publishRoute()
        bindRetry?.cancel()
        refusalSummary?.cancel()
        refusalSummary = nil
        logRefusals()  // refusals not yet reported
        var closing: [EventLoopFuture<Void>] = []
        let stopping = cutMessage(from: target, to: nil)
        if let listener {
            listener.close(promise: nil)
            closing.append(listener.closeFuture)
        }
        for entry in clients.values {
            if let waiter = entry.waiter {
                entry.waiter = nil
                waiter.timeout.cancel()
                waiter.promise.fail(Refusal.shuttingDown)
            }
            // The lead-master side only after the client's cut, on the client's loop: closed
            // first, it would have the glue close the client before the message is written.
            let channel = entry.channel
            let server = entry.server
            channel.eventLoop.execute {
                GlueHandler.cut(channel, with: stopping)
                server?.close(promise: nil)
            }
            closing.append(channel.closeFuture)
        }
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }
}

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
/// Where things are: the setup, in `Setup/`: the listener (`Listener.swift`); who gets in, waits
/// or is refused (`Admission.swift`); what a leader change, fencing or a stop does to sessions
/// (`Cutover.swift`); one client's way in (`ClientHandler.swift`); the sockets the proxy makes
/// itself, accepted and connected on the relay's threads (`Sockets.swift`); a replica
/// instance's choice of replica (`Replicas.swift`). The bytes of an established session, in
/// `DataPath/`: the seam (`DataPath.swift`), the relay's threads (`Relay.swift`), one session on
/// them (`RelaySession.swift`), and the message boundaries a cut needs (`SessionFraming.swift`).
/// Calls go one way: a client asks (admit, join, leave), the mode answers; the mode tells a
/// client only to start again.
///
/// All mutable state lives on one event loop (`loop`); connections run on every loop of the group.
final class BuiltinMode: ProxyMode, @unchecked Sendable {
    static let typeName = "builtin"
    static let holdsClientConnections = true

    let instance: InstanceConfiguration
    let group: any EventLoopGroup
    let loop: any EventLoop
    let logger: Logger
    /// How an established session's bytes pass.
    let dataPath: any DataPath
    /// The relay's threads: they accept clients, wait for connects, and pass sessions' bytes.
    let relays: RelayGroup
    /// Bytes each way, added to by the data path on any event loop.
    let traffic: Traffic

    /// What a client gets once admitted: where to connect, and how.
    struct Admission: Sendable {
        var target: LeaderTarget
        var connectTimeout: TimeAmount
        /// How long a client waits for a lead master that refuses connections (its postmaster
        /// is stopping or starting) before it is refused itself: `hold_timeout`.
        var holdTimeout: TimeAmount
        var keepaliveSeconds: Int
        /// The instance's count of lead-master moves when this was given: a client told that the
        /// lead master moved later than this starts again (see `startAgain`).
        var generation: UInt64
    }

    /// Touched only on `loop`; Sendable so that `loop`'s own closures may hold it.
    final class ClientEntry: @unchecked Sendable {
        /// The client's channel. Kept for the entry's life: its identity is the entry's key, so
        /// it must not be freed (and its address reused) while the entry lives.
        let channel: any Channel
        /// nil while the client waits for a lead master.
        var target: LeaderTarget?
        /// Once joined: the session, which ends the entry when it closes.
        var session: (any DataPathSession)?
        var waiter: (promise: EventLoopPromise<Admission>, timeout: Scheduled<Void>)?
        /// A replica instance's client: the members whose connect failed it, and why.
        var tried: Set<String> = []
        var failures: [(name: String, error: String)] = []

        init(channel: any Channel) { self.channel = channel }
    }

    // Confined to `loop`.
    var plan: InstancePlan?
    var target: LeaderTarget?
    /// Set once in `init` (it needs `self` for the clients it accepts).
    var listenSocket: Listener!
    var clients: [ObjectIdentifier: ClientEntry] = [:]
    /// Total and refused; `current` is `clients.count`, filled in by `counters()`.
    var clientCounters = ClientCounters()
    var stopped = false
    /// Refusals since the last "client refused" line, by reason, and the last one's details.
    var refusalsNotLogged: [String: Int] = [:]
    var lastRefusal: (what: String, metadata: Logger.Metadata)?
    var lastRefusalLog: NIODeadline?
    var refusalSummary: Scheduled<Void>?
    /// What a new client gets when there is a lead master, published by `loop` after every
    /// reconcile so that the client's own loop can admit it without a hop (two thread wake-ups
    /// per connection less); `generation` changes with every move of the lead master.
    struct Route: Sendable {
        var admission: Admission?
        var generation: UInt64 = 0
        var maxClientConn = 0
        var stopped = false
        /// A replica instance's candidates (admitted on `loop`, which counts sessions); nil for
        /// a lead-master instance.
        var replicas: [LeaderTarget]?
    }
    let route = Mutex(Route())
    var generation: UInt64 = 0
    /// Clients admitted and not yet gone, for `max_client_conn`: `clients` plus admissions on
    /// their way to `loop`. Taken by any loop, given back on `loop` when an entry leaves.
    let admitted = Atomic<Int>(0)
    /// Whether new clients are sent to `target` now (it takes writes), or wait.
    var admitting = false
    /// `route_to: replica`: the members new clients go to, the route they come from, and whose
    /// turn a tie is.
    var servingReplicas = false
    var replicaTargets: [LeaderTarget] = []
    var replicaRoute: ReplicaRoute?
    var replicaTurn = 0
    /// When a candidate last failed a client's connect: it comes last for a while.
    var replicaFailedAt: [String: NIODeadline] = [:]
    /// The host's ear for a lead master that refused a connect (`onLeaderRefusedConnection`).
    let refusedConnection = Mutex<(@Sendable (LeaderTarget) -> Void)?>(nil)

    init(instance: InstanceConfiguration, context: ModeContext, logger: Logger) {
        self.instance = instance
        group = context.group
        self.logger = logger
        loop = context.loop
        relays = context.relays
        let traffic = Traffic()
        self.traffic = traffic
        dataPath = RelayDataPath(traffic: traffic, relays: relays)
        listenSocket = Listener(loop: loop, relays: relays, logger: logger) { [unowned self] client in self.accepted(client) }
    }

    /// A client the listener accepted (on a relay thread): its setup runs on NIO, on a
    /// duplicate of its socket; the socket itself stays the proxy's, for the data path.
    func accepted(_ client: CInt) {
        let socket = OwnedSocket(client)
        let duplicate = fcntl(client, F_DUPFD_CLOEXEC, 0)
        guard duplicate >= 0 else { return }  // out of descriptors: the client is closed
        ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ClientHandler(mode: self, socket: socket)) }
            }
            .withConnectedSocket(duplicate)
            .whenFailure { _ in socket.close() }
    }

    // MARK: - ProxyMode

    func apply(_ plan: InstancePlan) {
        // The host applies plans on this loop (see `ProxyHost.hostLoop`): at once, not queued.
        if loop.inEventLoop { reconcile(plan) } else { loop.execute { self.reconcile(plan) } }
    }

    func listener() async -> ListenerStatus {
        (try? await loop.submit { self.listenSocket.status }.get()) ?? ListenerStatus()
    }

    func counters() async -> ClientCounters {
        (try? await loop.submit {
            var counters = self.clientCounters
            counters.current = self.clients.count
            if self.servingReplicas { counters.sessionsByMember = self.sessionsByMember() }
            counters.bytesToServer = self.traffic.toServer.load(ordering: .relaxed)
            counters.bytesToClient = self.traffic.toClient.load(ordering: .relaxed)
            return counters
        }.get()) ?? ClientCounters()
    }

    func shutdown() async {
        try? await loop.flatSubmit { self.stop() }.get()
    }

    func onLeaderRefusedConnection(_ report: @escaping @Sendable (LeaderTarget) -> Void) {
        refusedConnection.withLock { $0 = report }
    }

    /// A client's connect to `target` was refused (any loop).
    func leaderRefused(_ target: LeaderTarget) {
        refusedConnection.withLock { $0 }?(target)
    }

    // MARK: - Reconcile

    func reconcile(_ plan: InstancePlan) {
        guard !stopped else { return }
        defer { publishRoute() }
        self.plan = plan
        listenSocket.reconcile(plan)
        // Unmanaged: keep the current target and every connection, whatever the DCS says.
        guard plan.managed else { return }
        if (plan.replicas != nil) != servingReplicas { switchRouteTo(replicas: plan.replicas != nil) }
        if let replicas = plan.replicas {
            reconcileReplicas(plan, replicas)
            return
        }
        // `next` is where sessions belong; new clients go there only once it takes writes.
        let next = plan.routing.target
        let moved = leaderMoved(from: target, to: next)
        let previous = target
        let stopsAdmitting = admitting && plan.routing.serving == nil
        target = next  // if it did not move: the same node, its lease may be new
        admitting = plan.routing.serving != nil
        if moved || stopsAdmitting { generation += 1 }
        // Published first: from here on a new client goes to `next` (or waits for one), and one
        // admitted to `previous` just before is turned away by `attach` or `enter`. Then the
        // waiters: a waiter's connect can finish on its own loop before this returns, and
        // `attach` checks it against the published route.
        publishRoute()
        if moved {
            closeConnections(from: previous, to: next, observedAt: plan.observedAt)
        } else if stopsAdmitting {
            // The same lead master, which may not take writes now (restarted read-only after a
            // crash): its sessions stay, clients still connecting to it wait with the new ones.
            holdClientsNotJoined()
        }
        if let serving = plan.routing.serving { admitWaiters(to: serving, plan: plan) }
    }
}

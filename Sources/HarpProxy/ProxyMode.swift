import HarpCluster
import HarpConfig
import Logging
import NIOCore

/// A way of proxying: `builtin` (layer-4 pass-through) and `pgbouncer` (a driven PgBouncer). A mode receives
/// the instance's whole plan each time anything changes and makes the world match it.
///
/// Adding a mode: one file with a type that conforms, and one line in `ProxyModes.all`.
public protocol ProxyMode: AnyObject, Sendable {
    /// The value of the `type` directive that selects this mode.
    static var typeName: String { get }

    /// Whether clients' connections pass through this process (two descriptors each), so that
    /// `max_client_conn` must fit its descriptor limit. A mode that drives another process does not.
    static var holdsClientConnections: Bool { get }

    init(instance: InstanceConfiguration, context: ModeContext, logger: Logger)

    /// Level-triggered: called with the full desired state on every change. Must return at once.
    func apply(_ plan: InstancePlan)

    /// Where the instance listens now, if it does, and why not where its plan says, if it does not.
    func listener() async -> ListenerStatus

    func counters() async -> ClientCounters

    /// What this mode adds to its instance's status record and metrics (PgBouncer's pools, say).
    func report() async -> ModeReport

    /// Stop accepting and close every connection.
    func shutdown() async

    /// Where the mode connects to the lead master itself: `report` is called when a connect is
    /// refused (nothing listens: its postmaster died, or is stopping or starting), so that the
    /// host can hold new clients until the node takes writes again. Set once, before any plan.
    func onLeaderRefusedConnection(_ report: @escaping @Sendable (LeaderTarget) -> Void)
}

extension ProxyMode {
    public func report() async -> ModeReport { ModeReport() }
    /// A mode whose connections to the lead master are made by another process sees no refusal.
    public func onLeaderRefusedConnection(_ report: @escaping @Sendable (LeaderTarget) -> Void) {}
}

/// A mode's own part of its instance's status: fields of the status record and gauges for
/// /metrics, which the host passes on without knowing what they mean.
public struct ModeReport: Sendable {
    /// A JSON value of the status record.
    public enum Field: Sendable, Equatable {
        case integer(Int), string(String), boolean(Bool), object([String: Field])

        public var json: Any {
            switch self {
            case .integer(let i): return i
            case .string(let s): return s
            case .boolean(let b): return b
            case .object(let o): return o.mapValues(\.json)
            }
        }
    }

    public struct Gauge: Sendable {
        public var name: String
        public var labels: [(String, String)]
        public var value: Double
        public var help: String

        public init(_ name: String, _ labels: [(String, String)] = [], _ value: Double, help: String) {
            self.name = name
            self.labels = labels
            self.value = value
            self.help = help
        }
    }

    public var fields: [String: Field] = [:]
    public var gauges: [Gauge] = []

    public init(fields: [String: Field] = [:], gauges: [Gauge] = []) {
        self.fields = fields
        self.gauges = gauges
    }
}

/// Where an instance listens, as status reports it.
public struct ListenerStatus: Sendable, Equatable {
    /// The address it holds now (the previous one while a new one cannot be had).
    public var listening: String?
    /// Why it does not hold the address its plan asks for: that address is in use, by another
    /// instance or another process. nil when it does.
    public var error: String?

    public init(listening: String? = nil, error: String? = nil) {
        self.listening = listening
        self.error = error
    }
}

/// What the host lends every mode it makes.
public struct ModeContext: Sendable {
    /// The event loops connections are set up on.
    public var group: any EventLoopGroup
    /// The loop of the host, which applies plans: a mode's own bookkeeping on it takes no
    /// thread hop from the plan.
    public var loop: any EventLoop
    /// The relay threads established builtin sessions pass on (the daemon's, stopped last).
    public var relays: RelayGroup

    public init(group: any EventLoopGroup, loop: any EventLoop, relays: RelayGroup) {
        self.group = group
        self.loop = loop
        self.relays = relays
    }
}

public enum ProxyModes {
    public static let all: [any ProxyMode.Type] = [BuiltinMode.self, PgBouncerMode.self]

    public static func named(_ name: String) -> (any ProxyMode.Type)? {
        all.first { $0.typeName == name }
    }
}

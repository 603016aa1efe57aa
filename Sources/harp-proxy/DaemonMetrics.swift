import Foundation
import HarpDCS
import HarpProxy
import Prometheus
#if canImport(Glibc)
import Glibc
#endif

/// `GET /metrics`: the process's figures in the Prometheus text format, through swift-prometheus.
///
/// Pull-style: the figures already live where they are kept (each mode's counters, the DCS
/// session, /proc), so a scrape reads them all and sets the registry's series, then emits it.
/// Nothing on the data path touches the registry. Scrapes run one at a time (an actor), so a
/// counter is never seen half-updated.
actor DaemonMetrics {
    private let host: ProxyHost
    private let session: DCSSession
    private let registry = PrometheusCollectorRegistry()
    private var counters: [String: Counter] = [:]
    private var gauges: [String: Gauge] = [:]
    /// The series of each instance, so that an instance removed by a reload takes them along.
    private var seriesOfInstance: [String: Set<String>] = [:]

    static let states = ["routing", "waiting-for-writes", "standby-leader", "no-leader", "no-location", "fenced", "listen-failed", "unmanaged", "stopped",
                         "routing-replicas", "no-replica", "replica-fallback"]

    init(host: ProxyHost, session: DCSSession) {
        self.host = host
        self.session = session
    }

    func text() async -> String {
        let statuses = await host.status()
        var seen: [String: Set<String>] = [:]
        for s in statuses {
            let i = [("instance", s.name)]
            var keys: Set<String> = []
            func g(_ name: String, _ labels: [(String, String)], _ value: Double, _ help: String) {
                keys.insert(gauge(name, i + labels, value, help))
            }
            func c(_ name: String, _ labels: [(String, String)], _ value: Int, _ help: String) {
                keys.insert(counter(name, i + labels, value, help))
            }
            g("harp_proxy_clients", [], Double(s.clients.current), "Clients connected or waiting now")
            c("harp_proxy_connections_total", [], s.clients.total, "Clients accepted since start")
            for (member, sessions) in s.clients.sessionsByMember.sorted(by: { $0.key < $1.key }) {
                g("harp_proxy_member_sessions", [("member", member)], Double(sessions), "A replica instance's sessions, by member")
            }
            for reason in ["max_client_conn", "no_leader", "leader_unreachable", "read_only_leader", "no_replica", "replica_unreachable"] {
                c("harp_proxy_refused_total", [("reason", reason)], s.clients.refusedByReason[reason] ?? 0, "Clients turned away, by reason")
            }
            c("harp_proxy_leader_changes_total", [], s.leaderChanges, "Times the lead master changed")
            c("harp_proxy_sessions_cut_total", [], s.clients.cut, "Sessions closed because the lead master moved or went, or the instance was fenced")
            c("harp_proxy_clients_started_again_total", [], s.clients.startedAgain, "Clients still connecting when the lead master moved, sent on to the new one instead of cut")
            if let since = s.leaderSince {
                g("harp_proxy_leader_age_seconds", [], Date().timeIntervalSince(since), "Seconds since the lead master last changed (or was first known)")
            }
            c("harp_proxy_bytes_total", [("direction", "client_to_server")], s.clients.bytesToServer, "Bytes passed, by direction")
            c("harp_proxy_bytes_total", [("direction", "server_to_client")], s.clients.bytesToClient, "Bytes passed, by direction")
            let state = s.state
            for name in Self.states {
                g("harp_proxy_state", [("state", name)], name == state ? 1 : 0, "1 for the instance's current state")
            }
            for gauge in s.report.gauges { g(gauge.name, gauge.labels, gauge.value, gauge.help) }
            seen[s.name] = keys
        }
        // Instances gone since the last scrape take their series with them, and so do series an
        // instance no longer has (a replica that left the DCS).
        for (name, keys) in seriesOfInstance {
            for key in keys.subtracting(seen[name] ?? []) {
                if let gauge = gauges.removeValue(forKey: key) { registry.unregisterGauge(gauge) }
                if let counter = counters.removeValue(forKey: key) { registry.unregisterCounter(counter) }
            }
        }
        seriesOfInstance = seen

        let health = session.health
        let statistics = session.statistics
        _ = gauge("harp_proxy_dcs_connected", [], health.reachable ? 1 : 0, "1 while the DCS answers")
        _ = counter("harp_proxy_dcs_watch_events_total", [], statistics.eventsApplied, "Watch events applied")
        _ = counter("harp_proxy_dcs_request_errors_total", [], session.client.requestErrors, "DCS requests that failed")
        if let last = health.lastContactAt {
            _ = gauge("harp_proxy_dcs_last_contact_age_seconds", [], (ContinuousClock.now - last).seconds, "Seconds since the last linearizable answer from the DCS")
        }
        _ = gauge("harp_proxy_open_fds", [], Double(Self.openDescriptors()), "Descriptors the process has open")
        _ = gauge("harp_proxy_max_fds", [], Double(Self.descriptorLimit()), "The process's descriptor limit (soft RLIMIT_NOFILE)")
        return registry.emitToString()
    }

    /// Sets a gauge; returns its key.
    private func gauge(_ name: String, _ labels: [(String, String)], _ value: Double, _ help: String) -> String {
        let key = Self.key(name, labels)
        let gauge = gauges[key] ?? registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
        gauges[key] = gauge
        gauge.set(value)
        return key
    }

    /// Sets a counter to a running total kept elsewhere; returns its key.
    private func counter(_ name: String, _ labels: [(String, String)], _ value: Int, _ help: String) -> String {
        let key = Self.key(name, labels)
        let counter = counters[key] ?? registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
        counters[key] = counter
        counter.reset()
        counter.increment(by: Int64(value))
        return key
    }

    /// The whole name goes in `metricName`: an empty unit adds no suffix.
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    static func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    }

    static func descriptorLimit() -> Int {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return Int(limit.rlim_cur)
    }
}

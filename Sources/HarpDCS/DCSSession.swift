import Foundation
import HarpConfig
import Logging

/// The process's one session with the DCS: it keeps a copy of every key under `prefix`
/// (`/harp/<cluster>/`) up to date and hands out immutable snapshots of it.
///
/// Two threads keep the copy right:
/// - the watch streams changes as they happen, resuming from the last revision after any break;
/// - the resync re-reads the whole prefix every `dcs.resync_interval` (linearizable), repairs any
///   difference, and restarts the watch if the watch had missed something, so that a watch that
///   went silently dead costs at most one interval, never minutes.
/// Both retry forever; the session never gives up because the DCS is down.
public final class DCSSession: @unchecked Sendable {
    public let client: EtcdClient
    public let prefix: String
    private let configuration: DCSConfiguration
    private let logger: Logger

    private struct State {
        var values: [String: KeyValue] = [:]
        var revision: Int64 = 0
        /// The highest revision the watch has delivered, even events already known from a resync.
        var watchRevision: Int64 = 0
        var synced = false
        var health: DCSHealth
        var statistics = DCSStatistics()
        var snapshot: DCSSnapshot
        var subscribers: [Int: AsyncStream<DCSSnapshot>.Continuation] = [:]
        var nextSubscriber = 0
        var started = false
        var stopping = false
        var resyncRequested = false
        var watchRestartRequested = false
    }

    // All of `state` is guarded by `lock`; the threads wait on it as a condition.
    private let lock = NSCondition()
    private let ignoring: @Sendable (String) -> Bool
    private var state: State
    private let threads = DispatchGroup()

    static let minimumBackoff: Duration = .milliseconds(100)

    /// - Parameter ignoring: keys under `prefix` the caller never reads (its own reports, say):
    ///   kept out of the snapshot, so that writing one does not publish a new snapshot.
    public init(configuration: DCSConfiguration, prefix: String, logger: Logger = Logger(label: "harp.dcs"),
                ignoring: @escaping @Sendable (String) -> Bool = { _ in false }) {
        self.configuration = configuration
        self.prefix = prefix
        self.logger = logger
        self.ignoring = ignoring
        client = EtcdClient(configuration: configuration, logger: logger)
        let now = Date()
        state = State(health: DCSHealth(reachable: true, since: now),
                      snapshot: DCSSnapshot(revision: 0, values: [:], synced: false))
    }

    // MARK: - Public

    /// Starts the watch and the resync. Returns at once: the first snapshot follows when etcd answers.
    public func start() {
        let first = locked { s -> Bool in
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        spawn("harp-dcs-resync") { self.resyncLoop() }
        spawn("harp-dcs-watch") { self.watchLoop() }
    }

    /// Stops both threads (the watch within about a second) and ends every snapshot stream.
    public func shutdown() {
        let subscribers = locked { s -> [AsyncStream<DCSSnapshot>.Continuation] in
            s.stopping = true
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        subscribers.forEach { $0.finish() }
        _ = threads.wait(timeout: .now() + 3)
    }

    public var snapshot: DCSSnapshot { peek { $0.snapshot } }
    public var health: DCSHealth { peek { $0.health } }
    public var statistics: DCSStatistics { peek { $0.statistics } }

    /// Snapshots as they change, starting with the current one. Only the newest is kept for a
    /// slow reader: a reader reconciles against the latest state, never a backlog of events.
    public func snapshots() -> AsyncStream<DCSSnapshot> {
        let (stream, continuation) = AsyncStream.makeStream(of: DCSSnapshot.self, bufferingPolicy: .bufferingNewest(1))
        let id: Int? = locked { s in
            guard !s.stopping else { return nil }
            let id = s.nextSubscriber
            s.nextSubscriber += 1
            s.subscribers[id] = continuation
            continuation.yield(s.snapshot)
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in self?.locked { _ = $0.subscribers.removeValue(forKey: id) } }
        return stream
    }

    /// The first snapshot that satisfies `predicate`, or nil after `timeout`.
    public func waitForSnapshot(timeout: Duration, where predicate: @escaping @Sendable (DCSSnapshot) -> Bool) async -> DCSSnapshot? {
        await withTaskGroup(of: DCSSnapshot?.self) { group in
            group.addTask {
                for await snapshot in self.snapshots() where predicate(snapshot) { return snapshot }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Re-read the prefix now rather than at the next interval.
    public func requestResync() {
        locked { $0.resyncRequested = true }
    }

    // MARK: - Resync

    private func resyncLoop() {
        var backoff = Self.minimumBackoff
        var due = ContinuousClock.now
        while true {
            let go = wait(until: due) { $0.stopping || $0.resyncRequested }
            guard go != .stopping else { return }
            locked { $0.resyncRequested = false }
            do {
                let result = try client.rangeNow(prefix, prefix: true)
                reportContact(nil)
                backoff = Self.minimumBackoff
                if let suspect = apply(range: result) { checkWatch(deliveredUpTo: suspect.revision, keys: suspect.keys) }
                due = ContinuousClock.now + configuration.resyncInterval
            } catch {
                reportContact(error)
                due = ContinuousClock.now + backoff
                backoff = min(backoff * 2, min(configuration.resyncInterval, .seconds(2)))
            }
        }
    }

    /// Replaces the copy with a full read. Returns the changes the watch should have delivered, if
    /// any: the caller then checks that the watch is alive.
    private func apply(range result: RangeResult) -> (revision: Int64, keys: [String])? {
        let (suspect, changed) = locked { s -> ((revision: Int64, keys: [String])?, Bool) in
            // The watch has already delivered something newer than this read: keep the newer state.
            guard result.revision >= s.revision else { return (nil, false) }
            let fresh = Dictionary(result.kvs.filter { !ignoring($0.key) }.map { ($0.key, $0) }, uniquingKeysWith: { $1 })
            var target: Int64 = 0
            var keys: [String] = []
            for (key, kv) in fresh where s.values[key] != kv {
                keys.append(key)
                target = max(target, kv.modRevision)
            }
            for (key, old) in s.values where fresh[key] == nil {
                keys.append(key)
                target = max(target, old.modRevision + 1)
            }
            let wasSynced = s.synced
            s.values = fresh
            s.revision = result.revision
            s.synced = true
            s.statistics.resyncs += 1
            if !keys.isEmpty || !wasSynced { publish(&s) }
            return (wasSynced && !keys.isEmpty ? (target, keys.sorted()) : nil, !wasSynced)
        }
        if changed { logger.info("DCS read", metadata: ["revision": "\(result.revision)", "keys": "\(result.kvs.count)"]) }
        return suspect
    }

    /// A resync found changes. If the watch delivers them within a short grace, it was only
    /// behind; if not, it is dead or stuck: count the repair, say so, and restart it.
    private func checkWatch(deliveredUpTo target: Int64, keys: [String]) {
        let grace = max(Duration.seconds(1), configuration.requestTimeout * 4)
        let outcome = wait(until: ContinuousClock.now + grace) { $0.stopping || $0.watchRevision >= target }
        guard outcome == .timedOut else { return }
        locked { s in
            s.statistics.repairs += keys.count
            s.watchRestartRequested = true
        }
        logger.warning("resync repaired keys the watch had not delivered; restarting the watch",
                       metadata: ["keys": "\(keys.prefix(5).joined(separator: ","))\(keys.count > 5 ? ",…" : "")",
                                  "count": "\(keys.count)"])
    }

    // MARK: - Watch

    private func watchLoop() {
        var backoff = Self.minimumBackoff
        while true {
            guard wait(until: nil, { $0.stopping || $0.synced }) != .stopping else { return }
            var failures: [DCSError.EndpointFailure] = []
            var streamed = false
            for index in client.endpointOrder() {
                let began = ContinuousClock.now
                let outcome = runWatch(on: index)
                if peek({ $0.stopping }) { return }
                switch outcome {
                case .couldNotConnect(let failure):
                    client.markFailed(index)
                    failures.append(failure)
                    continue
                case .refused(let error):
                    logger.error("etcd refused the watch", metadata: ["error": "\(error)"])
                    failures.append(.init(endpoint: configuration.endpoints[index].url, reason: "\(error)", isTLS: false))
                    continue
                case .ended(let reason):
                    // A stream that ends as soon as it starts (a refused or cancelled watch) must not spin.
                    streamed = ContinuousClock.now - began >= .seconds(1)
                    let requested = locked { s -> Bool in
                        defer { s.watchRestartRequested = false }
                        if s.watchRestartRequested { s.statistics.watchRestarts += 1 }
                        return s.watchRestartRequested
                    }
                    if !requested {
                        // The stream broke on its own: prefer another member next time.
                        client.markFailed(index)
                        logger.info("watch stream ended; resuming", metadata: ["endpoint": "\(configuration.endpoints[index].url)", "reason": "\(reason)"])
                    }
                case .compacted(let oldest):
                    streamed = true
                    logger.warning("watch resumed from a compacted revision; re-reading the prefix", metadata: ["compact_revision": "\(oldest)"])
                    locked { s in
                        s.statistics.compactions += 1
                        s.resyncRequested = true
                    }
                    _ = wait(until: nil) { $0.stopping || $0.revision >= oldest }
                }
                break
            }
            locked { $0.health.watchEndpoint = nil }
            if streamed {
                backoff = Self.minimumBackoff
            } else {
                // Reachability is the resync's to judge; a watch that cannot stream only retries.
                if !failures.isEmpty { logger.debug("watch could not start", metadata: ["error": "\(DCSError.unreachable(failures))"]) }
                _ = wait(until: ContinuousClock.now + backoff) { $0.stopping }
                backoff = min(backoff * 2, min(configuration.resyncInterval, .seconds(2)))
            }
        }
    }

    /// One watch stream on one endpoint, from the revision after the last one known. Blocks until
    /// the stream ends, breaks, or is asked to stop.
    private func runWatch(on index: Int) -> WatchOutcome {
        let endpoint = configuration.endpoints[index]
        let headers: [String]
        do throws(EtcdClient.AttemptError) {
            headers = try client.authorizationHeaders(endpoint)
        } catch {
            switch error {
            case .down(let reason, let isTLS): return .couldNotConnect(.init(endpoint: endpoint.url, reason: reason, isTLS: isTLS))
            case .fatal(let e): return .refused(e)
            }
        }
        let start = locked { s -> Int64 in
            s.watchRestartRequested = false
            return s.revision + 1
        }
        let request: [String: Any] = ["create_request": [
            "key": base64(prefix),
            "range_end": Data(prefixRangeEnd(prefix)).base64EncodedString(),
            "start_revision": String(start),
            "progress_notify": true,
        ]]
        let body = Array((try? JSONSerialization.data(withJSONObject: request)) ?? Data())
        let stream = WatchStream(startRevision: start)
        let confirmTimeout = max(configuration.requestTimeout * 4, .seconds(1))
        let createdDeadline = ContinuousClock.now + confirmTimeout
        let sink = CurlTransport.Sink(
            onChunk: { bytes in
                stream.buffer.append(contentsOf: bytes)
                while stream.outcome == nil, let newline = stream.buffer.firstIndex(of: 0x0A) {
                    let line = Array(stream.buffer[..<newline])
                    stream.buffer.removeSubrange(...newline)
                    self.handleWatchLine(line, stream: stream, endpoint: endpoint)
                }
            },
            shouldAbort: { [weak self] in
                if stream.outcomeDecided { return true }
                // An endpoint that accepts the connection but never confirms the watch is as good as dead.
                if !stream.created, ContinuousClock.now > createdDeadline {
                    stream.decide(.couldNotConnect(.init(endpoint: endpoint.url, reason: "the watch was not confirmed within \(formatDuration(confirmTimeout))", isTLS: false)))
                    return true
                }
                return self?.peek { $0.stopping || $0.watchRestartRequested } ?? true
            })
        do {
            // etcd cancels the watch of a member that has lost its leader, instead of leaving it silent.
            let status = try client.transport.stream(endpoint.url + "/v3/watch", json: body, headers: headers + ["Grpc-Metadata-hasleader: true"],
                                                     connectTimeout: configuration.requestTimeout, keepalive: .seconds(5), sink: sink)
            if let outcome = stream.outcome { return outcome }
            if !stream.created {
                let text = String(decoding: stream.buffer.prefix(300), as: UTF8.self)
                return .couldNotConnect(.init(endpoint: endpoint.url, reason: "HTTP \(status): \(text)", isTLS: false))
            }
            return .ended("the server closed the stream")
        } catch {
            if let outcome = stream.outcome { return outcome }
            if !stream.created { return .couldNotConnect(.init(endpoint: endpoint.url, reason: error.message, isTLS: error.isTLS)) }
            return .ended(error.code == CurlTransport.abortedByCallback ? "stopped" : error.message)
        }
    }

    private func handleWatchLine(_ line: [UInt8], stream: WatchStream, endpoint: DCSEndpoint) {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
            stream.decide(.ended("unreadable watch message"))
            return
        }
        if let error = object["error"] as? [String: Any] {
            let message = error["message"] as? String ?? "\(error)"
            if int64(error["grpc_code"] ?? error["code"]) == 16 { client.forgetToken() }
            stream.decide(.ended("etcd: \(message)"))
            return
        }
        guard let result = object["result"] as? [String: Any] else { return }
        if result["created"] as? Bool == true {
            stream.created = true
            locked { s in
                s.health.watchEndpoint = endpoint.url
                // Everything before the start revision is known already: it is not "missed".
                s.watchRevision = max(s.watchRevision, stream.startRevision - 1)
            }
        }
        let compactRevision = int64(result["compact_revision"])
        if compactRevision > 0 {
            stream.decide(.compacted(compactRevision))
            return
        }
        if result["canceled"] as? Bool == true {
            stream.decide(.ended("canceled: \(result["cancel_reason"] as? String ?? "no reason given")"))
            return
        }
        let events = (result["events"] as? [[String: Any]] ?? []).map { event in
            WatchEvent(kind: event["type"] as? String == "DELETE" ? .delete : .put,
                       kv: keyValue(event["kv"] as? [String: Any] ?? [:]))
        }
        if !events.isEmpty {
            apply(events: events)
        } else if result["created"] as? Bool != true {
            // A progress notification: every event up to this revision has been sent.
            let revision = revision(of: result)
            locked { s in
                s.watchRevision = max(s.watchRevision, revision)
                s.revision = max(s.revision, revision)
            }
        }
        // Watch traffic is not proof that the DCS has quorum (a member cut off from the others still
        // streams): only the resync's linearizable read counts as contact.
    }

    private func apply(events: [WatchEvent]) {
        locked { s in
            var applied = 0
            for event in events {
                s.watchRevision = max(s.watchRevision, event.kv.modRevision)
                // Already known from a resync that read a later revision.
                guard event.kv.modRevision > s.revision, !ignoring(event.kv.key) else { continue }
                switch event.kind {
                case .put: s.values[event.kv.key] = event.kv
                case .delete: s.values[event.kv.key] = nil
                }
                applied += 1
            }
            guard applied > 0 else { return }
            s.revision = max(s.revision, events.map(\.kv.modRevision).max() ?? s.revision)
            s.statistics.eventsApplied += applied
            publish(&s)
        }
    }

    // MARK: - Health

    /// Records that the DCS answered (`error` nil) or that no endpoint did. Only a change of state
    /// is logged: one WARNING when it becomes unreachable, one INFO when it is back.
    private func reportContact(_ error: DCSError?) {
        let now = Date()
        let transition = locked { s -> (from: Date, reachable: Bool)? in
            if error == nil {
                s.health.lastContact = now
                s.health.lastContactAt = .now
            }
            let reachable = error == nil
            guard s.health.reachable != reachable else { return nil }
            let from = s.health.since
            s.health.reachable = reachable
            s.health.since = now
            publish(&s)
            return (from, reachable)
        }
        guard let transition else {
            if let error { logger.debug("DCS still unreachable", metadata: ["error": "\(error)"]) }
            return
        }
        let duration = String(format: "%.1f", now.timeIntervalSince(transition.from))
        if transition.reachable {
            logger.info("DCS reachable again", metadata: ["outage_s": "\(duration)"])
        } else {
            logger.warning("DCS unreachable; retrying", metadata: ["error": "\(error.map { "\($0)" } ?? "")"])
        }
    }

    // MARK: - Plumbing

    /// Builds the snapshot from the state and hands it to every subscriber. Called under the lock,
    /// so that subscribers see snapshots in the order they were made.
    private func publish(_ s: inout State) {
        s.snapshot = DCSSnapshot(revision: s.revision, values: s.values, synced: s.synced,
                                 reachable: s.health.reachable, unreachableSince: s.health.reachable ? nil : s.health.since)
        for continuation in s.subscribers.values { continuation.yield(s.snapshot) }
    }

    private func locked<T>(_ body: (inout State) -> T) -> T {
        lock.lock()
        defer {
            lock.broadcast()
            lock.unlock()
        }
        return body(&state)
    }

    /// Reads the state without waking the threads.
    private func peek<T>(_ body: (State) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(state)
    }

    private enum WaitResult { case satisfied, timedOut, stopping }

    /// Waits until `condition` holds or `deadline` passes (nil: no deadline).
    private func wait(until deadline: ContinuousClock.Instant?, _ condition: (State) -> Bool) -> WaitResult {
        lock.lock()
        defer { lock.unlock() }
        while !condition(state) {
            // NSCondition waits on the wall clock: each wait is capped at a second, so that a clock
            // step cannot stretch it; the deadline itself is on the monotonic clock.
            guard let deadline else {
                _ = lock.wait(until: Date(timeIntervalSinceNow: 1))
                continue
            }
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return state.stopping ? .stopping : .timedOut }
            _ = lock.wait(until: Date(timeIntervalSinceNow: min(remaining.seconds, 1) + 0.001))
        }
        return state.stopping ? .stopping : .satisfied
    }

    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let thread = Thread { [threads] in
            body()
            threads.leave()
        }
        thread.name = name
        thread.start()
    }
}

/// What one watch stream has seen so far; touched by the watch thread, read by libcurl's abort check.
private final class WatchStream: @unchecked Sendable {
    let startRevision: Int64
    var buffer: [UInt8] = []
    var created = false
    private(set) var outcome: WatchOutcome?
    var outcomeDecided: Bool { outcome != nil }

    init(startRevision: Int64) { self.startRevision = startRevision }

    func decide(_ outcome: WatchOutcome) { if self.outcome == nil { self.outcome = outcome } }
}

/// How one watch stream ended.
private enum WatchOutcome {
    case couldNotConnect(DCSError.EndpointFailure)
    case ended(String)
    case compacted(Int64)
    case refused(DCSError)
}

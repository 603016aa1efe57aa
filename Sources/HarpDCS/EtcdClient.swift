import Foundation
import HarpConfig
import Logging
import Synchronization

/// A client of etcd's v3 JSON gateway (`/v3/...`), over libcurl.
///
/// Endpoints are tried in turn, each request bounded by `dcs.request_timeout`; an endpoint that
/// fails is skipped for a while and tried again later. With `dcs.username` set it authenticates
/// and renews its token when etcd says it has expired. It knows nothing of proxies.
public final class EtcdClient: Sendable {
    public let configuration: DCSConfiguration
    let transport: CurlTransport
    let logger: Logger

    private struct Rotation {
        var preferred = 0
        var retryAfter: [ContinuousClock.Instant?]
    }

    private let rotation: Mutex<Rotation>
    private let token = Mutex<String?>(nil)
    private let failedRequests = Atomic<Int>(0)
    /// How long an endpoint that failed is tried only after the others.
    static let deadEndpointRetry: Duration = .seconds(3)

    public init(configuration: DCSConfiguration, logger: Logger = Logger(label: "harp.dcs")) {
        self.configuration = configuration
        self.logger = logger
        transport = CurlTransport(configuration: configuration)
        rotation = Mutex(Rotation(retryAfter: Array(repeating: nil, count: configuration.endpoints.count)))
    }

    // MARK: - Operations (async: the blocking call runs off the caller's executor)

    /// One key, or every key under `key` when `prefix` is true. Linearizable.
    public func range(_ key: String, prefix: Bool = false) async throws(DCSError) -> RangeResult {
        try await offload { () throws(DCSError) in try self.rangeNow(key, prefix: prefix) }
    }

    /// Writes `value`; with a `lease`, the key disappears when the lease expires. Returns the revision.
    @discardableResult
    public func put(_ key: String, _ value: String, lease: Int64 = 0) async throws(DCSError) -> Int64 {
        try await offload { () throws(DCSError) in
            var body: [String: Any] = ["key": base64(key), "value": base64(value)]
            if lease != 0 { body["lease"] = String(lease) }
            return revision(of: try self.call("/v3/kv/put", body))
        }
    }

    /// Deletes one key, or every key under `key` when `prefix` is true. Returns how many went.
    @discardableResult
    public func delete(_ key: String, prefix: Bool = false) async throws(DCSError) -> Int64 {
        try await offload { () throws(DCSError) in
            var body: [String: Any] = ["key": base64(key)]
            if prefix { body["range_end"] = Data(prefixRangeEnd(key)).base64EncodedString() }
            return int64(try self.call("/v3/kv/deleterange", body)["deleted"])
        }
    }

    /// Runs `success` if every compare holds, `failure` otherwise, atomically.
    public func txn(compare: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []) async throws(DCSError) -> TxnResult {
        try await offload { () throws(DCSError) in
            let body: [String: Any] = [
                "compare": compare.map(encode),
                "success": success.map(encode),
                "failure": failure.map(encode),
            ]
            let reply = try self.call("/v3/kv/txn", body)
            let responses = reply["responses"] as? [[String: Any]] ?? []
            let ranges = responses.compactMap { ($0["response_range"] as? [String: Any]).map(keyValues) }
            return TxnResult(succeeded: reply["succeeded"] as? Bool ?? false, revision: revision(of: reply), ranges: ranges)
        }
    }

    public func leaseGrant(ttl seconds: Int64) async throws(DCSError) -> LeaseGrant {
        try await offload { () throws(DCSError) in
            let reply = try self.call("/v3/lease/grant", ["TTL": String(seconds)])
            return LeaseGrant(id: int64(reply["ID"]), ttl: int64(reply["TTL"]))
        }
    }

    /// Renews a lease once. Returns its new TTL in seconds, 0 when the lease has already expired.
    @discardableResult
    public func leaseKeepAlive(_ id: Int64) async throws(DCSError) -> Int64 {
        try await offload { () throws(DCSError) in
            let reply = try self.call("/v3/lease/keepalive", ["ID": String(id)])
            return int64((reply["result"] as? [String: Any])?["TTL"])
        }
    }

    /// Ends a lease now: every key on it is deleted.
    public func leaseRevoke(_ id: Int64) async throws(DCSError) {
        try await offload { () throws(DCSError) in _ = try self.call("/v3/lease/revoke", ["ID": String(id)]) }
    }

    /// The lease's remaining and granted TTL in seconds; remaining is -1 when it has expired.
    public func leaseTimeToLive(_ id: Int64) async throws(DCSError) -> (remaining: Int64, granted: Int64) {
        try await offload { () throws(DCSError) in
            let reply = try self.call("/v3/lease/timetolive", ["ID": String(id)])
            return (int64(reply["TTL"]), int64(reply["grantedTTL"]))
        }
    }

    /// Discards history before `revision` (etcd maintenance; tests use it to provoke compaction).
    public func compact(revision: Int64) async throws(DCSError) {
        try await offload { () throws(DCSError) in
            _ = try self.call("/v3/kv/compaction", ["revision": String(revision), "physical": true])
        }
    }

    /// Any gateway call, for what the typed methods do not cover (user and role management).
    public func raw(_ path: String, _ body: [String: any Sendable]) async throws(DCSError) -> [String: any Sendable] {
        try await offload { () throws(DCSError) in
            let reply = try self.call(path, body)
            return reply.mapValues { sendable($0) }
        }
    }

    // MARK: - Blocking core, used by the session's threads

    func rangeNow(_ key: String, prefix: Bool) throws(DCSError) -> RangeResult {
        var body: [String: Any] = ["key": base64(key)]
        if prefix { body["range_end"] = Data(prefixRangeEnd(key)).base64EncodedString() }
        let reply = try call("/v3/kv/range", body)
        return RangeResult(revision: revision(of: reply), kvs: keyValues(reply))
    }

    /// Endpoint indexes in the order to try: the one that worked last first, those that failed
    /// recently last (still tried, so that a request never gives up while one might answer).
    func endpointOrder() -> [Int] {
        let now = ContinuousClock.now
        return rotation.withLock { r in
            let count = r.retryAfter.count
            let order = (0..<count).map { (r.preferred + $0) % count }
            let alive = order.filter { r.retryAfter[$0].map { $0 <= now } ?? true }
            return alive + order.filter { !alive.contains($0) }
        }
    }

    func markFailed(_ index: Int) {
        rotation.withLock { r in
            r.retryAfter[index] = ContinuousClock.now + Self.deadEndpointRetry
            if r.preferred == index { r.preferred = (index + 1) % r.retryAfter.count }
        }
    }

    func markGood(_ index: Int) {
        rotation.withLock { r in
            r.retryAfter[index] = nil
            r.preferred = index
        }
    }

    /// The request headers for this endpoint, authenticating first when a username is set.
    func authorizationHeaders(_ endpoint: DCSEndpoint) throws(AttemptError) -> [String] {
        guard let username = configuration.username else { return [] }
        if let current = token.withLock({ $0 }) { return ["Authorization: \(current)"] }
        let reply: [String: Any]
        do {
            reply = try exchange(endpoint, "/v3/auth/authenticate", ["name": username, "password": configuration.password ?? ""], headers: [])
        } catch .fatal(.server(let e, let code, let message)) where code == 3 || code == 9 || code == 16 {
            throw .fatal(.authentication(endpoint: e, message: message))
        }
        guard let fresh = reply["token"] as? String, !fresh.isEmpty else {
            throw .fatal(.protocolError(endpoint: endpoint.url, message: "no token in the authenticate reply"))
        }
        token.withLock { $0 = fresh }
        return ["Authorization: \(fresh)"]
    }

    /// Drops the auth token, so that the next request authenticates again.
    func forgetToken() { token.withLock { $0 = nil } }

    /// Requests that failed (an endpoint down, or an error reply), since start: for /metrics.
    public var requestErrors: Int { failedRequests.load(ordering: .relaxed) }

    /// One request, over the endpoints in turn, until one answers.
    func call(_ path: String, _ body: [String: Any]) throws(DCSError) -> [String: Any] {
        var failures: [DCSError.EndpointFailure] = []
        for index in endpointOrder() {
            let endpoint = configuration.endpoints[index]
            do throws(AttemptError) {
                let reply = try attempt(endpoint, path, body)
                markGood(index)
                return reply
            } catch {
                switch error {
                case .down(let reason, let isTLS):
                    failedRequests.add(1, ordering: .relaxed)
                    markFailed(index)
                    failures.append(.init(endpoint: endpoint.url, reason: reason, isTLS: isTLS))
                case .fatal(let error):
                    failedRequests.add(1, ordering: .relaxed)
                    markGood(index)  // it answered: the request, not the endpoint, is at fault
                    throw error
                }
            }
        }
        throw .unreachable(failures)
    }

    enum AttemptError: Error {
        /// The endpoint did not answer usefully: try the next one.
        case down(String, isTLS: Bool)
        /// The endpoint answered no: trying another would get the same answer.
        case fatal(DCSError)
    }

    private func attempt(_ endpoint: DCSEndpoint, _ path: String, _ body: [String: Any]) throws(AttemptError) -> [String: Any] {
        do {
            return try exchange(endpoint, path, body, headers: try authorizationHeaders(endpoint))
        } catch .fatal(.server(_, 16, _)) where configuration.username != nil {
            // The token expired (etcd's simple tokens live five minutes idle): renew once.
            token.withLock { $0 = nil }
            return try exchange(endpoint, path, body, headers: try authorizationHeaders(endpoint))
        }
    }

    func exchange(_ endpoint: DCSEndpoint, _ path: String, _ body: [String: Any], headers: [String]) throws(AttemptError) -> [String: Any] {
        let json: [UInt8]
        do { json = Array(try JSONSerialization.data(withJSONObject: body)) } catch {
            throw .fatal(.protocolError(endpoint: endpoint.url, message: "cannot encode the request: \(error)"))
        }
        let response: CurlTransport.Response
        do {
            response = try transport.post(endpoint.url + path, json: json, headers: headers, timeout: configuration.requestTimeout)
        } catch {
            throw .down(error.message, isTLS: error.isTLS)
        }
        let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
        if response.status == 200, let object { return object }
        let code = Int(int64(object?["code"]))
        let message = object?["message"] as? String ?? object?["error"] as? String
            ?? "HTTP \(response.status): \(String(decoding: response.body.prefix(200), as: UTF8.self))"
        // UNAVAILABLE: no leader, or the member is cut off or stopping. Another member may answer.
        if code == 14 || response.status == 503 || response.status == 502 { throw .down(message, isTLS: false) }
        if object == nil && response.status == 200 {
            throw .fatal(.protocolError(endpoint: endpoint.url, message: "the reply is not a JSON object"))
        }
        throw .fatal(.server(endpoint: endpoint.url, code: code, message: message))
    }

    private func offload<T: Sendable>(_ work: @escaping @Sendable () throws(DCSError) -> T) async throws(DCSError) -> T {
        let result: Result<T, DCSError> = await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: Result { () throws(DCSError) in try work() }) }
        }
        return try result.get()
    }
}

// MARK: - JSON helpers (etcd's gateway sends int64 as strings, bytes as base64)

func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

func unbase64(_ value: Any?) -> String? {
    guard let text = value as? String, let data = Data(base64Encoded: text) else { return nil }
    return String(decoding: data, as: UTF8.self)
}

func int64(_ value: Any?) -> Int64 {
    if let text = value as? String { return Int64(text) ?? 0 }
    if let number = value as? NSNumber { return number.int64Value }
    return 0
}

func revision(of reply: [String: Any]) -> Int64 { int64((reply["header"] as? [String: Any])?["revision"]) }

func keyValue(_ object: [String: Any]) -> KeyValue {
    KeyValue(key: unbase64(object["key"]) ?? "", value: unbase64(object["value"]) ?? "",
             createRevision: int64(object["create_revision"]), modRevision: int64(object["mod_revision"]),
             version: int64(object["version"]), lease: int64(object["lease"]))
}

func keyValues(_ reply: [String: Any]) -> [KeyValue] {
    (reply["kvs"] as? [[String: Any]] ?? []).map(keyValue)
}

private func encode(_ compare: EtcdCompare) -> [String: Any] {
    var object: [String: Any] = ["key": base64(compare.key), "result": compare.result.rawValue]
    switch compare.target {
    case .value(let v): object["target"] = "VALUE"; object["value"] = base64(v)
    case .version(let v): object["target"] = "VERSION"; object["version"] = String(v)
    case .createRevision(let v): object["target"] = "CREATE"; object["create_revision"] = String(v)
    case .modRevision(let v): object["target"] = "MOD"; object["mod_revision"] = String(v)
    }
    return object
}

private func encode(_ operation: EtcdOperation) -> [String: Any] {
    switch operation {
    case .put(let key, let value, let lease):
        var put: [String: Any] = ["key": base64(key), "value": base64(value)]
        if lease != 0 { put["lease"] = String(lease) }
        return ["request_put": put]
    case .delete(let key, let prefix):
        var delete: [String: Any] = ["key": base64(key)]
        if prefix { delete["range_end"] = Data(prefixRangeEnd(key)).base64EncodedString() }
        return ["request_delete_range": delete]
    case .range(let key, let prefix):
        var range: [String: Any] = ["key": base64(key)]
        if prefix { range["range_end"] = Data(prefixRangeEnd(key)).base64EncodedString() }
        return ["request_range": range]
    }
}

/// JSONSerialization's values made Sendable (they are immutable once parsed).
private func sendable(_ value: Any) -> any Sendable {
    switch value {
    case let s as String: return s
    case let n as NSNumber: return n.doubleValue
    case let a as [Any]: return a.map(sendable)
    case let d as [String: Any]: return d.mapValues(sendable)
    default: return String(describing: value)
    }
}

import CCurl
import Foundation
import HarpConfig
import Synchronization

/// One HTTP POST of JSON to one etcd endpoint through libcurl (OpenSSL for TLS). Blocking: the
/// session calls it from its own threads, and `EtcdClient` moves async callers off their executor.
final class CurlTransport: Sendable {
    struct Response {
        var status: Int
        var body: [UInt8]
    }

    /// A failure below HTTP: connection refused, timeout, TLS handshake or certificate check.
    struct Failure: Error, CustomStringConvertible {
        var code: Int
        var message: String
        var isTLS: Bool { Self.tlsCodes.contains(code) }
        var description: String { message }

        static let tlsCodes: Set<Int> = [
            Int(CURLE_SSL_CONNECT_ERROR.rawValue), Int(CURLE_PEER_FAILED_VERIFICATION.rawValue),
            Int(CURLE_SSL_CERTPROBLEM.rawValue), Int(CURLE_SSL_CIPHER.rawValue), Int(CURLE_SSL_CACERT_BADFILE.rawValue),
            Int(CURLE_SSL_ENGINE_NOTFOUND.rawValue), Int(CURLE_SSL_ISSUER_ERROR.rawValue),
            Int(CURLE_SSL_INVALIDCERTSTATUS.rawValue), Int(CURLE_SSL_PINNEDPUBKEYNOTMATCH.rawValue),
        ]
    }

    /// Receives a streamed body chunk by chunk, and may stop the transfer.
    final class Sink: @unchecked Sendable {
        // Touched only by the thread running `perform`.
        var body: [UInt8] = []
        let onChunk: ((UnsafeRawBufferPointer) -> Void)?
        let shouldAbort: (@Sendable () -> Bool)?

        init(onChunk: ((UnsafeRawBufferPointer) -> Void)? = nil, shouldAbort: (@Sendable () -> Bool)? = nil) {
            self.onChunk = onChunk
            self.shouldAbort = shouldAbort
        }
    }

    private let tls: (ca: String?, cert: String?, key: String?)
    /// Idle easy handles: each keeps its connections open, so a request reuses a warm connection.
    private let idleHandles = Mutex<[EasyHandle]>([])

    /// A libcurl easy handle; used by one thread at a time, handed over through `idleHandles`.
    private struct EasyHandle: @unchecked Sendable { let raw: UnsafeMutableRawPointer }

    init(configuration: DCSConfiguration) {
        _ = Self.globalInit
        tls = (configuration.sslCAFile, configuration.sslCertFile, configuration.sslKeyFile)
    }

    deinit {
        idleHandles.withLock { handles in handles.forEach { curl_easy_cleanup($0.raw) } }
    }

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// A unary request: the whole body, bounded by `timeout`.
    func post(_ url: String, json: [UInt8], headers: [String], timeout: Duration) throws(Failure) -> Response {
        let handle = idleHandles.withLock { $0.popLast()?.raw } ?? curl_easy_init()!
        do {
            let sink = Sink()
            let status = try perform(handle, url: url, json: json, headers: headers, connectTimeout: timeout, totalTimeout: timeout, sink: sink)
            idleHandles.withLock { $0.append(EasyHandle(raw: handle)) }
            return Response(status: status, body: sink.body)
        } catch {
            curl_easy_cleanup(handle)  // its connection may be broken: do not reuse it
            throw error
        }
    }

    /// A streamed request (the watch): no total timeout; TCP keepalive on; ends when the server
    /// closes, the connection breaks, or `sink.shouldAbort` returns true.
    func stream(_ url: String, json: [UInt8], headers: [String], connectTimeout: Duration, keepalive: Duration, sink: Sink) throws(Failure) -> Int {
        let handle = curl_easy_init()!
        defer { curl_easy_cleanup(handle) }
        harp_curl_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
        harp_curl_setopt_long(handle, CURLOPT_TCP_KEEPIDLE, max(1, Int(keepalive.milliseconds / 1000)))
        harp_curl_setopt_long(handle, CURLOPT_TCP_KEEPINTVL, max(1, Int(keepalive.milliseconds / 1000)))
        return try perform(handle, url: url, json: json, headers: headers, connectTimeout: connectTimeout, totalTimeout: nil, sink: sink)
    }

    private func perform(_ handle: UnsafeMutableRawPointer, url: String, json: [UInt8], headers: [String],
                         connectTimeout: Duration, totalTimeout: Duration?, sink: Sink) throws(Failure) -> Int {
        curl_easy_reset(handle)
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        defer { errorBuffer.deallocate() }
        var list: UnsafeMutablePointer<curl_slist>?
        for header in ["Content-Type: application/json", "Expect:"] + headers { list = curl_slist_append(list, header) }
        defer { curl_slist_free_all(list) }

        harp_curl_setopt_string(handle, CURLOPT_URL, url)
        harp_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        harp_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer)
        harp_curl_setopt_pointer(handle, CURLOPT_HTTPHEADER, list)
        harp_curl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, json.count)
        json.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { _ = harp_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0.baseAddress)) }
        }
        harp_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, max(1, Int(connectTimeout.milliseconds)))
        harp_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, totalTimeout.map { max(1, Int($0.milliseconds)) } ?? 0)
        harp_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https")
        // Certificates are always verified; only the CA bundle is configurable.
        harp_curl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        harp_curl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        if let ca = tls.ca { harp_curl_setopt_string(handle, CURLOPT_CAINFO, ca) }
        if let cert = tls.cert { harp_curl_setopt_string(handle, CURLOPT_SSLCERT, cert) }
        if let key = tls.key { harp_curl_setopt_string(handle, CURLOPT_SSLKEY, key) }

        let context = Unmanaged.passRetained(sink)
        defer { context.release() }
        harp_curl_setopt_write_function(handle) { data, size, count, userdata in
            let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
            if let onChunk = sink.onChunk { onChunk(bytes) } else { sink.body.append(contentsOf: bytes) }
            return size * count
        }
        harp_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, context.toOpaque())
        if sink.shouldAbort != nil {
            // libcurl calls this about once a second even on an idle stream: the way to stop a watch.
            harp_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)
            harp_curl_setopt_xferinfo_function(handle) { userdata, _, _, _, _ in
                let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
                return sink.shouldAbort?() == true ? 1 : 0
            }
            harp_curl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context.toOpaque())
        }

        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else {
            let detail = string(fromCString: errorBuffer)
            let text = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            throw Failure(code: Int(code.rawValue), message: text)
        }
        var status = 0
        harp_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return status
    }

    static let abortedByCallback = Int(CURLE_ABORTED_BY_CALLBACK.rawValue)
}

func string(fromCString pointer: UnsafePointer<CChar>) -> String {
    String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
}

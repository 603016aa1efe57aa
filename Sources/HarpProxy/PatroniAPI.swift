import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Asks a Patroni member's REST API whether its PostgreSQL is the running primary: `GET
/// /patroni` answers with the `role` PostgreSQL reports (`replica` while in recovery, so until
/// `pg_ctl promote` has finished). Not `/primary`, which says 200 as soon as Patroni holds the
/// leader key. Plain HTTP only; an HTTPS API, or none, leaves the member record as the word.
enum PatroniAPI {
    /// true when the role is master or primary and the state running, false for any other
    /// answer, nil when nothing answered within `timeout`.
    static func isPrimary(_ url: String, timeout: Duration = .milliseconds(250)) async -> Bool? {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: get(url, timeout: timeout)) }
        }
    }

    /// `http://host:port/path` split; nil for anything else.
    static func parse(_ url: String) -> (host: String, port: String, path: String)? {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst(7)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        var host = Substring(authority), port = "80"
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { port = String(after.dropFirst()) }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            port = String(authority[authority.index(after: colon)...])
        }
        guard !host.isEmpty, Int(port) != nil else { return nil }
        return (String(host), port, path.isEmpty ? "/" : String(path))
    }

    private static func get(_ url: String, timeout: Duration) -> Bool? {
        guard let (host, port, path) = parse(url) else { return nil }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, port, &hints, &found) == 0, let info = found else { return nil }
        defer { freeaddrinfo(found) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let micros = Int(timeout.milliseconds) * 1000
        var limit = timeval(tv_sec: micros / 1_000_000, tv_usec: micros % 1_000_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { return nil }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while response.count < 65536 {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { return nil }
            response += chunk[0..<n]
        }
        return primary(inResponse: String(decoding: response, as: UTF8.self))
    }

    /// Whether an HTTP response's JSON body says role master/primary, state running.
    static func primary(inResponse text: String) -> Bool {
        guard let split = text.range(of: "\r\n\r\n"),
              let body = try? JSONSerialization.jsonObject(with: Data(text[split.upperBound...].utf8)) as? [String: Any] else { return false }
        let role = body["role"] as? String
        return (role == "master" || role == "primary") && (body["state"] as? String ?? "running") == "running"
    }
}

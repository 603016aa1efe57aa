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
    /// Asks `url` again and again until an answer says primary (true), or `stop` is set or the
    /// deadline passes (false). A request starts at most every `every`, once the one before has
    /// been answered or has waited `overlapAfter`: then it overlaps, up to `atMost` unanswered,
    /// so that one Patroni is slow to answer does not hold up the next (its REST API asks
    /// PostgreSQL on the connection its HA loop shares; around a promotion one answer can take
    /// hundreds of ms while the next takes a few), and Patroni, promoting, is not asked more
    /// than that. Each request gets `timeout`. One thread of its own, non-blocking sockets and poll(2).
    static func waitForPrimary(_ url: String, stop: CheckFlag, deadline: ContinuousClock.Instant,
                               every: Duration = .milliseconds(3), overlapAfter: Duration = .milliseconds(15), atMost: Int = 8,
                               timeout: Duration = .milliseconds(500)) async -> Bool {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: ask(url, stop: stop, deadline: deadline, every: every, overlapAfter: overlapAfter,
                                                   atMost: atMost, timeout: timeout))
            }
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

    /// One request on a non-blocking socket: connecting, then sent, then its answer read.
    private struct Request {
        var fd: Int32
        var started: ContinuousClock.Instant
        var sent = false
        var response: [UInt8] = []
    }

    private static func ask(_ url: String, stop: CheckFlag, deadline: ContinuousClock.Instant,
                            every: Duration, overlapAfter: Duration, atMost: Int, timeout: Duration) -> Bool {
        guard let (host, port, path) = parse(url) else { return false }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, port, &hints, &found) == 0, let info = found else { return false }
        defer { freeaddrinfo(found) }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
        var requests: [Request] = []
        defer { for r in requests { close(r.fd) } }
        var chunk = [UInt8](repeating: 0, count: 16384)
        var nextStart = ContinuousClock.now
        while !stop.isSet {
            let now = ContinuousClock.now
            guard now < deadline else { return false }
            requests.removeAll { r in
                guard now - r.started > timeout else { return false }
                close(r.fd)
                return true
            }
            if now >= nextStart, requests.count < atMost, requests.last.map({ now - $0.started >= overlapAfter }) ?? true {
                nextStart = now + every
                let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                if fd >= 0 {
                    if connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                        requests.append(Request(fd: fd, started: now))
                    } else {
                        close(fd)
                    }
                }
            }
            var fds = requests.map { pollfd(fd: $0.fd, events: Int16($0.sent ? POLLIN : POLLOUT), revents: 0) }
            let wait = max(1, min((nextStart - now).milliseconds, 5))
            guard poll(&fds, nfds_t(fds.count), Int32(wait)) > 0 else { continue }
            for i in fds.indices.reversed() where fds[i].revents != 0 {
                var done = false
                if !requests[i].sent {
                    let n = request.withUnsafeBytes { send(fds[i].fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if n == request.count { requests[i].sent = true } else { done = true }  // refused, or a short send
                } else {
                    while true {
                        let n = chunk.withUnsafeMutableBytes { recv(fds[i].fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                        if n > 0, requests[i].response.count < 65536 { requests[i].response += chunk[0..<n]; continue }
                        if n == 0 {
                            if primary(inResponse: String(decoding: requests[i].response, as: UTF8.self)) { return true }
                            done = true
                        } else if n > 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                            done = true  // too long to be Patroni's answer, or an error
                        }
                        break
                    }
                }
                if done {
                    close(requests[i].fd)
                    requests.remove(at: i)
                }
            }
        }
        return false
    }

    /// Whether an HTTP response's JSON body says role master/primary, state running.
    static func primary(inResponse text: String) -> Bool {
        guard let split = text.range(of: "\r\n\r\n"),
              let body = try? JSONSerialization.jsonObject(with: Data(text[split.upperBound...].utf8)) as? [String: Any] else { return false }
        let role = body["role"] as? String
        return (role == "master" || role == "primary") && (body["state"] as? String ?? "running") == "running"
    }
}

import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Asks an HTTP endpoint whether a node takes writes: `GET url` (plain HTTP) until the JSON body
/// has, for each expected field, one of its values. For Patroni, `GET /patroni` with role
/// master/primary and state running: its `role` is the one PostgreSQL reports (`replica` while in
/// recovery, so until `pg_ctl promote` has finished). Not `/primary`, which says 200 as soon as
/// Patroni holds the leader key.
enum HTTPProbe {
    /// Asks `url` again and again, on the calling thread, until an answer has the expected
    /// values (true) or `stop` is set (false). A request starts at most every `every`, once the
    /// one before has been answered or has waited `overlapAfter`: then it overlaps, up to
    /// `atMost` unanswered, so that one slow answer does not hold up the next (Patroni's REST API
    /// asks PostgreSQL on the connection its HA loop shares; around a promotion one answer can
    /// take hundreds of ms while the next takes a few), and a promoting node is not asked more
    /// than that. Each request gets `timeout`. Non-blocking sockets and poll(2), a stop seen
    /// within 5 ms.
    static func run(_ url: String, expect: [String: [String]], stop: StopSignal,
                    every: Duration = .milliseconds(3), overlapAfter: Duration = .milliseconds(15), atMost: Int = 8,
                    timeout: Duration = .milliseconds(500)) -> Bool {
        ask(url, expect: expect, stop: stop, every: every, overlapAfter: overlapAfter, atMost: atMost, timeout: timeout)
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

    private static func ask(_ url: String, expect: [String: [String]], stop: StopSignal,
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
        let started = nextStart
        while !stop.isSet {
            let now = ContinuousClock.now
            requests.removeAll { r in
                guard now - r.started > timeout else { return false }
                close(r.fd)
                return true
            }
            if now >= nextStart, requests.count < atMost, requests.last.map({ now - $0.started >= overlapAfter }) ?? true {
                // A node that stays a replica for long is asked ten times a second after 10 s.
                nextStart = now + (now - started < .seconds(10) ? every : .milliseconds(100))
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
                            if answers(String(decoding: requests[i].response, as: UTF8.self), expect) { return true }
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

    /// Whether an HTTP response's JSON body has, for each expected field, one of its values.
    static func answers(_ response: String, _ expect: [String: [String]]) -> Bool {
        guard let split = response.range(of: "\r\n\r\n"),
              let body = try? JSONSerialization.jsonObject(with: Data(response[split.upperBound...].utf8)) as? [String: Any] else { return false }
        return expect.allSatisfy { field, values in (body[field] as? String).map(values.contains) ?? false }
    }
}

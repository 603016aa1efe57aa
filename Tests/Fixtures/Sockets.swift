import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Calls `body` with a sockaddr for 127.0.0.1:`port`.
public func withLoopbackAddress<T>(port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// Calls `body` with a sockaddr for the Unix socket at `path`.
public func withUnixAddress<T>(path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// A TCP socket connected to 127.0.0.1:`port`, or nil; the caller closes it.
public func connectedLoopbackSocket(port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard withLoopbackAddress(port: port, { connect(fd, $0, $1) }) == 0 else { close(fd); return nil }
    return fd
}

/// A stream socket connected to the Unix socket at `path`, or nil; the caller closes it.
public func connectedUnixSocket(path: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard withUnixAddress(path: path, { connect(fd, $0, $1) }) == 0 else { close(fd); return nil }
    return fd
}

/// Writes all of `bytes` (best effort: a test's peer may be gone).
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

/// A loopback TCP port that was free a moment ago, below the kernel's ephemeral range, so that
/// no outgoing connection of the tests (thousands of them) can take it as its local port before
/// the test listens on it; never the same twice in a process. (Ports the kernel hands out for
/// port 0 come from the ephemeral range, and one was taken that way between the pick and the
/// listen in a CI run.)
public func freePort() -> Int {
    FreePorts.lock.withLock {
        let span = FreePorts.ephemeralLow - FreePorts.first
        for _ in 0..<span {
            let port = FreePorts.first + FreePorts.next % span
            FreePorts.next += 1
            if FreePorts.bindable(port) { return port }
        }
        fatalError("test fixture: no free loopback port below \(FreePorts.ephemeralLow)")
    }
}

private enum FreePorts {
    static let lock = NSLock()
    static let first = 10_000
    /// The start of net.ipv4.ip_local_port_range (32768 unless changed).
    static let ephemeralLow: Int = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let low = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } ?? 32768
        return max(low, first + 1000)
    }()
    /// Where the next search starts: random per process, so that two test processes in turn
    /// (the debug and the release run) do not walk the same ports.
    nonisolated(unsafe) static var next = Int.random(in: 0..<(ephemeralLow - first))

    static func bindable(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        return withLoopbackAddress(port: port) { bind(fd, $0, $1) } == 0
    }
}

/// The local port a socket is bound to (getsockname), nil on failure.
public func localPort(_ fd: Int32) -> Int? {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return named == 0 ? Int(UInt16(bigEndian: address.sin_port)) : nil
}

/// Whether something accepts TCP connections on a loopback port.
public func canConnect(port: Int) -> Bool { loopbackConnect(port: port, send: []) }

/// Connects to a loopback port, sends `bytes`, and hangs up. True if the connection was accepted.
@discardableResult
public func loopbackConnect(port: Int, send bytes: [UInt8]) -> Bool {
    guard let fd = connectedLoopbackSocket(port: port) else { return false }
    defer { close(fd) }
    if !bytes.isEmpty { writeAll(fd, bytes) }
    return true
}

/// A loopback port where a connect hangs, as it does to a host that is down: the listener's
/// accept queue is full (backlog 0, one connection in it, never accepted), so the kernel drops
/// every further SYN and a connect waits in SYN-SENT until its own timeout.
public final class SilentHost: @unchecked Sendable {
    public let port: Int
    private let listener: Int32
    private let filler: Int32

    public init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard withLoopbackAddress(port: 0, { bind(listener, $0, $1) }) == 0, Glibc.listen(listener, 0) == 0 else {
            close(listener)
            throw FixtureError("cannot listen for a silent host: \(String(cString: strerror(errno)))")
        }
        guard let port = localPort(listener), let filler = connectedLoopbackSocket(port: port) else {
            close(listener)
            throw FixtureError("cannot fill the silent host's accept queue")
        }
        self.listener = listener
        self.port = port
        self.filler = filler
    }

    deinit {
        close(filler)
        close(listener)
    }
}

/// This process's connected IPv4 TCP sockets, with their local and remote ports: for checking
/// the options an in-process proxy set on its sockets.
public func connectedTCPSockets() -> [(fd: Int32, local: Int, remote: Int)] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.compactMap { Int32($0) }.compactMap { fd in
        func port(_ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> Int? {
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, &length) }
            } == 0
            guard ok, address.sin_family == sa_family_t(AF_INET) else { return nil }
            return Int(UInt16(bigEndian: address.sin_port))
        }
        guard let local = port({ getsockname(fd, $0, $1) }), let remote = port({ getpeername(fd, $0, $1) }) else { return nil }
        return (fd, local, remote)
    }
}

/// An integer socket option of `fd`, or nil.
public func socketOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32? {
    var value: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, level, name, &value, &length) == 0 ? value : nil
}

import Foundation
import HarpConfig
import HarpDCS
#if canImport(Glibc)
import Glibc
#endif

/// Real etcd members on loopback, in a temporary folder: one member or a cluster of several.
public final class EtcdCluster: @unchecked Sendable {
    public struct Member {
        public let name: String
        public let clientPort: Int
        public let peerPort: Int
        public let dataDirectory: String
        public var process: TestProcess?
    }

    public let directory: TemporaryDirectory
    public private(set) var members: [Member]
    public let certificates: TestCertificates?
    let clientCertAuth: Bool
    let token = "harp-test-\(UUID().uuidString.prefix(8))"

    /// - Parameters:
    ///   - tls: serve clients over https with certificates made for the test.
    ///   - clientCertAuth: with `tls`, also require a client certificate signed by the test CA.
    public init(members count: Int = 1, tls: Bool = false, clientCertAuth: Bool = false) throws {
        directory = TemporaryDirectory("harp-etcd")
        certificates = tls ? try TestCertificates.make(in: directory.path) : nil
        self.clientCertAuth = clientCertAuth
        let base = directory.path
        members = (1...count).map { i in
            Member(name: "m\(i)", clientPort: freePort(), peerPort: freePort(), dataDirectory: "\(base)/m\(i).etcd")
        }
        for index in members.indices { try launch(index) }
        try waitUntilReady()
    }

    public var scheme: String { certificates == nil ? "http" : "https" }
    public func clientURL(_ index: Int) -> String { "\(scheme)://127.0.0.1:\(members[index].clientPort)" }
    public var endpoints: [DCSEndpoint] {
        members.map { DCSEndpoint(tls: certificates != nil, host: "127.0.0.1", port: $0.clientPort) }
    }

    /// A DCS configuration for these members, with the test CA and client certificate when TLS is on.
    public func dcsConfiguration(requestTimeout: Duration = .milliseconds(500), resyncInterval: Duration = .seconds(5)) -> DCSConfiguration {
        var c = DCSConfiguration(endpoints: endpoints)
        c.requestTimeout = requestTimeout
        c.resyncInterval = resyncInterval
        if let certificates {
            c.sslCAFile = certificates.caFile
            c.sslCertFile = certificates.clientCertFile
            c.sslKeyFile = certificates.clientKeyFile
        }
        return c
    }

    private func launch(_ index: Int, restart: Bool = false) throws {
        let m = members[index]
        var arguments = [
            "--name", m.name, "--data-dir", m.dataDirectory,
            "--listen-client-urls", clientURL(index), "--advertise-client-urls", clientURL(index),
            "--listen-peer-urls", "http://127.0.0.1:\(m.peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(m.peerPort)",
            "--logger", "zap", "--log-level", "warn",
            // Quick elections for quick tests; loopback has no latency to speak of.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if !restart {
            let initialCluster = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
            arguments += ["--initial-cluster", initialCluster, "--initial-cluster-token", token, "--initial-cluster-state", "new"]
        }
        if let c = certificates {
            arguments += ["--cert-file", c.serverCertFile, "--key-file", c.serverKeyFile]
            if clientCertAuth { arguments += ["--client-cert-auth", "--trusted-ca-file", c.caFile] }
        }
        members[index].process = try TestProcess(name: "etcd-\(m.name)\(restart ? "-restart" : "")", executable: "/usr/bin/etcd",
                                                 arguments: arguments, logDirectory: directory.path)
    }

    /// Waits until every running member answers a read.
    public func waitUntilReady(timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        for index in members.indices where members[index].process?.isRunning == true {
            var c = dcsConfiguration()
            c.endpoints = [endpoints[index]]
            let client = EtcdClient(configuration: c)
            while true {
                let ok = blocking { (try? await client.range("/ready-check")) != nil }
                if ok { break }
                if Date() > deadline || members[index].process?.isRunning != true {
                    throw FixtureError("etcd member \(members[index].name) did not become ready:\n\(members[index].process?.log ?? "")")
                }
                usleep(100_000)
            }
        }
    }

    /// SIGKILL, as a crash or a power cut would.
    public func kill(_ index: Int) { members[index].process?.killNow() }

    /// Starts a killed member again on the same ports and data.
    public func restart(_ index: Int) throws {
        members[index].process?.killNow()
        try launch(index, restart: true)
        try waitUntilReady()
    }

    public func stop() {
        for m in members { m.process?.stop() }
    }

    deinit { stop() }
}

/// A TCP relay in front of etcd (socat) that a test can freeze with SIGSTOP: connections stay
/// open and silent, as a watch does when the network drops packets without a reset.
public final class FreezableRelay: @unchecked Sendable {
    public let port: Int
    let target: Int
    let directory: String
    private(set) var process: TestProcess?

    public init(to targetPort: Int, logDirectory: String) throws {
        port = freePort()
        target = targetPort
        directory = logDirectory
        try start()
    }

    public func start() throws {
        process = try TestProcess(name: "relay-\(port)", executable: "/usr/bin/socat",
                                  arguments: ["TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "TCP:127.0.0.1:\(target)"],
                                  logDirectory: directory)
        _ = eventually(timeout: 5) { canConnect(port: port) }
    }

    /// Every process of this relay: the listener and one forked child per connection.
    private var pids: [Int32] {
        let marker = "TCP-LISTEN:\(port),"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data, as: UTF8.self).contains(marker)
        }
    }

    public func freeze() { pids.forEach { Glibc.kill($0, SIGSTOP) } }
    public func thaw() { pids.forEach { Glibc.kill($0, SIGCONT) } }

    public func stop() {
        let all = pids
        all.forEach { Glibc.kill($0, SIGCONT); Glibc.kill($0, SIGKILL) }
        process?.killNow()
    }

    deinit { stop() }
}

/// Polls an async `condition` every 20 ms until it holds or `timeout` passes.
public func eventuallyAsync(timeout: Duration = .seconds(10), _ condition: @Sendable () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

/// Runs async work to completion from synchronous fixture code.
public func blocking<T: Sendable>(_ work: @escaping @Sendable () async -> T) -> T {
    let semaphore = DispatchSemaphore(value: 0)
    let box = ResultBox<T>()
    Task.detached {
        box.value = await work()
        semaphore.signal()
    }
    semaphore.wait()
    return box.value!
}

final class ResultBox<T>: @unchecked Sendable { var value: T? }

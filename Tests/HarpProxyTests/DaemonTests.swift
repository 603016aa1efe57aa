import Foundation
import HarpCluster
import HarpDCS
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The harp-proxy process itself: signals, reload, exit.
final class DaemonTests: XCTestCase {
    static var pg: PostgresServer { SharedPostgres.first }

    func instanceFile(_ name: String, _ location: String, _ port: Int) -> String {
        "proxy:\n  name: \(name)\n  location: \(location)\n  listen_address: 127.0.0.1\n  listen_port: \(port)\n"
    }

    /// etcd with node1 leading dc1 and node2 leading dc2, both on the test's PostgreSQL.
    func cluster() async throws -> EtcdCluster {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "d")
        for (node, location) in [("node1", "dc1"), ("node2", "dc2")] {
            try await client.put(layout.node(node), #"{"name":"\#(node)","location":"\#(location)","dsn":"host=127.0.0.1 port=\#(Self.pg.port)"}"#)
            try await client.put(layout.leader(location: location), #"{"name":"\#(node)"}"#)
        }
        return etcd
    }

    func writeConfig(_ dir: TemporaryDirectory, etcd: EtcdCluster, extra: String = "") {
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], resync_interval: 1s}\n"
                  + "control: {socket: \(dir.path)/run/control.sock}\n" + extra)
    }

    /// harp-proxy with `dir`'s config.yml (written here, plus `extra`) and conf.d, run through
    /// `wrapper` (a command and its arguments, such as setpriv or prlimit) if one is given.
    func start(_ dir: TemporaryDirectory, etcd: EtcdCluster, extra: String = "", under wrapper: [String] = []) throws -> TestProcess {
        writeConfig(dir, etcd: etcd, extra: extra)
        let command = wrapper + [builtExecutable("harp-proxy"), "-f", dir.file("config.yml")]
        return try TestProcess(name: "harp-proxy", executable: command[0], arguments: Array(command.dropFirst()), logDirectory: dir.path)
    }

    func testSighupAddsAndRemovesInstancesAndKeepsTheOldConfigurationOnErrors() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let (pa, pb, pc) = (freePort(), freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa))
        dir.write("conf.d/b.yml", instanceFile("b", "dc2", pb))
        let proxy = try start(dir, etcd: etcd)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pa).get()) != nil && (try? serverPort(through: pb).get()) != nil }, proxy.log)

        let onA = try openSession(through: pa, tag: "hup-a", logDirectory: dir.path)
        let onB = try openSession(through: pb, tag: "hup-b", logDirectory: dir.path)
        defer { onA.killNow(); onB.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "hup-a") && waitForActivity(on: Self.pg, "hup-b"))

        unlink(dir.file("conf.d/a.yml"))
        dir.write("conf.d/c.yml", instanceFile("c", "dc1", pc))
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pc).get()) == "\(Self.pg.port)" }, "instance c was added:\n\(proxy.log)")
        XCTAssertTrue(eventually(timeout: 5) { !onA.isRunning }, "instance a was removed with its connections")
        XCTAssertTrue(eventually(timeout: 5) { !canConnect(port: pa) }, "a's listener is closed")
        XCTAssertTrue(onB.isRunning, "instance b was untouched and keeps its session")

        dir.write("conf.d/d.yml", "proxy: [\n")
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 5) { proxy.log.contains("previous configuration stays in force") }, proxy.log)
        XCTAssertTrue(proxy.log.contains("d.yml:2:1"), "the error names the file and line:\n\(proxy.log)")
        XCTAssertTrue(proxy.isRunning)
        XCTAssertEqual(try serverPort(through: pc).get(), "\(Self.pg.port)")
        XCTAssertTrue(onB.isRunning)

        // A changed instance is re-planned in place: c moves to a new port and gets its own
        // log_level; b is untouched and keeps its session.
        unlink(dir.file("conf.d/d.yml"))
        let pc2 = freePort()
        dir.write("conf.d/c.yml", instanceFile("c", "dc1", pc2) + "  log_level: debug\n")
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pc2).get()) == "\(Self.pg.port)" }, "c moved to its new port:\n\(proxy.log)")
        XCTAssertTrue(eventually(timeout: 5) { !canConnect(port: pc) }, "c's old port is closed")
        XCTAssertTrue(proxy.log.split(separator: "\n").contains { $0.contains("log_level changed") && $0.contains("instance=c") && $0.contains("to=DEBUG") }, proxy.log)
        XCTAssertTrue(onB.isRunning)

        // The process's log_level applies at once: at WARNING, the next reload's INFO lines are not written.
        writeConfig(dir, etcd: etcd, extra: "log_level: warning\n")
        proxy.signal(SIGHUP)
        XCTAssertTrue(eventually(timeout: 5) { proxy.log.contains("to=WARNING") }, proxy.log)
        func reloads() -> Int { proxy.log.components(separatedBy: "configuration reloaded").count - 1 }
        let before = reloads()
        dir.write("conf.d/c.yml", instanceFile("c", "dc1", pc2))
        proxy.signal(SIGHUP)
        func levelChangesOfC() -> Int { proxy.log.split(separator: "\n").count { $0.contains("log_level changed") && $0.contains("instance=c") } }
        XCTAssertTrue(eventually(timeout: 10) { levelChangesOfC() == 2 }, "c's own level is gone, said while c was at DEBUG:\n\(proxy.log)")
        try await Task.sleep(for: .milliseconds(500))  // the reload's end, when a wrong INFO line would be written
        XCTAssertEqual(reloads(), before, "no INFO line at log_level WARNING:\n\(proxy.log)")
        XCTAssertTrue(proxy.isRunning)
    }

    /// A connected Unix socket that has sent `bytes` and is left open.
    func unixConnect(_ path: String, send bytes: [UInt8]) -> Int32 {
        guard let fd = connectedUnixSocket(path: path) else { return -1 }
        writeAll(fd, bytes)
        return fd
    }

    /// Leaves a Unix socket file behind with nobody listening, as a crashed process would.
    func abandonSocket(at path: String) {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = withUnixAddress(path: path) { bind(fd, $0, $1) }
        close(fd)
    }

    func testControlSocketCommandsPermissionsAndBadInput() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port))
        // A stale socket file from a crashed run: bound, then abandoned.
        let socketPath = dir.path + "/run/control.sock"
        try FileManager.default.createDirectory(atPath: dir.path + "/run", withIntermediateDirectories: true)
        abandonSocket(at: socketPath)
        XCTAssertTrue(FileManager.default.fileExists(atPath: socketPath))

        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], resync_interval: 1s}\n"
                  + "control: {socket: \(socketPath), group: nogroup}\n")
        let daemon = try TestProcess(name: "harp-proxy-control", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")], logDirectory: dir.path)
        defer { daemon.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, daemon.log)
        XCTAssertTrue(eventually(timeout: 5) { daemon.log.contains("control socket listening") }, daemon.log)

        var info = stat()
        XCTAssertEqual(stat(socketPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o660, "mode 0660 by default")
        XCTAssertEqual(info.st_gid, getgrnam("nogroup")!.pointee.gr_gid, "control.group")

        let long = String(repeating: "x", count: 5000)
        let input = Array("status\ninstances\nstatus a\nstatus nope\nfrobnicate\n".utf8) + [0x01, 0xff, 0xfe, 0x00, 0x0a]
            + Array("\(long)\nhelp\n".utf8)
        let replies = try control(socketPath, input)
        guard replies.count == 8 else { return XCTFail("one reply per command, in order, on one connection: \(replies)") }
        let status = parseObject(replies[0])
        XCTAssertEqual(status["cluster"] as? String, "d")
        XCTAssertEqual(status["pid"] as? Int, Int(daemon.pid))
        XCTAssertEqual((status["dcs"] as? [String: Any])?["connected"] as? Bool, true)
        XCTAssertEqual(((status["instances"] as? [[String: Any]])?.first)?["state"] as? String, "routing")
        XCTAssertEqual(parseObject(replies[1])["instances"] as? [String], ["a"])
        XCTAssertEqual(parseObject(replies[2])["listen"] as? String, "127.0.0.1:\(port)")
        XCTAssertEqual(parseObject(replies[3])["error"] as? String, "unknown instance \"nope\"")
        XCTAssertEqual(parseObject(replies[3])["instances"] as? [String], ["a"])
        XCTAssertEqual(parseObject(replies[4])["error"] as? String, "unknown command \"frobnicate\"")
        XCTAssertTrue((parseObject(replies[5])["error"] as? String)?.contains("not text") == true, "garbage gets an error reply: \(replies[5])")
        XCTAssertTrue((parseObject(replies[6])["error"] as? String)?.contains("longer than 4096") == true, replies[6])
        XCTAssertNotNil(parseObject(replies[7])["commands"], "and the connection still answers")

        // Someone else on the host: may look, may not change.
        let denied = try control(socketPath, Array("status a\nunmanage a\nreload\n".utf8), as: "nobody")
        guard denied.count == 3 else { return XCTFail("\(denied)") }
        XCTAssertEqual(parseObject(denied[0])["name"] as? String, "a")
        XCTAssertEqual(parseObject(denied[1])["error"] as? String, "permission denied")
        XCTAssertEqual(parseObject(denied[2])["error"] as? String, "permission denied")

        let unmanaged = try control(socketPath, Array("unmanage a\n".utf8))
        XCTAssertEqual(parseObject(unmanaged.first ?? "")["managed"] as? Bool, false, "\(unmanaged)")
        XCTAssertEqual(parseObject(unmanaged.first ?? "")["state"] as? String, "unmanaged")
        let key = try await EtcdClient(configuration: etcd.dcsConfiguration()).range(DCSLayout(cluster: "d").proxyManaged("a"))
        XCTAssertEqual(key.kvs.first?.value, #""false""#, "the same key harpctl writes")
        let managed = try control(socketPath, Array("manage a\n".utf8))
        XCTAssertEqual(parseObject(managed.first ?? "")["state"] as? String, "routing")

        // Many control clients at once, none reading its replies: routing and a new control client still answer.
        let crowd = (0..<200).map { _ in unixConnect(socketPath, send: Array(String(repeating: "status\n", count: 20).utf8)) }
        XCTAssertEqual(try serverPort(through: port).get(), "\(Self.pg.port)")
        XCTAssertEqual(parseObject(try control(socketPath, Array("instances\n".utf8)).first ?? "")["instances"] as? [String], ["a"])
        crowd.forEach { close($0) }

        let reload = try control(socketPath, Array("reload\n".utf8))
        XCTAssertNotNil(parseObject(reload.first ?? "")["reload"])
        XCTAssertTrue(eventually(timeout: 5) { daemon.log.contains("configuration reloaded") }, daemon.log)

        daemon.stop()
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath))
    }

    func testSystemdNotifyReadyWatchdogAndStopping() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port))
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n"
                  + "control: {socket: \(dir.path)/run/control.sock}\n")
        // systemd's side: a datagram socket the daemon sends its state to.
        let notifyPath = dir.path + "/notify.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        let bound = withUnixAddress(path: notifyPath) { bind(fd, $0, $1) }
        XCTAssertEqual(bound, 0)
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received: [String] = []
        func receive(until text: String, within seconds: TimeInterval) -> Bool {
            eventually(timeout: seconds) {
                var buffer = [UInt8](repeating: 0, count: 512)
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { received.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
                return received.contains { $0.contains(text) }
            }
        }

        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = notifyPath
        environment["WATCHDOG_USEC"] = "400000"
        let proxy = try TestProcess(name: "harp-proxy-notify", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                    logDirectory: dir.path, environment: environment)
        defer { proxy.stop() }
        XCTAssertTrue(receive(until: "READY=1", within: 10), "\(received)\n\(proxy.log)")
        XCTAssertTrue(canConnect(port: port), "READY comes once the listener is bound")
        XCTAssertTrue(receive(until: "WATCHDOG=1", within: 3), "\(received)")
        proxy.signal(SIGTERM)
        XCTAssertTrue(receive(until: "STOPPING=1", within: 5), "\(received)")
        XCTAssertEqual(proxy.waitForExit(), 0)
    }

    func testHealthEndpoints() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let (pa, pb, http) = (freePort(), freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa) + "  endpoint: host=127.0.0.1 port=\(pa) dbname=postgres user=postgres\n")
        dir.write("conf.d/b.yml", instanceFile("b", "dc2", pb))
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n"
                  + "control: {socket: \(dir.path)/run/control.sock}\nhttp: {enable: true, host: 127.0.0.1, port: \(http), probes: {timeout: 8s}}\n")
        var environment = ProcessInfo.processInfo.environment
        environment["PGUSER"] = "postgres"  // what User=postgres gives under systemd
        let proxy = try TestProcess(name: "harp-proxy-http", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                    logDirectory: dir.path, environment: environment)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { httpGet(http, "/health/is-live").status == 200 }, proxy.log)
        XCTAssertEqual(httpGet(http, "/health/is-live").body, "true")
        XCTAssertTrue(eventually(timeout: 10) { httpGet(http, "/health/is-ready").status == 200 }, "\(httpGet(http, "/health/is-ready"))\n\(proxy.log)")
        XCTAssertEqual(httpGet(http, "/health/is-ready").body, "true")

        // dc2 loses its leader: not ready, and the reason names the instance.
        try await EtcdClient(configuration: etcd.dcsConfiguration()).delete(DCSLayout(cluster: "d").leader(location: "dc2"))
        XCTAssertTrue(eventually(timeout: 10) { httpGet(http, "/health/is-ready").status == 500 })
        let notReady = httpGet(http, "/health/is-ready")
        let reasons = (try? JSONSerialization.jsonObject(with: Data(notReady.body.utf8)) as? [String: Any]) ?? [:]
        XCTAssertEqual(reasons["ready"] as? Bool, false, notReady.body)
        XCTAssertTrue(((reasons["instances"] as? [String: Any])?["b"] as? String)?.contains("no lead master") == true, notReady.body)
        XCTAssertEqual((reasons["instances"] as? [String: Any])?["a"] as? String, "ready", notReady.body)
        XCTAssertEqual(httpGet(http, "/health/is-ready?instance=a").status, 200, "one instance at a time")
        XCTAssertEqual(httpGet(http, "/health/is-ready?instance=b").status, 500)
        XCTAssertEqual(httpGet(http, "/health/is-ready?instance=nope").status, 404)
        XCTAssertEqual(httpGet(http, "/nothing").status, 404)
    }

    /// Parses the Prometheus text format (version 0.0.4): every sample keyed by its name and
    /// sorted labels, and every family's TYPE. A line that does not parse fails the test.
    func parsePrometheus(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> (samples: [String: Double], types: [String: String]) {
        var samples: [String: Double] = [:]
        var types: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let l = String(raw)
            if l.hasPrefix("# TYPE ") {
                let parts = l.split(separator: " ")
                if parts.count == 4 { types[String(parts[2])] = String(parts[3]) } else { XCTFail("bad TYPE line: \(l)", file: file, line: line) }
                continue
            }
            if l.hasPrefix("#") { continue }
            var name = "", labels: [String] = []
            var rest = Substring(l)
            if let brace = rest.firstIndex(of: "{") {
                name = String(rest[..<brace])
                guard let close = rest.lastIndex(of: "}") else { XCTFail("bad sample: \(l)", file: file, line: line); continue }
                let inner = rest[rest.index(after: brace)..<close]
                // label="value" pairs; values here hold no escaped quotes or commas.
                for pair in inner.split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    guard kv.count == 2, kv[1].hasPrefix("\""), kv[1].hasSuffix("\"") else { XCTFail("bad label in: \(l)", file: file, line: line); continue }
                    labels.append("\(kv[0])=\(kv[1].dropFirst().dropLast())")
                }
                rest = rest[rest.index(after: close)...]
            } else {
                let parts = rest.split(separator: " ", maxSplits: 1)
                name = String(parts[0])
                rest = parts.count > 1 ? " " + parts[1] : ""
            }
            guard name.range(of: "^[a-zA-Z_:][a-zA-Z0-9_:]*$", options: .regularExpression) != nil,
                  let value = Double(rest.trimmingCharacters(in: .whitespaces)) else {
                XCTFail("bad sample: \(l)", file: file, line: line)
                continue
            }
            samples[name + "{" + labels.sorted().joined(separator: ",") + "}"] = value
        }
        return (samples, types)
    }

    func testMetricsInThePrometheusTextFormat() async throws {
        let etcd = try await cluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "d")
        let dir = TemporaryDirectory()
        let (pa, pb, http) = (freePort(), freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa))
        dir.write("conf.d/b.yml", instanceFile("b", "dc2", pb) + "  hold_timeout: 200\n")
        let proxy = try start(dir, etcd: etcd, extra: "http: {enable: true, host: 127.0.0.1, port: \(http)}\n")
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pa).get()) != nil }, proxy.log)
        XCTAssertEqual(try serverPort(through: pa).get(), "\(Self.pg.port)")

        try await client.delete(layout.leader(location: "dc2"))
        // Until `b` has seen the delete, a probe can still reach the old lead master and be cut
        // there (not a refusal): wait for the refusal itself.
        XCTAssertTrue(eventually(timeout: 10) {
            if case .failure(let e) = serverPort(through: pb, timeout: 2) { return "\(e)".contains("no lead master for location dc2") }
            return false
        })
        // A session open through `a` when its lead master moves: cut, and counted.
        let session = try PGSession("host=127.0.0.1 port=\(pa) dbname=postgres user=postgres connect_timeout=10 sslmode=disable")
        XCTAssertEqual(try session.query("SELECT 1"), "1")
        try await client.put(layout.node("node3"), #"{"name":"node3","location":"dc1","dsn":"host=127.0.0.1 port=\#(Self.pg.port) dbname=postgres"}"#)
        try await client.put(layout.leader(location: "dc1"), #"{"name":"node3"}"#)

        var parsed: (samples: [String: Double], types: [String: String]) = ([:], [:])
        // The cut is counted a moment before the relay reports the session closed: wait for both.
        XCTAssertTrue(eventually(timeout: 10) {
            let response = httpGet(http, "/metrics")
            guard response.status == 200 else { return false }
            parsed = parsePrometheus(response.body)
            return parsed.samples["harp_proxy_leader_changes_total{instance=a}"] == 1
                && parsed.samples["harp_proxy_sessions_cut_total{instance=a}"] == 1
                && parsed.samples["harp_proxy_clients{instance=a}"] == 0
        }, "\(httpGet(http, "/metrics").body)\n\(proxy.log)")
        XCTAssertEqual(parsed.samples["harp_proxy_clients_started_again_total{instance=a}"], 0)
        XCTAssertThrowsError(try session.query("SELECT 1"), "the session was cut")
        let m = parsed.samples
        XCTAssertGreaterThanOrEqual(m["harp_proxy_connections_total{instance=a}"] ?? 0, 2)
        XCTAssertGreaterThan(m["harp_proxy_bytes_total{direction=client_to_server,instance=a}"] ?? 0, 0)
        XCTAssertGreaterThan(m["harp_proxy_bytes_total{direction=server_to_client,instance=a}"] ?? 0, 0)
        XCTAssertGreaterThanOrEqual(m["harp_proxy_refused_total{instance=b,reason=no_leader}"] ?? 0, 1)
        XCTAssertEqual(m["harp_proxy_refused_total{instance=a,reason=max_client_conn}"], 0)
        XCTAssertEqual(m["harp_proxy_state{instance=b,state=no-leader}"], 1)
        XCTAssertEqual(m["harp_proxy_state{instance=b,state=routing}"], 0)
        XCTAssertEqual(m["harp_proxy_state{instance=a,state=routing}"], 1)
        XCTAssertEqual(m["harp_proxy_clients{instance=a}"], 0)
        XCTAssertLessThan(m["harp_proxy_leader_age_seconds{instance=a}"] ?? -1, 60)
        XCTAssertEqual(m["harp_proxy_dcs_connected{}"], 1)
        XCTAssertGreaterThan(m["harp_proxy_dcs_watch_events_total{}"] ?? 0, 0)
        XCTAssertNotNil(m["harp_proxy_dcs_request_errors_total{}"])
        XCTAssertLessThan(m["harp_proxy_dcs_last_contact_age_seconds{}"] ?? 99, 10)
        XCTAssertGreaterThan(m["harp_proxy_open_fds{}"] ?? 0, 0)
        XCTAssertGreaterThanOrEqual(m["harp_proxy_max_fds{}"] ?? 0, m["harp_proxy_open_fds{}"] ?? 1)
        XCTAssertEqual(parsed.types["harp_proxy_bytes_total"], "counter")
        XCTAssertEqual(parsed.types["harp_proxy_clients"], "gauge")
    }

    /// config.yml given by a relative path, its control socket by a bare file name: the socket is
    /// made beside config.yml (relative paths are config.yml's folder's), and it answers.
    func testAControlSocketNamedByABareFileNameOpens() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port))
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n"
                  + "control: {socket: ./control.sock}\n")
        let proxy = try TestProcess(name: "harp-proxy", executable: "/bin/sh",
                                    arguments: ["-c", "cd \(dir.path) && exec \(builtExecutable("harp-proxy")) -f config.yml"], logDirectory: dir.path)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, proxy.log)
        XCTAssertFalse(proxy.log.contains("control socket unavailable"), proxy.log)
        let replies = try control(dir.file("control.sock"), Array("status a\n".utf8))
        XCTAssertEqual(replies.first.map(parseObject)?["name"] as? String, "a", "\(replies)\n\(proxy.log)")
    }

    func testHealthEndpointsOverHTTPS() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let certs = try TestCertificates.make(in: dir.path)
        let (pa, https) = (freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa))
        let proxy = try start(dir, etcd: etcd, extra: "http: {enable: true, host: 127.0.0.1, port: \(https), secure: true, "
                              + "cert_file: \(certs.serverCertFile), key_file: \(certs.serverKeyFile)}\n")
        defer { proxy.stop() }
        func curl(_ path: String, ca: String) -> (status: Int32, output: String) {
            (try? runCommand("/usr/bin/curl", ["-sS", "--max-time", "5", "--cacert", ca, "-w", " %{http_code}", "https://127.0.0.1:\(https)\(path)"]))
                ?? (-1, "curl did not run")
        }
        XCTAssertTrue(eventually(timeout: 10) { curl("/health/is-live", ca: certs.caFile).output == "true\n 200" }, "\(curl("/health/is-live", ca: certs.caFile))\n\(proxy.log)")
        XCTAssertTrue(curl("/metrics", ca: certs.caFile).output.contains("harp_proxy_clients{instance=\"a\"}"))
        let untrusted = curl("/health/is-live", ca: certs.otherCAFile)
        XCTAssertNotEqual(untrusted.status, 0, "a client that does not trust the certificate is refused: \(untrusted.output)")
        XCTAssertEqual(httpGet(https, "/health/is-live").status, 0, "no plain HTTP on the HTTPS port")
    }

    func testJSONLogsAreOneObjectPerLine() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port))
        let proxy = try start(dir, etcd: etcd, extra: "log_format: json\n")
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, proxy.log)
        proxy.stop()
        let lines = proxy.log.split(separator: "\n")
        XCTAssertGreaterThan(lines.count, 3)
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            XCTAssertNotNil(object?["msg"], "not a JSON log line: \(line)")
            XCTAssertNotNil(object?["level"])
            XCTAssertNotNil(object?["time"])
        }
        XCTAssertTrue(lines.contains { $0.contains("\"msg\":\"listening\"") && $0.contains("\"instance\":\"a\"") })
    }

    func testSigtermClosesConnectionsAndExitsZero() async throws {
        try await stopsCleanly(on: SIGTERM, "SIGTERM")
    }

    func testSigintClosesConnectionsAndExitsZero() async throws {
        try await stopsCleanly(on: SIGINT, "SIGINT")
    }

    /// With etcd gone, and the proxy aware of it: the stop tries no status write (each would wait
    /// out its timeout), and still closes and exits 0.
    func testSigtermWithTheDCSDownStillStopsAtOnce() async throws {
        try await stopsCleanly(on: SIGTERM, "SIGTERM-dcs-down", dcsDown: true)
    }

    /// Stop accepting, close the connections, mark the status record `stopped`, exit 0.
    private func stopsCleanly(on signal: Int32, _ name: String, dcsDown: Bool = false,
                              file: StaticString = #filePath, line: UInt = #line) async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        // dcsDown: a long monitor_interval, so that no periodic report is under way at the stop;
        // debug logging, which shows every status write that fails.
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port) + (dcsDown ? "  monitor_interval: 60\n" : ""))
        let proxy = try start(dir, etcd: etcd, extra: dcsDown ? "log_level: debug\n" : "")
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, proxy.log, file: file, line: line)
        let session = try openSession(through: port, tag: "stop-\(name)", logDirectory: dir.path)
        defer { session.killNow() }
        XCTAssertTrue(waitForActivity(on: Self.pg, "stop-\(name)"), file: file, line: line)

        var logBeforeStop = 0
        if dcsDown {
            etcd.kill(0)
            XCTAssertTrue(eventually(timeout: 10) { proxy.log.contains("DCS unreachable; retrying") }, proxy.log, file: file, line: line)
            logBeforeStop = proxy.log.utf8.count
        }
        let signalled = Date()
        proxy.signal(signal)
        XCTAssertTrue(eventually(timeout: 10) { !proxy.isRunning }, file: file, line: line)
        let status = proxy.waitForExit()
        XCTAssertEqual(status, 0, "exit status 0 after \(name):\n\(proxy.log)", file: file, line: line)
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning }, "its connections were closed", file: file, line: line)
        XCTAssertFalse(canConnect(port: port), file: file, line: line)
        if dcsDown {
            XCTAssertLessThan(Date().timeIntervalSince(signalled), 5, "stopped without waiting on the DCS:\n\(proxy.log)", file: file, line: line)
            let stopLog = String(proxy.log.utf8.dropFirst(logBeforeStop)) ?? ""
            XCTAssertTrue(stopLog.contains("stopping"), stopLog, file: file, line: line)
            XCTAssertFalse(stopLog.contains("status record not written"), "no write tried with the DCS unreachable:\n\(stopLog)", file: file, line: line)
            return
        }
        let record = try await EtcdClient(configuration: etcd.dcsConfiguration()).range(DCSLayout(cluster: "d").proxyStatus("a")).kvs.first
        let state = record.flatMap { try? JSONSerialization.jsonObject(with: Data($0.value.utf8)) as? [String: Any] }?["state"] as? String
        XCTAssertEqual(state, "stopped", "the status record says the proxy stopped", file: file, line: line)
    }

    /// One SwiftNIO event loop group, with one thread per core, for all the instances of the
    /// process (here two); no other group. Established sessions pass on the relay's threads:
    /// one per core too.
    func testOneEventLoopThreadPerCoreForAllInstances() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let (pa, pb) = (freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa))
        dir.write("conf.d/b.yml", instanceFile("b", "dc2", pb))
        let proxy = try start(dir, etcd: etcd)
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pa).get()) != nil && (try? serverPort(through: pb).get()) != nil }, proxy.log)
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.pid)/task")) ?? []
        let names = tasks.compactMap { try? String(contentsOfFile: "/proc/\(proxy.pid)/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        // NIO names its threads NIO-ELT-<group>-#<thread>.
        let loops = names.filter { $0.hasPrefix("NIO-ELT-") }
        XCTAssertEqual(loops.count, ProcessInfo.processInfo.activeProcessorCount, "\(names)")
        XCTAssertEqual(Set(loops.map { $0.split(separator: "-").prefix(3).joined(separator: "-") }).count, 1, "one group: \(loops)")
        XCTAssertEqual(Set(names.filter { $0.hasPrefix("harp-relay-") }).count, ProcessInfo.processInfo.activeProcessorCount, "\(names)")
    }

    /// At start the soft RLIMIT_NOFILE is raised to the hard limit; `max_client_conn` beyond what
    /// that can hold (two descriptors a client, 64 in reserve) is lowered, with a WARNING that
    /// gives both values, and the lowered value is in force.
    func testTheDescriptorLimitIsRaisedAndMaxClientConnLoweredToFit() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port) + "  max_client_conn: 5000\n")
        let proxy = try start(dir, etcd: etcd, under: ["/usr/bin/prlimit", "--nofile=256:4096", "--"])
        defer { proxy.stop() }
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, proxy.log)
        let limits = (try? String(contentsOfFile: "/proc/\(proxy.pid)/limits", encoding: .utf8)) ?? ""
        let openFiles = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") }?.split(separator: " ", omittingEmptySubsequences: true)
        XCTAssertEqual(openFiles.map { Array($0.dropFirst(3).prefix(2)) }, ["4096", "4096"], "soft limit raised to the hard one: \(limits)")
        XCTAssertTrue(proxy.log.contains("max_client_conn lowered"), proxy.log)
        let warning = proxy.log.split(separator: "\n").first { $0.contains("max_client_conn lowered") }.map(String.init) ?? ""
        XCTAssertTrue(warning.contains("level=warning") && warning.contains("max_client_conn=5000") && warning.contains("lowered_to=2016"), warning)
        let replies = try control(dir.path + "/run/control.sock", Array("status a\n".utf8))
        XCTAssertEqual(replies.first.map(parseObject)?["max_client_conn"] as? Int, 2016, "the lowered value is in force: \(replies)")
    }
}

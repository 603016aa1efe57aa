import Foundation
import HarpCluster
import HarpConfig
import HarpDCS
import HarpProxy
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// pgbouncer mode: a real PgBouncer 1.18, started and driven by the proxy host, in front of two
/// real PostgreSQL servers, with the lead master in a real etcd.
final class PgBouncerModeTests: XCTestCase {
    var a: PostgresServer { SharedPostgres.first }
    var b: PostgresServer { SharedPostgres.second }

    /// A folder PgBouncer's user can reach, as /etc/harp is (a test folder is 0700).
    func configFolder() -> TemporaryDirectory {
        let dir = TemporaryDirectory("harp-pgb")
        chmod(dir.path, 0o755)
        return dir
    }

    func directives(port: Int, _ extra: [String: DirectiveValue] = [:]) -> [String: DirectiveValue] {
        ["type": .string("pgbouncer"), "listen_address": .string("127.0.0.1"), "listen_port": .integer(port),
         "database_name": .string("postgres"), "auth_type": .string("trust"), "pool_mode": .string("transaction")]
            .merging(extra) { $1 }
    }

    /// A rig with one pgbouncer instance `pgb` in dc1, node1 (server a) leading, node2 (server b) standing by.
    func rig(port: Int, in dir: TemporaryDirectory, _ extra: [String: DirectiveValue] = [:]) async throws -> ProxyRig {
        let users = dir.write("userlist.txt", "\"postgres\" \"\"\n")
        let rig = try ProxyRig([("pgb", "dc1", directives(port: port, ["auth_file": .string(users)].merging(extra) { $1 }))], configDirectory: dir.path)
        rig.keepAlive.append(dir)
        stopAtTeardown(rig)
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc1", server: b)
        try await rig.leader("dc1", "node1")
        // Clients come once PgBouncer has been pointed at node1; see docs/operations.md on PgBouncer starting
        // without a lead master.
        // "PgBouncer started on the lead master", or "... started paused, now resumed on the lead
        // master" if the DCS was read before the leader key was written.
        XCTAssertTrue(eventually(timeout: 20) { self.logged(rig, "on the lead master") }, logText(rig))
        return rig
    }

    /// A rig whose PgBouncer already serves node1: the folder, the port and the rig.
    func servingRig(_ extra: [String: DirectiveValue] = [:]) async throws -> (TemporaryDirectory, Int, ProxyRig) {
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir, extra)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        return (dir, port, rig)
    }

    func session(_ port: Int, user: String = "postgres", password: String? = nil) throws -> PGSession {
        try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=\(user) connect_timeout=10 sslmode=disable" + (password.map { " password=\($0)" } ?? ""))
    }

    func logged(_ rig: ProxyRig, _ text: String) -> Bool { rig.capture.all.contains { $0.message.contains(text) } }

    func logText(_ rig: ProxyRig) -> String {
        rig.capture.all.map { "\($0.level) \($0.message) \($0.metadata)" }.joined(separator: "\n")
    }

    /// Waits until a new client through PgBouncer lands on `server`.
    func waitUntilServed(_ port: Int, by server: PostgresServer, timeout: TimeInterval = 20) -> Bool {
        eventually(timeout: timeout) { (try? serverPort(through: port, timeout: 3).get()) == "\(server.port)" }
    }

    func testPlannedSwitchoverWithATransactionOpenKeepsTheClientConnection() async throws {
        let (dir, port, rig) = try await servingRig()

        let client = try session(port)
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")
        try client.query("BEGIN")
        try client.query("CREATE TEMP TABLE IF NOT EXISTS t(x int) ON COMMIT DROP")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")

        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "PAUSE: in-flight") }, logText(rig))
        // The open transaction still runs on the old leader, and commits there.
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")
        try client.query("COMMIT")

        // The next transaction on the same connection runs on the new leader.
        let next = await client.run("SELECT current_setting('port')")
        XCTAssertEqual(try next.get(), "\(b.port)", logText(rig))
        XCTAssertTrue(client.isOpen, "the client connection was never dropped")
        XCTAssertTrue(logged(rig, "PgBouncer points at the new lead master and is resumed"), logText(rig))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("pgbouncer-pgb.ini")))
        await rig.stop()
    }

    func testALeaderGoneForTwoSecondsMakesAQueryWaitThenSucceed() async throws {
        let (_, port, rig) = try await servingRig()
        let client = try session(port)
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")

        try await rig.leader("dc1", nil)
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "PgBouncer paused") }, logText(rig))
        let issued = ContinuousClock.now
        async let answer = client.run("SELECT current_setting('port')")
        try await Task.sleep(for: .seconds(2))  // the two-second gap the test is about
        try await rig.leader("dc1", "node1")
        let result = await answer
        let waited = ContinuousClock.now - issued
        XCTAssertEqual(try result.get(), "\(a.port)", "the query waited through the gap, then succeeded:\n\(logText(rig))")
        XCTAssertGreaterThanOrEqual(waited, .milliseconds(1900), "it was held while there was no lead master")
        XCTAssertTrue(client.isOpen)
    }

    func testServerTransferTimeoutEndsInKill() async throws {
        let (_, port, rig) = try await servingRig(["server_transfer_timeout": .duration(.seconds(1))])
        let stuck = try session(port)
        try stuck.query("BEGIN")
        XCTAssertEqual(try stuck.query("SELECT current_setting('port')"), "\(a.port)")

        let moved = ContinuousClock.now
        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "server_transfer_timeout passed") }, logText(rig))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - moved, .milliseconds(900), "PAUSE was given its time first")
        // The transaction that never ended was killed with its connection...
        XCTAssertThrowsError(try stuck.query("SELECT 1"))
        // ...and PgBouncer moved on to the new leader.
        XCTAssertTrue(waitUntilServed(port, by: b), logText(rig))
    }

    func testAPgBouncerKilledWithSignal9IsRestartedPausedAndResumed() async throws {
        let (dir, port, rig) = try await servingRig()
        let pidFile = dir.file("pgbouncer-pgb.d/pgbouncer.pid")
        let first = try XCTUnwrap(pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""))

        kill(first, SIGKILL)
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "PgBouncer exited") }, logText(rig))
        XCTAssertTrue(waitUntilServed(port, by: a), "back on the lead master after the restart:\n\(logText(rig))")
        let second = pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
        XCTAssertNotNil(second)
        XCTAssertNotEqual(second, first)
        XCTAssertTrue(eventually(timeout: 10) { rig.capture.all.filter { $0.message.contains("on the lead master") && $0.message.contains("started") }.count == 2 }, logText(rig))
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("PgBouncer exited") && $0.metadata["status"] == "killed by signal 9" }, logText(rig))
    }

    func testAnUnmanagedInstanceLeavesPgBouncerAlone() async throws {
        let (_, port, rig) = try await servingRig()
        try await rig.client.put(rig.layout.proxyManaged("pgb"), "false")
        let unmanaged = await eventuallyAsync { await rig.host.status().first?.plan?.managed == false }
        XCTAssertTrue(unmanaged)
        try await rig.leader("dc1", "node2")
        let planned = await rig.waitUntilRouting("pgb", to: "node2")
        XCTAssertTrue(planned)
        try await Task.sleep(for: .milliseconds(500))  // time for a wrong PAUSE or repoint, which must not come
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)", "unmanaged: PgBouncer still points where it did")
        XCTAssertFalse(logged(rig, "PAUSE: in-flight"), "no PAUSE while unmanaged:\n\(logText(rig))")

        try await rig.client.put(rig.layout.proxyManaged("pgb"), "true")
        XCTAssertTrue(waitUntilServed(port, by: b), "managed again: it follows the lead master:\n\(logText(rig))")
    }

    func testIniInjectionThroughTheDCSFailsSafely() async throws {
        let (dir, port, rig) = try await servingRig()
        // Each value tries to end its line and start a setting or an include of its own.
        let attack = #"{"ignore_startup_parameters": "extra_float_digits\nadmin_users = mallory", "auth_query": "SELECT 1\n%include /etc/passwd", "database_name": "postgres\r\n[databases]\nevil = host=10.0.0.1", "client_tls_ca_file": "/x\u0000y", "default_pool_size": 7}"#
        try await rig.client.put(rig.layout.proxyConfig("pgb"), attack)
        let seen = await eventuallyAsync { await rig.host.status().first?.plan?.directives[DirectiveKeys.defaultPoolSize] == 7 }
        XCTAssertTrue(seen)
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "directives changed: PgBouncer reloaded") }, logText(rig))
        let ini = try String(contentsOfFile: dir.file("pgbouncer-pgb.ini"), encoding: .utf8)
        XCTAssertTrue(ini.contains("default_pool_size = 7"), "the valid value was applied:\n\(ini)")
        for forbidden in ["mallory", "%include", "evil", "10.0.0.1", "/x"] {
            XCTAssertFalse(ini.contains(forbidden), "'\(forbidden)' reached the ini:\n\(ini)")
        }
        XCTAssertEqual(ini.components(separatedBy: "[databases]").count, 2, "one [databases] section")
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)", "PgBouncer still serves")
        // A name PgBouncer would split is refused with a clear error, and the running settings stay.
        try await rig.client.put(rig.layout.proxyConfig("pgb"), #"{"database_name": "post gres"}"#)
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "invalid 'database_name' 'post gres'") }, logText(rig))
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)")
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("pgbouncer-pgb.ini"))[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
    }

    func testFencingPausesPgBouncerUntilTheDCSIsBack() async throws {
        let (_, port, rig) = try await servingRig(["leader_lease_duration": .duration(.seconds(1))])
        let client = try session(port)
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")

        rig.etcd.kill(0)
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "PgBouncer paused") }, "fence means PAUSE:\n\(logText(rig))")
        async let answer = client.run("SELECT current_setting('port')")
        try await Task.sleep(for: .seconds(1))  // the outage goes on a while, with the query held in it
        try rig.etcd.restart(0)
        let result = await answer
        XCTAssertEqual(try result.get(), "\(a.port)", "the held query runs once the DCS confirms the lead master:\n\(logText(rig))")
        XCTAssertTrue(client.isOpen)
    }

    func testSessionTransferModeFastKillsOpenTransactionsAtOnce() async throws {
        let (_, port, rig) = try await servingRig(["session_transfer_mode": .string("fast")])
        let stuck = try session(port)
        try stuck.query("BEGIN")
        XCTAssertEqual(try stuck.query("SELECT current_setting('port')"), "\(a.port)")
        let moved = ContinuousClock.now
        try await rig.leader("dc1", "node2")
        XCTAssertTrue(waitUntilServed(port, by: b), logText(rig))
        XCTAssertLessThan(ContinuousClock.now - moved, .seconds(10), "not the 30 s server_transfer_timeout")
        XCTAssertTrue(logged(rig, "KILL"), logText(rig))
        XCTAssertThrowsError(try stuck.query("SELECT 1"))
    }

    func testSessionTransferModeReconnectMovesWithoutPausing() async throws {
        let (_, port, rig) = try await servingRig(["session_transfer_mode": .string("reconnect")])
        let client = try session(port)
        try client.query("BEGIN")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")
        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "session_transfer_mode reconnect") }, logText(rig))
        // New clients go to the new leader at once, while the open transaction goes on on the old one.
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")
        try client.query("COMMIT")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(b.port)", "the next transaction runs on the new leader")
        XCTAssertFalse(logged(rig, "PAUSE: in-flight"), "no PAUSE in reconnect mode:\n\(logText(rig))")
    }

    func testANewListenPortRestartsPgBouncerThere() async throws {
        let dir = configFolder()
        let (port, newPort) = (freePort(), freePort())
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        try await rig.client.put(rig.layout.proxyConfig("pgb"), #"{"listen_port": \#(newPort)}"#)
        XCTAssertTrue(waitUntilServed(newPort, by: a), logText(rig))
        XCTAssertFalse(canConnect(port: port), "the old port is closed")
        XCTAssertTrue(logged(rig, "restarting PgBouncer"), logText(rig))
    }

    func testSessionPoolingHoldsTheOldLeaderUntilTheKill() async throws {
        let (_, port, rig) = try await servingRig(["pool_mode": .string("session"), "server_transfer_timeout": .duration(.seconds(1))])
        let held = try session(port)
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(a.port)")
        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "PAUSE: in-flight") }, logText(rig))
        // As docs/operations.md says: a session-pooled client keeps its server until the KILL.
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(a.port)")
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "server_transfer_timeout passed") }, logText(rig))
        XCTAssertThrowsError(try held.query("SELECT 1"))
        XCTAssertTrue(waitUntilServed(port, by: b), logText(rig))
    }

    func testClientTLSDirectivesReachPgBouncer() async throws {
        let dir = configFolder()
        let tls = dir.path + "/tls"
        mkdir(tls, 0o755)
        let certs = try TestCertificates.make(in: tls)
        if getuid() == 0, let pw = getpwnam("postgres") {
            for file in [certs.serverCertFile, certs.serverKeyFile] { chown(file, pw.pointee.pw_uid, pw.pointee.pw_gid) }
        }
        let port = freePort()
        let rig = try await rig(port: port, in: dir, [
            "client_tls_sslmode": .string("require"), "client_tls_cert_file": .string(certs.serverCertFile),
            "client_tls_key_file": .string(certs.serverKeyFile),
        ])
        let verified = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres sslmode=verify-full sslrootcert=\(certs.caFile) connect_timeout=10")
        XCTAssertEqual(try verified.query("SELECT current_setting('port')"), "\(a.port)", logText(rig))
        XCTAssertThrowsError(try session(port), "client_tls_sslmode require turns a plain-text client away")
    }

    func testAUserAddedToAuthFileCanLogInWithoutARestart() async throws {
        _ = try a.query("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'late_user') THEN CREATE ROLE late_user LOGIN; END IF; END $$")
        let (dir, port, rig) = try await servingRig(["monitor_interval": .duration(.seconds(1))])
        XCTAssertThrowsError(try session(port, user: "late_user"), "not in the auth file yet")
        let pid = try String(contentsOfFile: dir.file("pgbouncer-pgb.d/pgbouncer.pid"), encoding: .utf8)
        // The operator's file gains a user; harp-proxy copies it over and reloads PgBouncer.
        _ = dir.write("userlist.txt", "\"postgres\" \"\"\n\"late_user\" \"\"\n")
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "auth_file changed: PgBouncer reloaded") }, logText(rig))
        XCTAssertEqual(try session(port, user: "late_user").query("SELECT current_user"), "late_user")
        XCTAssertEqual(try String(contentsOfFile: dir.file("pgbouncer-pgb.d/pgbouncer.pid"), encoding: .utf8), pid, "no restart")
    }

    func testPassthroughAuthenticationWithAuthUserAndAuthQueryAgainstAScramPassword() async throws {
        // As docs/configuration.md shows: a SECURITY DEFINER function that only auth_user may run.
        for sql in [
            "CREATE ROLE harp_auth LOGIN PASSWORD 'auth-secret'",
            "CREATE ROLE app_scram LOGIN PASSWORD 'app-secret'",
            """
            CREATE FUNCTION pg_catalog.pgbouncer_get_auth(p_usename TEXT) RETURNS TABLE(username TEXT, password TEXT) AS $$
            BEGIN
                RETURN QUERY SELECT usename::TEXT, passwd::TEXT FROM pg_catalog.pg_shadow WHERE usename = p_usename;
            END;
            $$ LANGUAGE plpgsql SECURITY DEFINER
            """,
            "REVOKE ALL ON FUNCTION pg_catalog.pgbouncer_get_auth(TEXT) FROM PUBLIC",
            "GRANT EXECUTE ON FUNCTION pg_catalog.pgbouncer_get_auth(TEXT) TO harp_auth",
        ] { _ = try a.query(sql) }
        XCTAssertTrue(try a.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_scram'").hasPrefix("SCRAM-SHA-256$"))
        try a.prependHBA("host all app_scram,harp_auth 127.0.0.1/32 scram-sha-256")

        let dir = configFolder()
        let port = freePort()
        let users = dir.write("users.txt", "\"postgres\" \"\"\n\"harp_auth\" \"auth-secret\"\n")
        _ = try await rig(port: port, in: dir, [
            "auth_file": .string(users), "auth_type": .string("scram-sha-256"), "auth_user": .string("harp_auth"),
            "auth_query": .string("SELECT username, password FROM pg_catalog.pgbouncer_get_auth($1)"),
        ])
        // app_scram is in no auth file: PgBouncer asks PostgreSQL through auth_user.
        let app = try session(port, user: "app_scram", password: "app-secret")
        XCTAssertEqual(try app.query("SELECT current_user || ' on ' || current_setting('port')"), "app_scram on \(a.port)")
        XCTAssertThrowsError(try session(port, user: "app_scram", password: "wrong")) { error in
            XCTAssertTrue("\(error)".contains("SASL authentication failed"), "\(error)")
        }
        let generated = try String(contentsOfFile: dir.file("pgbouncer-pgb.users.txt"), encoding: .utf8)
        XCTAssertTrue(generated.contains("\"harp_auth\" \"auth-secret\""), "auth_user's line is copied from auth_file")
        XCTAssertFalse(try String(contentsOfFile: users, encoding: .utf8).contains("pgbouncer"), "the operator's auth_file is left untouched")
    }
}

/// pgbouncer instances inside the harp-proxy process, next to a builtin one.
final class PgBouncerDaemonTests: XCTestCase {
    var a: PostgresServer { SharedPostgres.first }
    var b: PostgresServer { SharedPostgres.second }

    func testTwoPgBouncerInstancesAndABuiltinOneEachFollowTheirLocation() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "d")
        for (node, location, server) in [("n1", "dc1", a), ("n4", "dc1", b), ("n2", "dc2", b), ("n3", "dc3", a)] {
            try await client.put(layout.node(node), #"{"name":"\#(node)","location":"\#(location)","dsn":"host=127.0.0.1 port=\#(server.port) dbname=postgres"}"#)
        }
        for (location, node) in [("dc1", "n1"), ("dc2", "n2"), ("dc3", "n3")] {
            try await client.put(layout.leader(location: location), #"{"name":"\#(node)"}"#)
        }
        let dir = TemporaryDirectory("harp-pgb")
        chmod(dir.path, 0o755)
        let users = dir.write("users.txt", "\"postgres\" \"\"\n")
        let (p1, p2, p3, http) = (freePort(), freePort(), freePort(), freePort())
        func pgbouncer(_ name: String, _ location: String, _ port: Int) -> String {
            "proxy:\n  name: \(name)\n  location: \(location)\n  type: pgbouncer\n  listen_address: 127.0.0.1\n  listen_port: \(port)\n"
                + "  database_name: postgres\n  auth_type: trust\n  auth_file: \(users)\n  pool_mode: transaction\n  monitor_interval: 1\n"
        }
        dir.write("conf.d/pg1.yml", pgbouncer("pg1", "dc1", p1))
        dir.write("conf.d/pg2.yml", pgbouncer("pg2", "dc2", p2))
        dir.write("conf.d/bi.yml", "proxy:\n  name: bi\n  location: dc3\n  listen_address: 127.0.0.1\n  listen_port: \(p3)\n")
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], resync_interval: 1s}\n"
                  + "control: {socket: \(dir.path)/control.sock}\nhttp: {enable: true, host: 127.0.0.1, port: \(http)}\n")
        let proxy = try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                                    logDirectory: dir.path)
        defer { proxy.stop() }
        func served(_ port: Int) -> String? { try? serverPort(through: port, timeout: 3).get() }
        XCTAssertTrue(eventually(timeout: 20) { served(p1) == "\(self.a.port)" && served(p2) == "\(self.b.port)" && served(p3) == "\(self.a.port)" }, proxy.log)

        // A held client of pg2 sees nothing of dc1's switchover.
        let held = try PGSession("host=127.0.0.1 port=\(p2) dbname=postgres user=postgres sslmode=disable")
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(b.port)")
        try await client.put(layout.leader(location: "dc1"), #"{"name":"n4"}"#)
        XCTAssertTrue(eventually(timeout: 10) { served(p1) == "\(self.b.port)" }, proxy.log)
        XCTAssertEqual(served(p3), "\(a.port)")
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(b.port)")
        XCTAssertEqual(proxy.log.components(separatedBy: "PAUSE: in-flight").count - 1, 1, "only pg1 paused:\n\(proxy.log)")

        // Status: the control socket and the DCS record carry PgBouncer's pools.
        XCTAssertTrue(eventually(timeout: 10) {
            let reply = (try? runCommand("/bin/sh", ["-c", "echo 'status pg2' | socat -t 3 - UNIX-CONNECT:\(dir.path)/control.sock"]))?.output ?? ""
            guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any],
                  let pool = object["pool"] as? [String: Any] else { return false }
            return pool["cl_active"] as? Int == 1 && pool["paused"] as? Bool == false && pool["total_xact_count"] as? Int ?? 0 >= 2
        }, proxy.log)
        let recorded = await eventuallyAsync {
            guard let value = try? await client.range(layout.proxyStatus("pg1")).kvs.first?.value,
                  let object = try? JSONSerialization.jsonObject(with: Data(value.utf8)) as? [String: Any] else { return false }
            return (object["pool"] as? [String: Any])?["sv_idle"] != nil && object["type"] as? String == "pgbouncer"
        }
        XCTAssertTrue(recorded, "pg1's status record in the DCS has its pool summary")
        // And /metrics its gauges, for the pgbouncer instances only.
        XCTAssertTrue(eventually(timeout: 10) { httpGet(http, "/metrics").body.contains("harp_proxy_pgbouncer_paused{instance=\"pg1\"} 0") },
                      httpGet(http, "/metrics").body)
        XCTAssertTrue(httpGet(http, "/metrics").body.contains("harp_proxy_pgbouncer_clients{instance=\"pg2\",state=\"active\"} 1"))
        XCTAssertFalse(httpGet(http, "/metrics").body.contains("harp_proxy_pgbouncer_paused{instance=\"bi\"}"))
        let listing = try runCommand(builtExecutable("harpctl"), ["-f", dir.file("config.yml"), "get", "proxies"])
        XCTAssertEqual(listing.status, 0, listing.output)
        XCTAssertTrue(listing.output.contains("Pool Mode") && listing.output.contains("transaction"), listing.output)

        // SIGTERM stops the PgBouncers with the daemon.
        let pids = ["pg1", "pg2"].compactMap { pid_t((try? String(contentsOfFile: dir.file("pgbouncer-\($0).d/pgbouncer.pid"), encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") }
        XCTAssertEqual(pids.count, 2)
        proxy.signal(SIGTERM)
        XCTAssertEqual(proxy.waitForExit(), 0)
        XCTAssertTrue(pids.allSatisfy { kill($0, 0) != 0 }, "no PgBouncer outlives harp-proxy")
    }

    func testARestartedHarpProxyAdoptsThePgBouncerItsPredecessorLeft() async throws {
        let etcd = try EtcdCluster()
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        let layout = DCSLayout(cluster: "d")
        try await client.put(layout.node("n1"), #"{"name":"n1","location":"dc1","dsn":"host=127.0.0.1 port=\#(a.port) dbname=postgres"}"#)
        try await client.put(layout.leader(location: "dc1"), #"{"name":"n1"}"#)
        let dir = TemporaryDirectory("harp-pgb")
        chmod(dir.path, 0o755)
        let users = dir.write("users.txt", "\"postgres\" \"\"\n")
        let port = freePort()
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)]}\n"
                  + "proxy:\n  name: pg1\n  location: dc1\n  type: pgbouncer\n  listen_address: 127.0.0.1\n  listen_port: \(port)\n"
                  + "  database_name: postgres\n  auth_type: trust\n  auth_file: \(users)\n")
        func start() throws -> TestProcess {
            try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")], logDirectory: dir.path)
        }
        func pgbouncerPID() -> pid_t? {
            pid_t((try? String(contentsOfFile: dir.file("pgbouncer-pg1.d/pgbouncer.pid"), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
        }
        let first = try start()
        defer { first.stop() }
        XCTAssertTrue(eventually(timeout: 20) { (try? serverPort(through: port, timeout: 3).get()) == "\(self.a.port)" }, first.log)
        let pid = try XCTUnwrap(pgbouncerPID())
        defer { kill(pid, SIGTERM) }  // PgBouncer outlives a harp-proxy killed with -9
        let held = try PGSession("host=127.0.0.1 port=\(port) dbname=postgres user=postgres sslmode=disable")
        XCTAssertEqual(try held.query("SELECT 1"), "1")

        first.killNow()
        XCTAssertEqual(kill(pid, 0), 0, "PgBouncer outlives a harp-proxy killed with -9")
        let second = try start()
        defer { second.stop() }
        // The second harp-proxy's own lines (both write to one log): the adopted PgBouncer already
        // points at the lead master, so no PAUSE, which would wait on the held session until KILL.
        func secondLines() -> String { second.log.components(separatedBy: "adopted the running PgBouncer").dropFirst().joined() }
        XCTAssertTrue(eventually(timeout: 20) { secondLines().contains("PgBouncer started on the lead master") }, second.log)
        XCTAssertFalse(secondLines().contains("PAUSE command issued"), second.log)
        XCTAssertEqual(pgbouncerPID(), pid, "the same PgBouncer, not a second one")
        XCTAssertEqual(try held.query("SELECT current_setting('port')"), "\(a.port)", "its clients kept their connections")
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0)
        XCTAssertTrue(eventually(timeout: 5) { kill(pid, 0) != 0 }, "and it is stopped with the new harp-proxy")
    }
}

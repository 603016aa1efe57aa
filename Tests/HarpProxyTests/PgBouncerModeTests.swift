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
        addTeardownBlock { await rig.stop() }
        try await rig.node("node1", location: "dc1", server: a)
        try await rig.node("node2", location: "dc1", server: b)
        try await rig.leader("dc1", "node1")
        // Clients come once PgBouncer has been pointed at node1; see README on PgBouncer starting
        // without a lead master.
        XCTAssertTrue(eventually(timeout: 20) { self.logged(rig, "now resumed on the lead master") }, logText(rig))
        return rig
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
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))

        let client = try session(port)
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")
        try client.query("BEGIN")
        try client.query("CREATE TEMP TABLE IF NOT EXISTS t(x int) ON COMMIT DROP")
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")

        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "PAUSE") }, logText(rig))
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
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        let client = try session(port)
        XCTAssertEqual(try client.query("SELECT current_setting('port')"), "\(a.port)")

        try await rig.leader("dc1", nil)
        XCTAssertTrue(eventually(timeout: 5) { self.logged(rig, "PgBouncer paused") }, logText(rig))
        let issued = ContinuousClock.now
        async let answer = client.run("SELECT current_setting('port')")
        try await Task.sleep(for: .seconds(2))
        try await rig.leader("dc1", "node1")
        let result = await answer
        let waited = ContinuousClock.now - issued
        XCTAssertEqual(try result.get(), "\(a.port)", "the query waited through the gap, then succeeded:\n\(logText(rig))")
        XCTAssertGreaterThanOrEqual(waited, .milliseconds(1900), "it was held while there was no lead master")
        XCTAssertTrue(client.isOpen)
    }

    func testServerTransferTimeoutEndsInKill() async throws {
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir, ["server_transfer_timeout": .duration(.seconds(1))])
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
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
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        let pidFile = dir.file("pgbouncer-pgb.d/pgbouncer.pid")
        let first = try XCTUnwrap(pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""))

        kill(first, SIGKILL)
        XCTAssertTrue(eventually(timeout: 10) { self.logged(rig, "PgBouncer exited") }, logText(rig))
        XCTAssertTrue(waitUntilServed(port, by: a), "back on the lead master after the restart:\n\(logText(rig))")
        let second = pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
        XCTAssertNotNil(second)
        XCTAssertNotEqual(second, first)
        XCTAssertTrue(eventually(timeout: 10) { rig.capture.all.filter { $0.message.contains("PgBouncer started paused, now resumed") }.count == 2 }, logText(rig))
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("PgBouncer exited") && $0.metadata["status"] == "killed by signal 9" }, logText(rig))
    }

    func testAnUnmanagedInstanceLeavesPgBouncerAlone() async throws {
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        try await rig.client.put(rig.layout.proxyManaged("pgb"), "false")
        let unmanaged = await eventuallyAsync { await rig.host.status().first?.plan?.managed == false }
        XCTAssertTrue(unmanaged)
        try await rig.leader("dc1", "node2")
        let planned = await rig.waitUntilRouting("pgb", to: "node2")
        XCTAssertTrue(planned)
        try await Task.sleep(for: .milliseconds(500))
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)", "unmanaged: PgBouncer still points where it did")
        XCTAssertFalse(logged(rig, "PAUSE"), "no PAUSE while unmanaged:\n\(logText(rig))")

        try await rig.client.put(rig.layout.proxyManaged("pgb"), "true")
        XCTAssertTrue(waitUntilServed(port, by: b), "managed again: it follows the lead master:\n\(logText(rig))")
    }

    func testIniInjectionThroughTheDCSFailsSafely() async throws {
        let dir = configFolder()
        let port = freePort()
        let rig = try await rig(port: port, in: dir)
        XCTAssertTrue(waitUntilServed(port, by: a), logText(rig))
        // Each value tries to end its line and start a setting or an include of its own.
        let attack = #"{"ignore_startup_parameters": "extra_float_digits\nadmin_users = mallory", "auth_query": "SELECT 1\n%include /etc/passwd", "database_name": "postgres\r\n[databases]\nevil = host=10.0.0.1", "client_tls_ca_file": "/x\u0000y", "default_pool_size": 7}"#
        try await rig.client.put(rig.layout.proxyConfig("pgb"), attack)
        let seen = await eventuallyAsync { await rig.host.status().first?.plan?.directives.integer("default_pool_size") == 7 }
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
}

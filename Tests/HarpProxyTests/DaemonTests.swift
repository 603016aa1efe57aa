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

    func start(_ dir: TemporaryDirectory, etcd: EtcdCluster) throws -> TestProcess {
        dir.write("config.yml", "cluster: {name: d}\ndcs: {driver: etcd, endpoints: [127.0.0.1:\(etcd.members[0].clientPort)], resync_interval: 1s}\n")
        return try TestProcess(name: "harp-proxy", executable: builtExecutable("harp-proxy"), arguments: ["-f", dir.file("config.yml")],
                               logDirectory: dir.path)
    }

    func testSighupAddsAndRemovesInstancesAndKeepsTheOldConfigurationOnErrors() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let (pa, pb, pc) = (freePort(), freePort(), freePort())
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", pa))
        dir.write("conf.d/b.yml", instanceFile("b", "dc2", pb))
        let proxy = try start(dir, etcd: etcd)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: pa).get()) != nil && (try? serverPort(through: pb).get()) != nil }, proxy.log)

        let onA = try openSession(through: pa, tag: "hup-a", logDirectory: dir.path)
        let onB = try openSession(through: pb, tag: "hup-b", logDirectory: dir.path)
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
        onB.killNow()
        proxy.stop()
    }

    func testSigtermClosesConnectionsAndExitsZero() async throws {
        let etcd = try await cluster()
        let dir = TemporaryDirectory()
        let port = freePort()
        dir.write("conf.d/a.yml", instanceFile("a", "dc1", port))
        let proxy = try start(dir, etcd: etcd)
        XCTAssertTrue(eventually(timeout: 10) { (try? serverPort(through: port).get()) != nil }, proxy.log)
        let session = try openSession(through: port, tag: "term", logDirectory: dir.path)
        XCTAssertTrue(waitForActivity(on: Self.pg, "term"))

        proxy.signal(SIGTERM)
        XCTAssertTrue(eventually(timeout: 10) { !proxy.isRunning })
        let status = proxy.waitForExit()
        XCTAssertEqual(status, 0, "exit status 0 after SIGTERM:\n\(proxy.log)")
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning }, "its connections were closed")
        XCTAssertFalse(canConnect(port: port))
    }
}

import Foundation
import HarpTestFixtures
import XCTest

/// The harp-proxy executable as an operator runs it.
final class HarpProxyBinaryTests: XCTestCase {
    static var binary: String { builtExecutable("harp-proxy") }

    func testCheckPrintsOneLinePerInstance() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster: {name: c}\ndcs: {driver: etcd, endpoints: [127.0.0.1:2379]}\nproxy: {name: p0, location: dc0, listen_port: 7000}\n")
        dir.write("conf.d/1.yml", "proxy: {name: p1, location: dc1, type: pgbouncer, listen_port: 7001}\n")
        dir.write("conf.d/2.yml", "proxy: {name: p2, location: dc2, listen_port: 7002}\n")
        let result = try runCommand(Self.binary, ["--check", "-f", dir.file("config.yml")])
        XCTAssertEqual(result.status, 0, result.output)
        let lines = result.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        XCTAssertTrue(lines.contains { $0.starts(with: ["p0", "dc0", "builtin"]) }, result.output)
        XCTAssertTrue(lines.contains { $0.starts(with: ["p1", "dc1", "pgbouncer"]) }, result.output)
        XCTAssertTrue(lines.contains { $0.starts(with: ["p2", "dc2", "builtin"]) }, result.output)
    }

    func testBadConfigurationExitsNonZeroWithPositions() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster: {name: c}\ndcs: {driver: etcd, endpoints: [127.0.0.1:2379]}\nproxy:\n  name: p\n  location: dc1\n  listen_port: 7\n  max_client_con: 5\n")
        // Not --check: the daemon itself must refuse to start, and open no listener.
        let result = try runCommand(Self.binary, ["-f", dir.file("config.yml")])
        XCTAssertEqual(result.status, 1, result.output)
        XCTAssertTrue(result.output.contains("config.yml:7:3: unknown key 'max_client_con' in 'proxy'; did you mean 'max_client_conn'?"), result.output)
        XCTAssertFalse(canConnect(port: 7), "no listener was opened")
    }

    func testNoInstanceIsAnError() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster: {name: c}\ndcs: {driver: etcd, endpoints: [127.0.0.1:2379]}\n")
        let result = try runCommand(Self.binary, ["--check", "-f", dir.file("config.yml")])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.output.contains("no proxy instance"), result.output)
    }

    func testVersion() throws {
        let result = try runCommand(Self.binary, ["--version"])
        XCTAssertEqual(result.status, 0)
        XCTAssertTrue(result.output.hasPrefix("0."), result.output)
    }
}

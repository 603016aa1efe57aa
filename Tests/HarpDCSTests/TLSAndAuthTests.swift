import HarpConfig
import HarpDCS
import HarpTestFixtures
import XCTest

/// etcd over TLS with certificates the `openssl` command makes, and etcd's own authentication.
final class TLSAndAuthTests: XCTestCase {
    func testTLSWithTheRightCAAndClientCertificate() async throws {
        let etcd = try EtcdCluster(tls: true, clientCertAuth: true)
        let client = EtcdClient(configuration: etcd.dcsConfiguration())
        try await client.put("/harp/t/tls", "ok")
        let read = try await client.range("/harp/t/tls")
        XCTAssertEqual(read.kvs.first?.value, "ok")

        // A session (watch included) works over TLS too.
        let session = DCSSession(configuration: etcd.dcsConfiguration(), prefix: "/harp/t/")
        session.start()
        defer { session.shutdown() }
        try await client.put("/harp/t/later", "1")
        let seen = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/t/later"]?.value == "1" }
        XCTAssertNotNil(seen)
    }

    func testTLSWithAWrongCAFailsClearly() async throws {
        let etcd = try EtcdCluster(tls: true)
        var configuration = etcd.dcsConfiguration()
        configuration.sslCAFile = etcd.certificates!.otherCAFile
        let client = EtcdClient(configuration: configuration)
        do {
            _ = try await client.range("/x")
            XCTFail("the server certificate is not signed by the configured CA")
        } catch {
            guard case .unreachable(let failures) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(failures.allSatisfy(\.isTLS), "\(error)")
            XCTAssertTrue("\(error)".contains("certificate"), "the message must say it is the certificate: \(error)")
        }
    }

    func testTLSWithoutAClientCertificateIsRefusedWhenEtcdRequiresOne() async throws {
        let etcd = try EtcdCluster(tls: true, clientCertAuth: true)
        var configuration = etcd.dcsConfiguration()
        configuration.sslCertFile = nil
        configuration.sslKeyFile = nil
        let client = EtcdClient(configuration: configuration)
        do {
            _ = try await client.range("/x")
            XCTFail("etcd requires a client certificate")
        } catch {
            guard case .unreachable = error else { return XCTFail("\(error)") }
        }
    }

    func testUsernameAndPassword() async throws {
        let etcd = try EtcdCluster()
        let admin = EtcdClient(configuration: etcd.dcsConfiguration())
        _ = try await admin.raw("/v3/auth/user/add", ["name": "root", "password": "s3cret-pw"])
        _ = try await admin.raw("/v3/auth/user/grant", ["user": "root", "role": "root"])
        _ = try await admin.raw("/v3/auth/enable", [:])

        // Without credentials: refused.
        do {
            try await admin.put("/harp/t/k", "v")
            XCTFail("auth is on")
        } catch {
            guard case .server = error else { return XCTFail("\(error)") }
        }

        var good = etcd.dcsConfiguration()
        good.username = "root"
        good.password = "s3cret-pw"
        let client = EtcdClient(configuration: good)
        try await client.put("/harp/t/k", "v")
        let read = try await client.range("/harp/t/k")
        XCTAssertEqual(read.kvs.first?.value, "v")

        let session = DCSSession(configuration: good, prefix: "/harp/t/")
        session.start()
        defer { session.shutdown() }
        try await client.put("/harp/t/watched", "w")
        let seen = await session.waitForSnapshot(timeout: .seconds(10)) { $0["/harp/t/watched"]?.value == "w" }
        XCTAssertNotNil(seen, "the watch authenticates too")

        var bad = good
        bad.password = "wrong"
        do {
            _ = try await EtcdClient(configuration: bad).range("/harp/t/k")
            XCTFail("wrong password")
        } catch {
            guard case .authentication = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("dcs.username"), "\(error)")
            XCTAssertFalse("\(error)".contains("wrong"), "the password never appears in a message: \(error)")
        }
    }
}

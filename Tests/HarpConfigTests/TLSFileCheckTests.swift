import HarpCluster
import HarpConfig
import HarpTestFixtures
import XCTest

/// dcs.ssl_* files are checked with OpenSSL when the configuration is read.
final class TLSFileCheckTests: XCTestCase {
    func config(_ dir: TemporaryDirectory, ca: String? = nil, cert: String? = nil, key: String? = nil) -> String {
        var text = "cluster: {name: c}\ndcs:\n  driver: etcd\n  ssl: on\n  endpoints: [127.0.0.1:2379]\n"
        if let ca { text += "  ssl_ca_file: \(ca)\n" }
        if let cert { text += "  ssl_cert_file: \(cert)\n" }
        if let key { text += "  ssl_key_file: \(key)\n" }
        return dir.write("config.yml", text)
    }

    func load(_ path: String) -> Result<HarpConfiguration, ConfigErrors> {
        Result { () throws(ConfigErrors) in try ConfigLoader.load(file: path, includeInstances: false, leaderSources: LeaderSources.all) }
    }

    func testGoodFilesLoad() throws {
        let dir = TemporaryDirectory()
        let certs = try TestCertificates.make(in: dir.path)
        let c = try load(config(dir, ca: certs.caFile, cert: certs.clientCertFile, key: certs.clientKeyFile)).get()
        XCTAssertTrue(c.dcs.usesTLS)
        XCTAssertEqual(c.dcs.sslCertFile, certs.clientCertFile)
        XCTAssertTrue(c.warnings.isEmpty, "\(c.warnings)")
    }

    func testUnreadableNotPEMAndMismatchedKey() throws {
        let dir = TemporaryDirectory()
        let certs = try TestCertificates.make(in: dir.path)
        let notPEM = dir.write("garbage.crt", "hello\n")
        guard case .failure(let e1) = load(config(dir, ca: dir.file("missing.crt"))) else { return XCTFail() }
        XCTAssertTrue(e1.errors.contains { $0.location.line == 6 && $0.message.contains("cannot read 'dcs.ssl_ca_file'") }, "\(e1)")

        guard case .failure(let e2) = load(config(dir, ca: notPEM)) else { return XCTFail() }
        XCTAssertTrue(e2.errors.contains { $0.location.line == 6 && $0.message.contains("holds no PEM certificate") }, "\(e2)")

        // The server's key with the client's certificate.
        guard case .failure(let e3) = load(config(dir, cert: certs.clientCertFile, key: certs.serverKeyFile)) else { return XCTFail() }
        XCTAssertTrue(e3.errors.contains { $0.location.line == 7 && $0.message.contains("does not match the certificate") }, "\(e3)")

        guard case .failure(let e4) = load(config(dir, cert: certs.clientCertFile)) else { return XCTFail() }
        XCTAssertTrue(e4.errors.contains { $0.message.contains("give both or neither") }, "\(e4)")
    }

    func testACertificateCloseToExpiryIsAWarning() throws {
        let dir = TemporaryDirectory()
        let certs = try TestCertificates.make(in: dir.path, clientDays: 10)
        let c = try load(config(dir, ca: certs.caFile, cert: certs.clientCertFile, key: certs.clientKeyFile)).get()
        XCTAssertEqual(c.warnings.count, 1)
        XCTAssertTrue(c.warnings[0].message.contains("expires in 9 days") || c.warnings[0].message.contains("expires in 10 days"), "\(c.warnings)")
        XCTAssertEqual(c.warnings[0].location.line, 7, "the ssl_cert_file line")
    }

    func testTLSFilesWithoutTLSEndpoints() throws {
        let dir = TemporaryDirectory()
        let certs = try TestCertificates.make(in: dir.path)
        let path = dir.write("config.yml", "cluster: {name: c}\ndcs:\n  driver: etcd\n  endpoints: [http://127.0.0.1:2379]\n  ssl_ca_file: \(certs.caFile)\n")
        guard case .failure(let e) = load(path) else { return XCTFail() }
        XCTAssertTrue(e.errors.contains { $0.message.contains("no endpoint uses TLS") }, "\(e)")
    }
}

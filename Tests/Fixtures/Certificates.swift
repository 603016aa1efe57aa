import Foundation

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made by the
/// `openssl` command at test time; plus a second, unrelated CA to prove that verification bites.
public struct TestCertificates: Sendable {
    public let caFile: String
    public let serverCertFile: String
    public let serverKeyFile: String
    public let clientCertFile: String
    public let clientKeyFile: String
    public let otherCAFile: String

    public static func make(in directory: String, clientDays: Int = 365) throws -> TestCertificates {
        let d = directory
        func openssl(_ args: [String]) throws {
            let result = try runCommand("/usr/bin/openssl", args)
            guard result.status == 0 else { throw FixtureError("openssl \(args.first ?? "") failed: \(result.output)") }
        }
        let ext = "\(d)/san.ext"
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n".write(toFile: ext, atomically: true, encoding: .utf8)
        for ca in ["ca", "other-ca"] {
            try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/\(ca).key", "-out", "\(d)/\(ca).crt",
                         "-days", "365", "-subj", "/CN=harp test \(ca)"])
        }
        for (name, days) in [("server", 365), ("client", clientDays)] {
            try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr",
                         "-subj", "/CN=\(name == "server" ? "127.0.0.1" : "root")"])
            try openssl(["x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/ca.crt", "-CAkey", "\(d)/ca.key",
                         "-CAcreateserial", "-out", "\(d)/\(name).crt", "-days", "\(days)", "-extfile", ext])
        }
        return TestCertificates(caFile: "\(d)/ca.crt", serverCertFile: "\(d)/server.crt", serverKeyFile: "\(d)/server.key",
                                clientCertFile: "\(d)/client.crt", clientKeyFile: "\(d)/client.key", otherCAFile: "\(d)/other-ca.crt")
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

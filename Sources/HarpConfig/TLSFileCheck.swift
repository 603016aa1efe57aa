import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// Checks TLS files with OpenSSL when the configuration is read, so that a wrong path, a file that
/// is not PEM, or a key that belongs to another certificate is a config error with its line.
struct TLSFileCheck {
    /// A certificate closer than this to its expiry earns a WARNING at start.
    static let expiryWarningDays = 30

    func certificateBundle(_ path: String, key: String, at location: SourceLocation,
                           errors: inout [ConfigError], warnings: inout [ConfigWarning]) {
        guard readable(path, key: key, at: location, errors: &errors) else { return }
        let certificates = readCertificates(path)
        defer { certificates.forEach { X509_free($0) } }
        guard !certificates.isEmpty else {
            errors.append(ConfigError(location, "'\(key)' \(path) holds no PEM certificate: \(opensslError())"))
            return
        }
        // A system bundle holds hundreds; expiry of one of those is not this operator's business.
        if certificates.count <= 10 {
            for certificate in certificates { expiry(certificate, key: key, path: path, at: location, fatal: false, errors: &errors, warnings: &warnings) }
        }
    }

    func certificateAndKey(cert certPath: String, certAt: SourceLocation, key keyPath: String, keyAt: SourceLocation,
                           names: (cert: String, key: String) = ("dcs.ssl_cert_file", "dcs.ssl_key_file"),
                           errors: inout [ConfigError], warnings: inout [ConfigWarning]) {
        let certOK = readable(certPath, key: names.cert, at: certAt, errors: &errors)
        let keyOK = readable(keyPath, key: names.key, at: keyAt, errors: &errors)
        guard certOK, keyOK else { return }
        let certificates = readCertificates(certPath)
        defer { certificates.forEach { X509_free($0) } }
        guard let certificate = certificates.first else {
            errors.append(ConfigError(certAt, "'\(names.cert)' \(certPath) holds no PEM certificate: \(opensslError())"))
            return
        }
        guard let privateKey = readPrivateKey(keyPath) else {
            errors.append(ConfigError(keyAt, "'\(names.key)' \(keyPath) holds no unencrypted PEM private key: \(opensslError())"))
            return
        }
        defer { EVP_PKEY_free(privateKey) }
        if X509_check_private_key(certificate, privateKey) != 1 {
            ERR_clear_error()
            errors.append(ConfigError(keyAt, "'\(names.key)' \(keyPath) does not match the certificate in '\(names.cert)' \(certPath)"))
        }
        expiry(certificate, key: names.cert, path: certPath, at: certAt, fatal: true, errors: &errors, warnings: &warnings)
    }

    private func readable(_ path: String, key: String, at location: SourceLocation, errors: inout [ConfigError]) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            errors.append(ConfigError(location, "cannot read '\(key)' \(path): \(String(cString: strerror(errno)))"))
            return false
        }
        close(fd)
        return true
    }

    private func readCertificates(_ path: String) -> [OpaquePointer] {
        guard let bio = BIO_new_file(path, "r") else { return [] }
        defer { BIO_free(bio) }
        var result: [OpaquePointer] = []
        while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) { result.append(certificate) }
        if !result.isEmpty { ERR_clear_error() }  // the loop ends on "no start line", which is not an error
        return result
    }

    private func readPrivateKey(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        // Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
        return PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
    }

    private func expiry(_ certificate: OpaquePointer, key: String, path: String, at location: SourceLocation, fatal: Bool,
                        errors: inout [ConfigError], warnings: inout [ConfigWarning]) {
        guard let notAfter = X509_get0_notAfter(certificate) else { return }
        var days: Int32 = 0, seconds: Int32 = 0
        guard ASN1_TIME_diff(&days, &seconds, nil, notAfter) == 1 else { return }
        let subject = X509_get_subject_name(certificate).map { name -> String in
            var buffer = [CChar](repeating: 0, count: 256)
            X509_NAME_oneline(name, &buffer, Int32(buffer.count))
            return string(fromCBuffer: buffer)
        } ?? "?"
        if days < 0 || (days == 0 && seconds <= 0) {
            let message = "certificate \(subject) in '\(key)' \(path) has expired"
            if fatal { errors.append(ConfigError(location, message)) }
            else { warnings.append(ConfigWarning(location: location, message: message)) }
        } else if days < Self.expiryWarningDays {
            warnings.append(ConfigWarning(location: location, message: "certificate \(subject) in '\(key)' \(path) expires in \(days) days"))
        }
    }

    private func opensslError() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "no PEM data found" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return string(fromCBuffer: buffer)
    }
}

func string(fromCBuffer buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

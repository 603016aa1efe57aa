import HarpCluster
import HarpConfig

/// Where one pgbouncer instance keeps its files: the ini and auth file beside config.yml (as HARP
/// does), and a private folder (0700) for PgBouncer's Unix socket and pidfile.
public struct PgBouncerPaths: Sendable, Equatable {
    public let ini: String
    public let authFile: String
    /// The private folder: the admin console's socket and the pidfile live here.
    public let runDirectory: String
    public let pidFile: String

    public init(configDirectory: String, instance: String) {
        let base = (configDirectory.isEmpty ? "." : configDirectory) + "/pgbouncer-\(instance)"
        ini = base + ".ini"
        authFile = base + ".users.txt"
        runDirectory = base + ".d"
        pidFile = runDirectory + "/pgbouncer.pid"
    }

    /// PgBouncer's Unix socket for a port: `<run dir>/.s.PGSQL.<port>`.
    public func socket(port: Int) -> String { "\(runDirectory)/.s.PGSQL.\(port)" }
}

/// A pgbouncer instance's settings that cannot be turned into a safe PgBouncer configuration.
public struct PgBouncerSettingsError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// The generated `pgbouncer-<instance>.ini` and auth file, from the instance's effective
/// directives and the lead master to point at.
///
/// PgBouncer's ini has no quoting: a value runs to the end of its line. So every value that
/// reaches the file is checked here, not escaped: directives can hold no control character (the
/// directive parser refuses them, so no newline can start a `%include` or a new setting), and the
/// `[databases]` entry, which PgBouncer splits on spaces and `=`, takes only plain words.
public struct PgBouncerSettings: Sendable, Equatable {
    /// The admin console's user, as HARP names it.
    public static let adminUser = "pgbouncer"

    public let instance: String
    public let directives: EffectiveDirectives
    public let paths: PgBouncerPaths
    /// The Unix user PgBouncer switches to (`user=`) when harp-proxy runs as root.
    public let runUser: String?

    public init(instance: String, directives: EffectiveDirectives, paths: PgBouncerPaths, runUser: String?) {
        self.instance = instance
        self.directives = directives
        self.paths = paths
        self.runUser = runUser
    }

    public var listenAddress: String { directives.listenAddress }
    public var listenPort: Int { directives.listenPort }
    public var databaseName: String? { directives[DirectiveKeys.databaseName] }

    /// Settings PgBouncer reads only at start: a change means restarting it.
    public func needsRestart(from old: PgBouncerSettings) -> Bool {
        listenAddress != old.listenAddress || listenPort != old.listenPort || runUser != old.runUser || paths != old.paths
    }

    /// Checks what PgBouncer will be given; the message names the directive and what it takes.
    public func validate(runningAsRoot: Bool) -> PgBouncerSettingsError? {
        if directives[DirectiveKeys.routeTo] == RouteTo.replica.rawValue {
            return PgBouncerSettingsError(message: "'route_to: replica' is for builtin instances: PgBouncer 1.18 sends a database to one host and cannot spread clients across replicas (set type: builtin for a replica instance)")
        }
        guard let name = databaseName else {
            return PgBouncerSettingsError(message: "pgbouncer mode needs 'database_name' (the database clients ask for, or * for any)")
        }
        if name != "*" && !Self.isWord(name) {
            return PgBouncerSettingsError(message: "invalid 'database_name' '\(name)': expected * or letters, digits, '_', '-' and '.'")
        }
        if name == "pgbouncer" { return PgBouncerSettingsError(message: "'database_name' cannot be 'pgbouncer': PgBouncer reserves it for its admin console") }
        if let user = directives[DirectiveKeys.authUser] {
            if user == Self.adminUser {
                return PgBouncerSettingsError(message: "'auth_user' cannot be 'pgbouncer': that is the admin console's user, whose password harp-proxy generates")
            }
            if !Self.isWord(user) { return PgBouncerSettingsError(message: "invalid 'auth_user' '\(user)': expected letters, digits, '_', '-' and '.'") }
        }
        let authType = directives.authType
        if authType == "hba" {
            return PgBouncerSettingsError(message: "'auth_type: hba' needs PgBouncer's auth_hba_file, which HARP has no directive for: use md5, scram-sha-256, cert, pam, plain, trust or any")
        }
        if runningAsRoot && (authType == "cert" || authType == "pam") {
            return PgBouncerSettingsError(message: "'auth_type: \(authType)': harp-proxy reaches the admin console by peer identity then, so it must run as the PgBouncer user (for example systemd's User=postgres), not as root")
        }
        let socket = paths.socket(port: listenPort)
        if socket.utf8.count >= 108 {
            return PgBouncerSettingsError(message: "PgBouncer's socket path '\(socket)' is longer than a Unix socket allows (107 bytes): move config.yml to a shorter folder")
        }
        return nil
    }

    /// The `[databases]` entry: the client-facing name pointed at the lead master, or, with no
    /// lead master, at the private folder where nothing listens (PgBouncer is paused then anyway).
    public func databaseEntry(target: LeaderTarget?) -> String {
        let name = databaseName ?? "*"
        var parts: [String]
        switch target?.address {
        case .tcp(let host, let port): parts = ["host=\(host)", "port=\(port)"]
        case .unixSocket(let directory, let port): parts = ["host=\(directory)", "port=\(port)"]
        case nil: parts = ["host=\(paths.runDirectory)", "port=1"]
        }
        // A named entry goes to the leader's own database, if its DSN names one; `*` keeps the
        // name each client asks for.
        if name != "*", let db = target?.database ?? databaseName { parts.append("dbname=\(db)") }
        return "\(name) = " + parts.joined(separator: " ")
    }

    /// Checks the lead master's address and database before they reach `[databases]`.
    public static func validate(target: LeaderTarget) -> PgBouncerSettingsError? {
        let host: String
        switch target.address {
        case .tcp(let h, _): host = h
        case .unixSocket(let d, _): host = d
        }
        guard host.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-:/".unicodeScalars.contains($0)) }) else {
            return PgBouncerSettingsError(message: "lead master \(target.name): host '\(host)' has characters PgBouncer's [databases] cannot take safely")
        }
        if let db = target.database, !isWord(db) {
            return PgBouncerSettingsError(message: "lead master \(target.name): dbname '\(db)' has characters PgBouncer's [databases] cannot take safely")
        }
        return nil
    }

    /// The whole ini file.
    public func ini(target: LeaderTarget?) -> String {
        var lines = [
            "; Generated by harp-proxy for the proxy instance '\(instance)'.",
            "; Do not edit: harp-proxy rewrites this file at every start and on every change.",
            "",
            "[databases]",
            databaseEntry(target: target),
            "",
            "[pgbouncer]",
            "listen_addr = \(listenAddress)",
            "listen_port = \(listenPort)",
            "unix_socket_dir = \(paths.runDirectory)",
            "unix_socket_mode = 0700",
            "pidfile = \(paths.pidFile)",
            "auth_file = \(paths.authFile)",
            "admin_users = \(Self.adminUser)",
            "pool_mode = \(directives.poolMode.rawValue)",
            "max_client_conn = \(directives.maxClientConn)",
            "default_pool_size = \(directives.defaultPoolSize)",
            "auth_type = \(directives.authType)",
        ]
        if let runUser { lines.append("user = \(runUser)") }
        // The rest are passed as given when set; all are free of control characters.
        for name in ["auth_user", "auth_query", "ignore_startup_parameters",
                     "client_tls_sslmode", "client_tls_ca_file", "client_tls_cert_file", "client_tls_key_file", "client_tls_protocols",
                     "server_tls_sslmode", "server_tls_ca_file", "server_tls_cert_file", "server_tls_key_file", "server_tls_protocols"] {
            if let value = directives.string(named: name) { lines.append("\(name) = \(value)") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The auth file: the admin console's line, then the user lines of the `auth_file` directive's
    /// file (HARP adds the admin user to that list; harp-proxy leaves the original untouched).
    public static func authFile(adminPassword: String, userList: String?) -> String {
        var lines = ["; Generated by harp-proxy. Do not edit: it is rewritten at every start and on every change.",
                     "\"\(adminUser)\" \"\(adminPassword)\""]
        for line in (userList ?? "").split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            // Only well-formed user lines are copied, and never one for the admin user.
            guard trimmed.hasPrefix("\""), !trimmed.hasPrefix("\"\(adminUser)\""), trimmed.filter({ $0 == "\"" }).count >= 4 else { continue }
            lines.append(String(trimmed))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func isWord(_ s: String) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_-.".unicodeScalars.contains($0)) }
    }
}

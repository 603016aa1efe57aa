/// Everything `config.yml` and `conf.d/` say, checked. Plain values: nothing here talks to anything.
public struct HarpConfiguration: Sendable {
    /// The config.yml this came from, as given on the command line.
    public var file: String
    public var clusterName: String
    /// The location config.yml names: its top-level `location` (every instance's that does not
    /// set its own, as in HARP's overview), else its `proxy` stanza's. harpctl's default location.
    public var location: String? = nil
    public var dcs: DCSConfiguration
    /// Where each location's lead master comes from (`dcs.leader_source`).
    public var leaderSource = LeaderSourceSetting.harp
    public var control: ControlConfiguration
    public var http: HTTPConfiguration
    public var logLevel: LogLevel
    /// `logfmt` (the default) or `json`: one object per line.
    public var logFormat: LogFormat
    /// The folder whose `*.yml`/`*.yaml` files each add one instance.
    public var includeDirectory: String
    /// In the order they were defined: config.yml's `proxy` stanza first, then conf.d by file name.
    public var instances: [InstanceConfiguration]
    /// Worth a WARNING at start, not an error (a certificate close to expiry).
    public var warnings: [ConfigWarning]
}

public enum LogFormat: String, Sendable, CaseIterable {
    case logfmt, json
}

public enum LogLevel: String, Sendable, CaseIterable, Comparable {
    case debug = "DEBUG", info = "INFO", warning = "WARNING", error = "ERROR", critical = "CRITICAL"

    public static func < (a: LogLevel, b: LogLevel) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// One etcd endpoint. Without a scheme, `dcs.ssl` decides between http and https.
public struct DCSEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int

    public init(tls: Bool, host: String, port: Int) {
        self.tls = tls
        self.host = host
        self.port = port
    }

    public var url: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(tls ? "https" : "http")://\(h):\(port)"
    }

    public var description: String { url }

    /// `host:port`, `host` (port 2379), `[::1]:2379`, `http://host:port`, `https://host:port`.
    public static func parse(_ text: String, defaultTLS: Bool) -> DCSEndpoint? {
        var rest = Substring(text.trimmingSpaces)
        var tls = defaultTLS
        if rest.lowercased().hasPrefix("https://") { tls = true; rest = rest.dropFirst(8) }
        else if rest.lowercased().hasPrefix("http://") { tls = false; rest = rest.dropFirst(7) }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        var host: Substring
        var port = 2379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else { return nil }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let p = Int(rest[rest.index(after: colon)...]) else { return nil }
            port = p
        } else {
            host = rest
        }
        guard !host.isEmpty, (1...65535).contains(port),
              host.allSatisfy({ $0.isLetter || $0.isNumber || ".-_:".contains($0) }) else { return nil }
        return DCSEndpoint(tls: tls, host: String(host), port: port)
    }
}

public struct DCSConfiguration: Sendable, Equatable, CustomStringConvertible {
    public var endpoints: [DCSEndpoint]
    /// Bound on each request to one endpoint, and on connecting the watch.
    public var requestTimeout: Duration = .milliseconds(250)
    /// How often the whole prefix is re-read to repair anything the watch missed.
    public var resyncInterval: Duration = .seconds(5)
    public var sslCAFile: String?
    public var sslCertFile: String?
    public var sslKeyFile: String?
    public var username: String?
    /// Never printed: `description` leaves it out.
    public var password: String?

    public init(endpoints: [DCSEndpoint]) { self.endpoints = endpoints }

    public var usesTLS: Bool { endpoints.contains(where: \.tls) }

    public var description: String {
        "etcd \(endpoints.map(\.url).joined(separator: ",")) timeout=\(formatDuration(requestTimeout))"
            + (username.map { " user=\($0)" } ?? "")
    }
}

public struct ControlConfiguration: Sendable {
    public var socketPath: String = "/run/harp-proxy/control.sock"
    /// File mode of the socket, 0660 unless `control.mode` says otherwise.
    public var mode: Int = 0o660
    public var group: String?
}

/// HARP's `http` stanza: health and metrics endpoints.
public struct HTTPConfiguration: Sendable {
    public var enable = false
    public var host = "0.0.0.0"
    public var port = 8080
    public var secure = false
    public var certFile: String?
    public var keyFile: String?
    public var probeTimeout: Duration = .seconds(10)
}

/// Where an instance's location was given.
public enum LocationSource: String, Sendable {
    /// `proxy.location` in the instance's own stanza.
    case stanza
    /// The top-level `location` of config.yml.
    case topLevel
    /// Nowhere: the instance follows the only location the DCS holds.
    case dcs
}

/// One proxy instance: a `proxy:` stanza in config.yml or in a conf.d file.
public struct InstanceConfiguration: Sendable {
    public var name: String
    /// The location whose lead master the instance follows; nil when no file says, and the
    /// instance takes the only location the DCS holds (HARP's minimal example has none).
    public private(set) var location: String?
    /// Where `location` was given; set with it, never apart.
    public private(set) var locationSource: LocationSource
    public var logLevel: LogLevel?
    public var pgbouncerBinDir: String?
    /// The folder of config.yml: pgbouncer mode writes its ini and auth file there, as HARP does.
    public var configDirectory = "."
    /// A DSN the readiness probe connects through (TPA's `proxy.endpoint`); by default the
    /// instance's own listener with libpq's default user.
    public var endpoint: String?
    /// Directives written in the stanza: local defaults that the DCS overrides.
    public var directives: DirectiveSet
    /// Where the stanza is, for messages about this instance.
    public var source: SourceLocation

    public init(name: String, location: String?, directives: DirectiveSet = DirectiveSet(), source: SourceLocation) {
        self.name = name
        self.location = location
        locationSource = location == nil ? .dcs : .stanza
        self.directives = directives
        self.source = source
    }

    /// Same instance settings, wherever they were written (the file position is ignored).
    public func sameSettings(as other: InstanceConfiguration) -> Bool {
        name == other.name && location == other.location && logLevel == other.logLevel
            && pgbouncerBinDir == other.pgbouncerBinDir && configDirectory == other.configDirectory && endpoint == other.endpoint && directives == other.directives
    }

    /// Sets the location from config.yml's top-level `location`.
    public mutating func inheritLocation(_ location: String) {
        self.location = location
        locationSource = .topLevel
    }

    /// The listener this instance will use if the DCS says nothing else.
    public var localListen: (address: String, port: Int) {
        var address = "0.0.0.0", port = 6432
        if case .string(let a) = directives["listen_address"] { address = a }
        if case .integer(let p) = directives["listen_port"] { port = p }
        return (address, port)
    }

    /// The listener when the stanza itself sets `listen_port` (the address set there too, or its
    /// default); nil when the port is left to the DCS or the default.
    public var fixedListen: (address: String, port: Int)? {
        directives["listen_port"] == nil ? nil : localListen
    }
}

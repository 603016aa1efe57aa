#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads `config.yml` and the conf.d folder beside it into a checked `HarpConfiguration`.
/// Every problem found is reported, each as `FILE:LINE:COLUMN: message`.
public enum ConfigLoader {
    public static let defaultPath = "/etc/harp/config.yml"

    /// - Parameters:
    ///   - includeInstances: harpctl reads only the cluster and DCS stanzas; the daemon also
    ///     reads the proxy stanza and conf.d, and needs at least one instance.
    ///   - leaderSources: the leader sources `dcs.leader_source` may name, with their keys
    ///     (HarpCluster's `LeaderSources.all`).
    public static func load(file: String, includeInstances: Bool = true,
                            leaderSources: [any LeaderSourceKind.Type]) throws(ConfigErrors) -> HarpConfiguration {
        var errors: [ConfigError] = []
        var warnings: [ConfigWarning] = []
        let top = SourceLocation(file: file, line: 1, column: 1)

        let rootNode: YAMLNode
        do throws(ConfigError) {
            guard let node = try YAMLReader.parse(try readTextFile(file), file: file) else {
                throw ConfigError(top, "the file is empty: expected a mapping with 'cluster' and 'dcs' stanzas")
            }
            rootNode = node
        } catch {
            throw ConfigErrors([error])
        }

        let directory = parentDirectory(of: file)
        let root = Section(rootNode, name: "the top level", known: rootKeys, errors: &errors)

        // cluster
        var clusterName = ""
        if let cluster = root.section("cluster", known: ["name"], required: true, requiredKeys: ["name"], errors: &errors) {
            clusterName = cluster.identifier("name", required: true, errors: &errors) ?? ""
        }

        // dcs
        var dcs = DCSConfiguration(endpoints: [])
        var leaderSource = LeaderSourceSetting.harp
        let sourceKeys = leaderSources.flatMap { $0.options.map(\.key) }
        if let section = root.section("dcs", known: dcsKeys + sourceKeys, required: true, requiredKeys: ["driver", "endpoints"], errors: &errors) {
            dcs = readDCS(section, directory: directory, errors: &errors, warnings: &warnings)
            leaderSource = readLeaderSource(section, sources: leaderSources, errors: &errors)
        }

        // control
        var control = ControlConfiguration()
        if let section = root.section("control", known: ["socket", "mode", "group"], required: false, errors: &errors) {
            if let path = section.string("socket", errors: &errors) { control.socketPath = resolve(path, in: directory) }
            if let (text, location) = section.scalar("mode", errors: &errors) {
                if let mode = Int(text, radix: 8), (0...0o777).contains(mode) { control.mode = mode }
                else { errors.append(ConfigError(location, "invalid value '\(text)' for 'control.mode': expected an octal file mode such as 0660")) }
            }
            control.group = section.string("group", errors: &errors)
        }

        // http
        var http = HTTPConfiguration()
        if let section = root.section("http", known: ["enable", "host", "port", "secure", "cert_file", "key_file", "probes"], required: false, errors: &errors) {
            http.enable = section.boolean("enable", errors: &errors) ?? false
            http.host = section.string("host", errors: &errors) ?? http.host
            http.port = section.integer("port", range: 1...65535, errors: &errors) ?? http.port
            http.secure = section.boolean("secure", errors: &errors) ?? false
            http.certFile = section.string("cert_file", errors: &errors).map { resolve($0, in: directory) }
            http.keyFile = section.string("key_file", errors: &errors).map { resolve($0, in: directory) }
            if let probes = section.section("probes", known: ["timeout"], required: false, errors: &errors) {
                http.probeTimeout = probes.duration("timeout", unit: .seconds, errors: &errors) ?? http.probeTimeout
            }
            if http.secure, let entry = section.entries["secure"] {
                // HTTPS: both files, checked now like the DCS's.
                if let cert = http.certFile, let key = http.keyFile, let certAt = section.entries["cert_file"]?.value.location,
                   let keyAt = section.entries["key_file"]?.value.location {
                    TLSFileCheck().certificateAndKey(cert: cert, certAt: certAt, key: key, keyAt: keyAt, names: ("http.cert_file", "http.key_file"),
                                                     errors: &errors, warnings: &warnings)
                } else {
                    errors.append(ConfigError(entry.value.location, "'http.secure' needs 'http.cert_file' and 'http.key_file' (PEM certificate and unencrypted key)"))
                }
            }
        }

        // log_level
        var logLevel = LogLevel.info
        if let level = root.logLevel("log_level", errors: &errors) { logLevel = level }
        var logFormat = LogFormat.logfmt
        if let (text, location) = root.scalar("log_format", errors: &errors) {
            if let format = LogFormat(rawValue: text.lowercased()) { logFormat = format }
            else { errors.append(ConfigError(location, "invalid value '\(text)' for 'log_format': expected logfmt or json")) }
        }

        // include_dir and instances
        var includeDirectory = resolve("conf.d", in: directory)
        var includeGiven: SourceLocation?
        if let path = root.string("include_dir", errors: &errors) {
            includeDirectory = resolve(path, in: directory)
            includeGiven = root.entries["include_dir"]?.value.location
        }

        // HARP's overview: a top-level `location` is every instance's unless its stanza sets one.
        let location = root.identifier("location", errors: &errors)

        var instances: [InstanceConfiguration] = []
        if includeInstances {
            if let entry = root.entries["proxy"] {
                if let instance = readInstance(entry, errors: &errors, warnings: &warnings) { instances.append(instance) }
            }
            for path in instanceFiles(in: includeDirectory, given: includeGiven, errors: &errors) {
                if let instance = readInstanceFile(path, errors: &errors, warnings: &warnings) { instances.append(instance) }
            }
            checkInstances(instances, file: file, errors: &errors)
            let absolute = realpath(directory, nil).map { p in defer { free(p) }; return String(cString: p) } ?? directory
            for i in instances.indices {
                instances[i].configDirectory = absolute
                if instances[i].location == nil, let location { instances[i].inheritLocation(location) }
            }
        }

        // What harpctl takes as "the location from config": the top-level one, else config.yml's
        // own proxy stanza's (read here without checking the rest of that stanza).
        var configLocation = location
        if configLocation == nil, case .mapping(let pairs, _)? = root.entries["proxy"]?.value {
            configLocation = pairs.first { $0.key.scalarText == "location" }?.value.scalarText
        }

        if !errors.isEmpty { throw ConfigErrors(errors) }
        return HarpConfiguration(file: file, clusterName: clusterName, location: configLocation, dcs: dcs, leaderSource: leaderSource,
                                 control: control, http: http,
                                 logLevel: logLevel, logFormat: logFormat, includeDirectory: includeDirectory, instances: instances,
                                 warnings: warnings)
    }

    // `manager` belongs to harp-manager, which reads the same file in HARP; it is accepted and ignored.
    static let rootKeys = ["cluster", "dcs", "proxy", "location", "control", "http", "log_level", "log_format", "include_dir", "manager"]
    static let dcsKeys = ["driver", "endpoints", "request_timeout", "resync_interval", "ssl", "ssl_ca_file",
                          "ssl_cert_file", "ssl_key_file", "username", "password", "leader_source"]

    /// `dcs.leader_source` (one of `sources`, `harp` when absent) and the keys of that source; a
    /// key of another source is an error that names the source it needs.
    private static func readLeaderSource(_ section: Section, sources: [any LeaderSourceKind.Type], errors: inout [ConfigError]) -> LeaderSourceSetting {
        var chosen: (any LeaderSourceKind.Type)? = sources.first { $0.name == LeaderSourceSetting.harp.name }
        if let (text, location) = section.scalar("leader_source", errors: &errors) {
            if let source = sources.first(where: { $0.name == text.lowercased() }) { chosen = source }
            else {
                let names = sources.map { $0.name }
                let expected = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
                errors.append(ConfigError(location, "invalid value '\(text)' for 'dcs.leader_source': expected \(expected)"))
            }
        }
        for source in sources where source.name != chosen?.name {
            for option in source.options {
                if let entry = section.entries[option.key] {
                    errors.append(ConfigError(entry.key.location, "'dcs.\(option.key)' needs 'dcs.leader_source: \(source.name)'"))
                }
            }
        }
        guard let chosen else { return .harp }
        var setting = LeaderSourceSetting(name: chosen.name)
        for option in chosen.options {
            setting.options[option.key] = option.defaultValue
            if option.secret { setting.secretKeys.insert(option.key) }
            guard let (text, location) = section.scalar(option.key, errors: &errors) else { continue }
            switch option.check(text) {
            case .success(let value): setting.options[option.key] = value
            case .failure(let problem):
                let value = option.secret ? "value" : "value '\(text)'"
                errors.append(ConfigError(location, "invalid \(value) for 'dcs.\(option.key)': \(problem.reason ?? "expected \(option.expected)")"))
            }
        }
        return setting
    }
    static let instanceKeys = ["name", "location", "log_level", "pgbouncer_bin_dir", "endpoint"]

    private static func readDCS(_ section: Section, directory: String, errors: inout [ConfigError],
                                warnings: inout [ConfigWarning]) -> DCSConfiguration {
        var dcs = DCSConfiguration(endpoints: [])
        if let (driver, location) = section.scalar("driver", required: true, errors: &errors) {
            switch driver.lowercased() {
            case "etcd": break
            case "bdr": errors.append(ConfigError(location, "dcs.driver 'bdr' is not supported by this build: use 'etcd'"))
            default: errors.append(ConfigError(location, "invalid value '\(driver)' for 'dcs.driver': expected etcd"))
            }
        }
        let sslEntry = section.entries["ssl"]
        let ssl = section.boolean("ssl", errors: &errors) ?? false
        if let entry = section.entries["endpoints"] {
            let items: [YAMLNode]
            switch entry.value {
            case .sequence(let list, _): items = list
            case .scalar(let s, _, let l) where !entry.value.isNull:
                // A single endpoint, or a comma-separated list, written as one string.
                items = s.split(separator: ",").map { .scalar(String($0), plain: true, l) }
            default:
                items = []
                errors.append(ConfigError(entry.value.location, "'dcs.endpoints' must be a list of host:port or http(s)://host:port"))
            }
            for item in items {
                guard case .scalar(let text, _, let location) = item, !item.isNull else {
                    errors.append(ConfigError(item.location, "each entry of 'dcs.endpoints' must be host:port or http(s)://host:port, not \(item.kindName)"))
                    continue
                }
                guard let endpoint = DCSEndpoint.parse(text, defaultTLS: ssl) else {
                    errors.append(ConfigError(location, "invalid endpoint '\(text)' in 'dcs.endpoints': expected host:port or http(s)://host:port"))
                    continue
                }
                if ssl && !endpoint.tls, let sslEntry {
                    errors.append(ConfigError(location, "endpoint '\(text)' uses http:// but dcs.ssl is on (line \(sslEntry.key.location.line)): use https:// or drop the scheme"))
                    continue
                }
                dcs.endpoints.append(endpoint)
            }
            if items.isEmpty && entry.value.isNull == false, case .sequence = entry.value {
                errors.append(ConfigError(entry.value.location, "'dcs.endpoints' is empty: give at least one etcd endpoint"))
            }
        } else {
            errors.append(ConfigError(section.location, "missing required key 'dcs.endpoints': a list of etcd endpoints (host:port)"))
        }
        dcs.requestTimeout = section.duration("request_timeout", unit: .milliseconds, errors: &errors) ?? dcs.requestTimeout
        if dcs.requestTimeout < .milliseconds(10), let e = section.entries["request_timeout"] {
            errors.append(ConfigError(e.value.location, "'dcs.request_timeout' must be at least 10 ms"))
        }
        dcs.resyncInterval = section.duration("resync_interval", unit: .milliseconds, errors: &errors) ?? dcs.resyncInterval
        if dcs.resyncInterval < .milliseconds(100), let e = section.entries["resync_interval"] {
            errors.append(ConfigError(e.value.location, "'dcs.resync_interval' must be at least 100 ms"))
        }
        dcs.username = section.string("username", errors: &errors)
        dcs.password = section.string("password", errors: &errors)
        if dcs.password != nil && dcs.username == nil, let e = section.entries["password"] {
            errors.append(ConfigError(e.key.location, "'dcs.password' is set but 'dcs.username' is not"))
        }

        // TLS files: checked now with OpenSSL, so that a bad file is a config error, not a runtime surprise.
        var files: [String: (path: String, location: SourceLocation)] = [:]
        for key in ["ssl_ca_file", "ssl_cert_file", "ssl_key_file"] {
            if let path = section.string(key, errors: &errors), let entry = section.entries[key] {
                files[key] = (resolve(path, in: directory), entry.value.location)
            }
        }
        dcs.sslCAFile = files["ssl_ca_file"]?.path
        dcs.sslCertFile = files["ssl_cert_file"]?.path
        dcs.sslKeyFile = files["ssl_key_file"]?.path
        if (files["ssl_cert_file"] == nil) != (files["ssl_key_file"] == nil) {
            let given = files["ssl_cert_file"] ?? files["ssl_key_file"]!
            errors.append(ConfigError(given.location, "'dcs.ssl_cert_file' and 'dcs.ssl_key_file' go together: give both or neither"))
        }
        if !files.isEmpty && !dcs.usesTLS && !dcs.endpoints.isEmpty {
            let first = files.values.min { $0.location.line < $1.location.line }!
            errors.append(ConfigError(first.location, "TLS files are set but no endpoint uses TLS: set 'dcs.ssl: on' or use https:// endpoints"))
        }
        let check = TLSFileCheck()
        if let ca = files["ssl_ca_file"] {
            check.certificateBundle(ca.path, key: "dcs.ssl_ca_file", at: ca.location, errors: &errors, warnings: &warnings)
        }
        if let cert = files["ssl_cert_file"], let key = files["ssl_key_file"] {
            check.certificateAndKey(cert: cert.path, certAt: cert.location, key: key.path, keyAt: key.location,
                                    errors: &errors, warnings: &warnings)
        }
        return dcs
    }

    private static func readInstanceFile(_ path: String, errors: inout [ConfigError], warnings: inout [ConfigWarning]) -> InstanceConfiguration? {
        let top = SourceLocation(file: path, line: 1, column: 1)
        do throws(ConfigError) {
            guard let node = try YAMLReader.parse(try readTextFile(path), file: path) else {
                errors.append(ConfigError(top, "the file is empty: expected a 'proxy' stanza with at least 'name'"))
                return nil
            }
            let root = Section(node, name: "a conf.d file (only a 'proxy' stanza belongs here)", known: ["proxy"], errors: &errors)
            guard root.isMapping else { return nil }
            guard let entry = root.entries["proxy"] else {
                errors.append(ConfigError(top, "missing required key 'proxy': each conf.d file defines one instance in a 'proxy' stanza"))
                return nil
            }
            return readInstance(entry, errors: &errors, warnings: &warnings)
        } catch {
            errors.append(error)
            return nil
        }
    }

    private static func readInstance(_ entry: (key: YAMLNode, value: YAMLNode), errors: inout [ConfigError],
                                     warnings: inout [ConfigWarning]) -> InstanceConfiguration? {
        let node = entry.value
        if node.isNull {
            // `proxy:` with nothing under it: the key it lacks, not the YAML type of an empty value.
            errors.append(ConfigError(entry.key.location, "missing required key 'proxy.name'"))
            return nil
        }
        let section = Section(node, name: "'proxy'", known: instanceKeys + ProxyDirectives.names, errors: &errors)
        guard section.isMapping else { return nil }
        let name = section.identifier("name", required: true, errors: &errors)
        // Optional: the top-level `location`, else the only location the DCS holds (see ProxyHost).
        let location = section.identifier("location", errors: &errors)
        var directives = DirectiveSet()
        for spec in ProxyDirectives.all {
            guard let entry = section.entries[spec.name], !entry.value.isNull else { continue }
            guard case .scalar(let text, _, let l) = entry.value else {
                errors.append(ConfigError(entry.value.location, "'proxy.\(spec.name)' must be a single value (\(spec.kind.expectation)), not \(entry.value.kindName)"))
                continue
            }
            switch spec.parse(.text(text)) {
            case .success(let value): directives[spec.name] = value
            case .failure(let e): errors.append(ConfigError(l, e.description))
            }
        }
        var instance = InstanceConfiguration(name: name ?? "", location: location, directives: directives, source: section.location)
        instance.logLevel = section.logLevel("log_level", errors: &errors)
        instance.pgbouncerBinDir = section.string("pgbouncer_bin_dir", errors: &errors)
        instance.endpoint = section.string("endpoint", errors: &errors)
        if name == "global" {
            errors.append(ConfigError(section.entries["name"]!.value.location, "instance name 'global' is reserved for the directives every proxy shares"))
        }
        return name == nil ? nil : instance
    }

    private static func instanceFiles(in directory: String, given: SourceLocation?, errors: inout [ConfigError]) -> [String] {
        guard let dir = opendir(directory) else {
            let reason = String(cString: strerror(errno))
            if let given { errors.append(ConfigError(given, "cannot read include_dir '\(directory)': \(reason)")) }
            else if errno != ENOENT {
                errors.append(ConfigError(SourceLocation(file: directory, line: 1, column: 1), "cannot read the conf.d folder: \(reason)"))
            }
            return []
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if !name.hasPrefix("."), name.hasSuffix(".yml") || name.hasSuffix(".yaml") { names.append(name) }
        }
        return names.sorted().map { directory + "/" + $0 }
    }

    private static func checkInstances(_ instances: [InstanceConfiguration], file: String, errors: inout [ConfigError]) {
        var byName: [String: InstanceConfiguration] = [:]
        for instance in instances {
            if let other = byName[instance.name] {
                errors.append(ConfigError(instance.source, "duplicate instance name '\(instance.name)': already defined at \(other.source)"))
            } else {
                byName[instance.name] = instance
            }
        }
        // Only listeners fixed in the files can clash here: a port that comes from the DCS is
        // known once the DCS has been read, and the host checks it then (ListenerClaims).
        var seen: [(InstanceConfiguration, (address: String, port: Int))] = []
        for instance in instances {
            guard let mine = instance.fixedListen else { continue }
            if let (other, theirs) = seen.first(where: { listenersOverlap($0.1, mine) }) {
                errors.append(ConfigError(instance.source, "instance '\(instance.name)' listens on \(mine.address):\(mine.port), which instance '\(other.name)' (\(other.source)) already uses with \(theirs.address):\(theirs.port): give each instance its own listen_port"))
            }
            seen.append((instance, mine))
        }
    }

    public static func listenersOverlap(_ a: (address: String, port: Int), _ b: (address: String, port: Int)) -> Bool {
        guard a.port == b.port else { return false }
        let wildcard: Set<String> = ["0.0.0.0", "::", "*", ""]
        return a.address == b.address || wildcard.contains(a.address) || wildcard.contains(b.address)
    }
}

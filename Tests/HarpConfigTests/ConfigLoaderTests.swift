import HarpCluster
import HarpConfig
import HarpTestFixtures
import XCTest

/// config.yml and conf.d as a person writes them, and every way they can be wrong.
final class ConfigLoaderTests: XCTestCase {
    let minimal = """
        cluster:
          name: mycluster
        dcs:
          driver: etcd
          endpoints:
            - 127.0.0.1:2379

        """

    func load(_ dir: TemporaryDirectory, _ file: String = "config.yml") throws -> HarpConfiguration {
        try ConfigLoader.load(file: dir.file(file), leaderSources: LeaderSources.all)
    }

    /// The errors of a file that must not load.
    func errors(_ dir: TemporaryDirectory, _ file: String = "config.yml", includeInstances: Bool = true) -> [ConfigError] {
        do {
            _ = try ConfigLoader.load(file: dir.file(file), includeInstances: includeInstances, leaderSources: LeaderSources.all)
            XCTFail("expected configuration errors")
            return []
        } catch {
            return error.errors
        }
    }

    func assertError(_ errors: [ConfigError], line: Int, column: Int? = nil, file: String? = nil, contains text: String,
                     _ sourceLine: UInt = #line) {
        let match = errors.first { $0.location.line == line && $0.message.contains(text) && (column == nil || $0.location.column == column) && (file == nil || $0.location.file.hasSuffix(file!)) }
        XCTAssertNotNil(match, "no error at line \(line) containing '\(text)' in:\n\(errors.map(\.description).joined(separator: "\n"))", line: sourceLine)
    }

    // MARK: - What loads

    func testFullConfigWithThreeConfDInstances() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + """
            dcs_unused: 1
            """.replacingOccurrences(of: "dcs_unused: 1", with: """
            control:
              socket: run/control.sock
              mode: "0640"
            log_level: warning
            proxy:
              name: main
              location: dc1
              listen_address: 127.0.0.1
              listen_port: 6000
              hold_timeout: 2s
              keepalive: 10
            """))
        dir.write("conf.d/b.yml", "proxy:\n  name: b\n  location: dc2\n  listen_port: 6002\n  type: pgbouncer\n")
        dir.write("conf.d/a.yaml", "proxy:\n  name: a\n  location: dc1\n  listen_port: 6001\n  log_level: Debug\n")
        dir.write("conf.d/c.yml", "proxy:\n  name: c\n  location: dc3\n  listen_address: 127.0.0.2\n  listen_port: 6000\n")
        dir.write("conf.d/ignored.txt", "not yaml: [")
        dir.write("conf.d/.hidden.yml", "not yaml: [")

        let c = try load(dir)
        XCTAssertEqual(c.clusterName, "mycluster")
        XCTAssertEqual(c.dcs.endpoints, [DCSEndpoint(tls: false, host: "127.0.0.1", port: 2379)])
        XCTAssertEqual(c.dcs.requestTimeout, .milliseconds(250), "HARP's default")
        XCTAssertEqual(c.logLevel, .warning)
        XCTAssertEqual(c.control.socketPath, dir.path + "/run/control.sock", "relative to config.yml's folder")
        XCTAssertEqual(c.control.mode, 0o640)
        XCTAssertEqual(c.instances.map(\.name), ["main", "a", "b", "c"], "config.yml first, then conf.d by file name")
        XCTAssertEqual(c.instances.map(\.location), ["dc1", "dc1", "dc2", "dc3"])
        XCTAssertEqual(c.instances[0].directives["hold_timeout"], .duration(.seconds(2)))
        XCTAssertEqual(c.instances[0].directives["keepalive"], .duration(.seconds(10)), "keepalive's bare unit is seconds")
        XCTAssertEqual(c.instances[1].logLevel, .debug, "log levels in any case")
        XCTAssertEqual(c.instances[2].directives["type"], .string("pgbouncer"))
        XCTAssertEqual(c.instances[3].localListen.address, "127.0.0.2", "same port on another address is fine")
        XCTAssertEqual(c.instances[1].source.line, 2)
        XCTAssertTrue(c.instances[1].source.file.hasSuffix("conf.d/a.yaml"))
    }

    func testIncludeDirAndDefaults() throws {
        let dir = TemporaryDirectory()
        dir.write("etc/config.yml", minimal + "include_dir: ../instances\n")
        dir.write("instances/one.yml", "proxy:\n  name: one\n  location: dc1\n")
        let c = try ConfigLoader.load(file: dir.file("etc/config.yml"), leaderSources: LeaderSources.all)
        XCTAssertEqual(c.includeDirectory, dir.path + "/instances")
        XCTAssertEqual(c.instances.map(\.name), ["one"])
        XCTAssertEqual(c.control.socketPath, "/run/harp-proxy/control.sock")
        XCTAssertEqual(c.logLevel, .info)
        XCTAssertEqual(c.dcs.resyncInterval, .seconds(5))
        XCTAssertTrue(c.instances[0].directives.isEmpty)
        XCTAssertEqual(c.instances[0].localListen.port, 6432)
    }

    func testEndpointForms() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", """
            cluster: {name: c}
            dcs:
              driver: ETCD
              ssl: on
              endpoints: ["a.example:2379", "https://10.0.0.2:2380", "[::1]:2381", "host-only"]
              request_timeout: 1s
            """)
        let c = try ConfigLoader.load(file: dir.file("config.yml"), includeInstances: false, leaderSources: LeaderSources.all)
        XCTAssertEqual(c.dcs.endpoints.map(\.url), ["https://a.example:2379", "https://10.0.0.2:2380", "https://[::1]:2381", "https://host-only:2379"])
        XCTAssertEqual(c.dcs.requestTimeout, .seconds(1))
    }

    func testHarpctlReadsOnlyClusterAndDCS() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal)
        dir.write("conf.d/broken.yml", "proxy: [")
        let c = try ConfigLoader.load(file: dir.file("config.yml"), includeInstances: false, leaderSources: LeaderSources.all)
        XCTAssertTrue(c.instances.isEmpty)
    }

    /// `dcs.leader_source`: HARP's keys by default; Patroni's with its namespace, given or
    /// `/service`, a trailing slash dropped.
    func testTheLeaderSourceAndItsOwnKeys() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal)
        XCTAssertEqual(try ConfigLoader.load(file: dir.file("config.yml"), includeInstances: false, leaderSources: LeaderSources.all).leaderSource, .harp)
        for (extra, namespace) in [("", "/service"), ("  patroni_namespace: /pg/\n", "/pg"), ("  patroni_namespace: /a/b\n", "/a/b")] {
            dir.write("config.yml", minimal + "  leader_source: Patroni\n" + extra)
            let c = try ConfigLoader.load(file: dir.file("config.yml"), includeInstances: false, leaderSources: LeaderSources.all)
            XCTAssertEqual(c.leaderSource, LeaderSourceSetting(name: "patroni", options: ["patroni_namespace": namespace, "patroni_check_dsn": ""],
                                                               secretKeys: ["patroni_check_dsn"]))
            XCTAssertEqual((LeaderSources.make(c.leaderSource) as? PatroniLeaderSource)?.namespace, namespace)
            XCTAssertNil((LeaderSources.make(c.leaderSource) as? PatroniLeaderSource)?.checkDSN)
        }
    }

    /// `dcs.patroni_check_dsn`: libpq settings for asking a named leader itself; what is shown of
    /// the configuration (the daemon logs it at start) says only that it is set.
    func testPatronisCheckDSNIsTakenAndNeverShown() throws {
        let dir = TemporaryDirectory()
        for dsn in ["user=harp_check dbname=postgres password=s3cret sslmode=require", "'postgresql://harp_check:s3cret@/postgres?sslmode=require'"] {
            dir.write("config.yml", minimal + "  leader_source: patroni\n  patroni_check_dsn: \(dsn)\n")
            let c = try ConfigLoader.load(file: dir.file("config.yml"), includeInstances: false, leaderSources: LeaderSources.all)
            let source = LeaderSources.make(c.leaderSource) as? PatroniLeaderSource
            XCTAssertEqual(source?.checkDSN, dsn.trimmingCharacters(in: ["'"]))
            XCTAssertEqual("\(c.leaderSource)", "patroni (patroni_check_dsn set, patroni_namespace /service)")
            XCTAssertFalse("\(c.leaderSource)".contains("s3cret"))
        }
    }

    /// A check DSN that libpq would not take, that names an address (each member's conn_url
    /// gives it), or that names no user (libpq would use the OS user's name): an error at the
    /// key that does not repeat the value, which may hold a password.
    func testABadPatroniCheckDSNIsAnErrorThatDoesNotShowIt() {
        let dir = TemporaryDirectory()
        let cases = [("user=x password='s3cret", "not a libpq connection string: unterminated quoted value for 'password'"),
                     ("user=x password=s3cret host=10.0.0.1", "'host' does not belong here: harp-proxy connects to the address in each member's conn_url"),
                     ("user=x password=s3cret port=5433", "'port' does not belong here"),
                     ("'postgresql://x:s3cret@10.0.0.1/postgres'", "'host' does not belong here"),
                     ("dbname=postgres password=s3cret", "name the user (user=...): libpq's default is the OS user")]
        for (dsn, message) in cases {
            dir.write("config.yml", minimal + "  leader_source: patroni\n  patroni_check_dsn: \(dsn)\n")
            let e = errors(dir, includeInstances: false)
            assertError(e, line: 8, column: 22, contains: "invalid value for 'dcs.patroni_check_dsn': " + message)
            XCTAssertFalse("\(e)".contains("s3cret"), "\(e)")
        }
    }

    /// A source that is not known, a namespace that is not a path, and a source's key without
    /// that source: each an error at its key, naming what is expected.
    func testABadLeaderSourceOrAKeyOfAnotherSource() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "  leader_source: zookeeper\n")
        assertError(errors(dir, includeInstances: false), line: 7, column: 18, contains: "invalid value 'zookeeper' for 'dcs.leader_source': expected harp or patroni")
        dir.write("config.yml", minimal + "  leader_source: patroni\n  patroni_namespace: service\n")
        assertError(errors(dir, includeInstances: false), line: 8, column: 22, contains: "invalid value 'service' for 'dcs.patroni_namespace': expected a path such as /service")
        dir.write("config.yml", minimal + "  patroni_namespace: /service\n")
        assertError(errors(dir, includeInstances: false), line: 7, column: 3, contains: "'dcs.patroni_namespace' needs 'dcs.leader_source: patroni'")
        dir.write("config.yml", minimal + "  patroni_namepsace: /service\n")
        assertError(errors(dir, includeInstances: false), line: 7, contains: "did you mean 'patroni_namespace'?")
    }

    // MARK: - What does not load, and where it says so

    func testBadYAMLNamesLineAndColumn() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster:\n  name: x\ndcs: {driver: etcd\n")
        assertError(errors(dir), line: 4, contains: "invalid YAML")
    }

    func testWrongTypesAndValues() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", """
            cluster:
              name: [not, a, name]
            dcs:
              driver: etcd
              endpoints: {a: b}
              request_timeout: soon
              ssl: maybe
            log_level: loud
            proxy:
              name: p
              location: dc1
              listen_port: 70000
              type: haproxy
              dcs_failure_policy: panic
              max_client_conn: lots
            """)
        let e = errors(dir)
        assertError(e, line: 2, column: 9, contains: "must be a single value")
        assertError(e, line: 5, contains: "'dcs.endpoints' must be a list")
        assertError(e, line: 6, contains: "expected a duration")
        assertError(e, line: 7, contains: "expected on/off")
        assertError(e, line: 8, contains: "DEBUG, INFO, WARNING, ERROR, CRITICAL")
        let format = TemporaryDirectory()
        format.write("config.yml", minimal + "log_format: yaml\n")
        assertError(errors(format, includeInstances: false), line: 7, contains: "expected logfmt or json")
        assertError(e, line: 12, contains: "expected an integer from 1 to 65535")
        assertError(e, line: 13, contains: "expected one of builtin, pgbouncer")
        assertError(e, line: 14, contains: "expected one of fence, keep")
        assertError(e, line: 15, contains: "invalid value 'lots' for 'max_client_conn'")
    }

    func testMissingRequiredKeys() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster:\n  name:\ndcs:\n  endpoints: [x:1]\nproxy:\n  location: dc1\n")
        let e = errors(dir)
        assertError(e, line: 2, contains: "missing required key 'cluster.name'")
        assertError(e, line: 4, contains: "missing required key 'dcs.driver'")
        assertError(e, line: 6, contains: "missing required key 'proxy.name'")

        let empty = TemporaryDirectory()
        empty.write("config.yml", "# nothing\n")
        assertError(errors(empty), line: 1, contains: "the file is empty")

        let noDCS = TemporaryDirectory()
        noDCS.write("config.yml", "cluster:\n  name: x\n")
        assertError(errors(noDCS), line: 1, contains: "missing required stanza 'dcs'")
    }

    /// Each required key removed in turn, and each required stanza left empty: the error names
    /// the key, with its file, line and column.
    func testEachMissingRequiredKeyIsNamed() {
        let full = ["cluster:", "  name: c", "dcs:", "  driver: etcd", "  endpoints: [127.0.0.1:2379]", "proxy:", "  name: p", "  location: dc1"]
        let cases: [(drop: [Int], expect: [(line: Int, text: String)])] = [
            ([1], [(1, "missing required key 'cluster.name'")]),
            // A key missing from a mapping is reported where the mapping starts.
            ([3], [(4, "missing required key 'dcs.driver'")]),
            ([4], [(4, "missing required key 'dcs.endpoints'")]),
            ([6], [(7, "missing required key 'proxy.name'")]),
            ([1, 3, 4, 6, 7], [(1, "missing required key 'cluster.name'"), (2, "missing required key 'dcs.driver'"),
                               (2, "missing required key 'dcs.endpoints'"), (3, "missing required key 'proxy.name'")]),
            ([0, 1], [(1, "missing required stanza 'cluster'")]),
            ([2, 3, 4], [(1, "missing required stanza 'dcs'")]),
        ]
        for (drop, expected) in cases {
            let dir = TemporaryDirectory()
            dir.write("config.yml", full.enumerated().filter { !drop.contains($0.offset) }.map(\.element).joined(separator: "\n") + "\n")
            let e = errors(dir)
            for (line, text) in expected { assertError(e, line: line, contains: text) }
            XCTAssertFalse(e.contains { $0.message.contains("must be a mapping") }, "an empty stanza is reported by the key it lacks: \(e)")
        }
        // The same in a conf.d file.
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal)
        dir.write("conf.d/a.yml", "proxy:\n")
        assertError(errors(dir), line: 1, column: 1, file: "conf.d/a.yml", contains: "missing required key 'proxy.name'")
    }

    func testTheLocationComesFromTheStanzaTheTopLevelOrTheDCS() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "location: dca\nproxy:\n  name: p0\n")
        dir.write("conf.d/a.yml", "proxy:\n  name: a\n  location: dcb\n  listen_port: 7001\n")
        dir.write("conf.d/b.yml", "proxy:\n  name: b\n  listen_port: 7002\n")
        let c = try load(dir)
        XCTAssertEqual(c.instances.map(\.location), ["dca", "dcb", "dca"])
        XCTAssertEqual(c.instances.map(\.locationSource), [.topLevel, .stanza, .topLevel])

        let none = TemporaryDirectory()
        none.write("config.yml", minimal + "proxy:\n  name: proxy1\n")
        let n = try load(none)
        XCTAssertNil(n.instances[0].location, "HARP's minimal example: the location comes from the DCS")
        XCTAssertEqual(n.instances[0].locationSource, .dcs)
        XCTAssertEqual(n.location, nil)

        let bad = TemporaryDirectory()
        bad.write("config.yml", minimal + "location: 'no spaces'\nproxy:\n  name: p\n")
        assertError(errors(bad), line: 7, contains: "invalid value 'no spaces' for 'location'")
    }

    func testListenersThatComeFromTheDCSDoNotClashAtLoad() throws {
        // Neither file sets a port: the DCS gives each its own (HARP's way). Not an error here.
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "proxy:\n  name: p1\n  location: dc1\n")
        dir.write("conf.d/p2.yml", "proxy:\n  name: p2\n  location: dc2\n")
        XCTAssertEqual(try load(dir).instances.map(\.name), ["p1", "p2"])
        XCTAssertNil(try load(dir).instances[0].fixedListen)
        // One fixed port, the other left to the DCS: nothing known to clash either.
        dir.write("conf.d/p2.yml", "proxy:\n  name: p2\n  location: dc2\n  listen_port: 6432\n")
        XCTAssertEqual(try load(dir).instances.count, 2)
    }

    func testUnknownKeysSuggestTheClosestName() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + """
              resync_interal: 1s
            proxy:
              name: p
              location: dc1
              lsiten_port: 1
              xyzzy: 1
            contrl:
              socket: /x
            """)
        let e = errors(dir)
        assertError(e, line: 7, contains: "did you mean 'resync_interval'?")
        assertError(e, line: 11, contains: "did you mean 'listen_port'?")
        assertError(e, line: 12, contains: "unknown key 'xyzzy' in 'proxy'; valid keys:")
        assertError(e, line: 13, contains: "did you mean 'control'?")
    }

    func testBDRDriverIsNotSupported() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", "cluster: {name: c}\ndcs:\n  driver: bdr\n  endpoints: [\"host=a dbname=b\"]\n")
        assertError(errors(dir, includeInstances: false), line: 3, contains: "'bdr' is not supported by this build")
    }

    func testUnreadableFiles() {
        let dir = TemporaryDirectory()
        assertError(errors(dir), line: 1, contains: "cannot read the file: No such file or directory")
        dir.write("config.yml", minimal + "include_dir: nowhere\n")
        assertError(errors(dir), line: 7, contains: "cannot read include_dir")
        let asDir = TemporaryDirectory()
        asDir.write("config.yml", minimal)
        asDir.write("conf.d/dir.yml/inner", "")
        assertError(errors(asDir), line: 1, file: "conf.d/dir.yml", contains: "it is a directory")
    }

    func testDuplicateInstanceNamesAndReservedGlobal() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "proxy:\n  name: p1\n  location: dc1\n")
        dir.write("conf.d/a.yml", "proxy:\n  name: p1\n  location: dc2\n  listen_port: 7000\n")
        dir.write("conf.d/b.yml", "proxy:\n  name: global\n  location: dc2\n  listen_port: 7001\n")
        let e = errors(dir)
        assertError(e, line: 2, file: "conf.d/a.yml", contains: "duplicate instance name 'p1': already defined at \(dir.path)/config.yml:8")
        assertError(e, line: 2, file: "conf.d/b.yml", contains: "'global' is reserved")
    }

    func testTwoInstancesOnOneListener() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "proxy:\n  name: p1\n  location: dc1\n  listen_port: 7000\n")
        dir.write("conf.d/a.yml", "proxy:\n  name: p2\n  location: dc2\n  listen_address: 127.0.0.1\n  listen_port: 7000\n")
        assertError(errors(dir), line: 2, file: "conf.d/a.yml", contains: "listens on 127.0.0.1:7000, which instance 'p1'")
    }

    func testConfDFileHoldsOnlyAProxyStanza() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal)
        dir.write("conf.d/a.yml", "cluster:\n  name: other\nproxy:\n  name: a\n  location: dc1\n")
        dir.write("conf.d/b.yml", "# empty\n")
        let e = errors(dir)
        assertError(e, line: 1, file: "conf.d/a.yml", contains: "unknown key 'cluster'")
        assertError(e, line: 1, file: "conf.d/b.yml", contains: "the file is empty")
    }

    func testDuplicateKeyInOneMapping() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "log_level: info\nlog_level: debug\n")
        assertError(errors(dir, includeInstances: false), line: 8, contains: "duplicate key 'log_level'")
    }

    func testControlCharactersNeverEnterAValue() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "proxy:\n  name: p\n  location: dc1\n  auth_query: \"SELECT 1\\n%include /etc/passwd\"\n")
        assertError(errors(dir), line: 10, contains: "without control characters")
    }

    func testHTTPStanzaAndProbeEndpoint() throws {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "http:\n  enable: on\n  port: 8081\n  probes:\n    timeout: 3s\nproxy:\n  name: p\n  location: dc1\n  endpoint: host=127.0.0.1 port=6432 user=probe\n")
        let c = try load(dir)
        XCTAssertTrue(c.http.enable)
        XCTAssertEqual(c.http.port, 8081)
        XCTAssertEqual(c.http.probeTimeout, .seconds(3))
        XCTAssertEqual(c.instances[0].endpoint, "host=127.0.0.1 port=6432 user=probe")

        dir.write("config.yml", minimal + "http:\n  enable: on\n  secure: on\n  cert_file: a.crt\n  key_file: a.key\n")
        assertError(errors(dir, includeInstances: false), line: 10, contains: "'http.cert_file'")
        dir.write("config.yml", minimal + "http:\n  enable: on\n  secure: on\n")
        assertError(errors(dir, includeInstances: false), line: 9, contains: "'http.secure' needs 'http.cert_file' and 'http.key_file'")
    }

    func testPasswordWithoutUsername() {
        let dir = TemporaryDirectory()
        dir.write("config.yml", minimal + "  password: secret\n")
        let e = errors(dir, includeInstances: false)
        assertError(e, line: 7, contains: "'dcs.password' is set but 'dcs.username' is not")
        XCTAssertFalse(e.description.contains("secret"), "a password never appears in a message")
    }
}

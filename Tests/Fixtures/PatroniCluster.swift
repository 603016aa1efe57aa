import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real Patroni cluster (Debian's patroni 3.0.2): members managing PostgreSQL 15 servers in
/// streaming replication, on a real etcd through its v3 gateway (`etcd3:`), with short timings
/// (ttl 10, loop_wait 1, retry_timeout 3). Patroni and PostgreSQL run as `postgres`.
public final class PatroniCluster: @unchecked Sendable {
    public struct Member {
        public let name: String
        public let pgPort: Int
        public let apiPort: Int
        public let directory: String
        public var process: TestProcess?
        /// Its `tags`, as a YAML flow mapping (`{noloadbalance: true}`); nil for none.
        public var tags: String?
        public var config: String { directory + "/patroni.yml" }
        public var dataDirectory: String { directory + "/data" }
    }

    public let scope: String
    public let namespace: String
    public let directory: TemporaryDirectory
    public private(set) var members: [Member] = []
    private let etcdEndpoint: String

    /// Where a standby cluster replicates from (`bootstrap.dcs.standby_cluster`), if it is one.
    private let standbyOf: (host: String, port: Int)?

    /// Starts `count` members: the first alone until it has initialized the cluster, then the
    /// others, and returns once the first leads and every other streams from it. With
    /// `standbyOf`, a standby cluster of that PostgreSQL: its leader is a `standby_leader`.
    public init(etcd: EtcdCluster, scope: String = "dc1", namespace: String = "/service", members count: Int = 2,
                standbyOf: (host: String, port: Int)? = nil) throws {
        self.scope = scope
        self.namespace = namespace
        self.standbyOf = standbyOf
        directory = TemporaryDirectory("harp-patroni")
        chmod(directory.path, 0o755)
        etcdEndpoint = "127.0.0.1:\(etcd.members[0].clientPort)"
        for i in 1...count {
            let member = Member(name: "pg\(i)", pgPort: freePort(), apiPort: freePort(), directory: directory.path + "/pg\(i)")
            try FileManager.default.createDirectory(atPath: member.directory + "/sock", withIntermediateDirectories: true)
            PostgresServer.giveToPostgres([member.directory, member.directory + "/sock"])
            _ = FileManager.default.createFile(atPath: member.config, contents: Data(configuration(member).utf8))
            PostgresServer.giveToPostgres([member.config])
            members.append(member)
        }
        try start(0)
        guard eventually(timeout: 60, { self.leader() == "pg1" && self.accepts(0, writes: standbyOf == nil) }) else {
            throw FixtureError("Patroni pg1 did not become the leader:\n\(members[0].process?.log ?? "")")
        }
        for i in 1..<count {
            try start(i)
            guard eventually(timeout: 60, { self.streams(i) }) else {
                throw FixtureError("Patroni pg\(i + 1) did not start streaming:\n\(members[i].process?.log ?? "")")
            }
        }
    }

    deinit { stop() }

    private func configuration(_ m: Member) -> String {
        """
        scope: \(scope)
        namespace: \(namespace)
        name: \(m.name)
        restapi:
          listen: 127.0.0.1:\(m.apiPort)
          connect_address: 127.0.0.1:\(m.apiPort)
        etcd3:
          hosts: \(etcdEndpoint)
        bootstrap:
          dcs:
            ttl: 10
            loop_wait: 1
            retry_timeout: 3
            maximum_lag_on_failover: 1048576
            postgresql:
              use_pg_rewind: true
              parameters:
                wal_retrieve_retry_interval: 500ms
                fsync: 'off'
        \(standbyOf.map { "    standby_cluster: {host: \($0.host), port: \($0.port), create_replica_methods: [basebackup]}\n" } ?? "")
          initdb:
          - encoding: UTF8
          - no-sync
        postgresql:
          listen: 127.0.0.1:\(m.pgPort)
          connect_address: 127.0.0.1:\(m.pgPort)
          data_dir: \(m.dataDirectory)
          bin_dir: \(PostgresServer.binDirectory)
          pgpass: \(m.directory)/pgpass
          use_pg_rewind: true
          authentication:
            superuser: {username: postgres, password: postgres}
            replication: {username: postgres, password: postgres}
            rewind: {username: postgres, password: postgres}
          parameters:
            unix_socket_directories: \(m.directory)/sock
            fsync: 'off'
            max_connections: 100
          pg_hba:
          - local all all trust
          - host all all 127.0.0.1/32 trust
          - host replication all 127.0.0.1/32 trust
          basebackup:
          - checkpoint: fast
        watchdog:
          mode: 'off'
        \(m.tags.map { "tags: \($0)\n" } ?? "")
        """
    }

    /// Member `index`'s tags set (a YAML flow mapping; nil: none): its configuration rewritten,
    /// then `patronictl reload`, on which Patroni reads it again and writes the tags into its
    /// member key.
    public func setTags(_ index: Int, _ tags: String?) throws {
        members[index].tags = tags
        _ = FileManager.default.createFile(atPath: members[index].config, contents: Data(configuration(members[index]).utf8))
        PostgresServer.giveToPostgres([members[index].config])
        let result = try runCommand("/usr/bin/patronictl", ["-c", members[index].config, "reload", scope, members[index].name, "--force"],
                                    environment: ["PATH": "/usr/bin:/bin", "HOME": directory.path])
        guard result.status == 0 else { throw FixtureError("patronictl reload failed: \(result.output)") }
    }

    /// Member `index`'s record in the DCS, read with etcdctl ("" if none).
    public func memberRecord(_ index: Int) -> String {
        let result = try? runCommand("/usr/bin/etcdctl", ["--endpoints=\(etcdEndpoint)", "get", "--print-value-only", "\(namespace)/\(scope)/members/\(members[index].name)"],
                                     environment: ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"])
        return result?.output ?? ""
    }

    /// Starts (or restarts) member `index`'s Patroni, which starts its PostgreSQL, or finds it
    /// running (`postgresRuns`: Patroni alone was stopped or killed).
    public func start(_ index: Int, postgresRuns: Bool = false) throws {
        // A postmaster.pid left by a kill -9 may name a live process by now: PIDs wrap quickly.
        // (Never under a running postmaster, which shuts down when its lock file goes.)
        if !postgresRuns { unlink(members[index].dataDirectory + "/postmaster.pid") }
        let command = PostgresServer.isRoot
            ? ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--reset-env", "/usr/bin/patroni", members[index].config]
            : ["/usr/bin/patroni", members[index].config]
        members[index].process = try TestProcess(name: "patroni-\(members[index].name)", executable: command[0], arguments: Array(command.dropFirst()),
                                                 logDirectory: directory.path)
    }

    /// The member the leader key names now, read with etcdctl.
    public func leader() -> String? {
        let result = try? runCommand("/usr/bin/etcdctl", ["--endpoints=\(etcdEndpoint)", "get", "--print-value-only", "\(namespace)/\(scope)/leader"],
                                     environment: ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"])
        let name = result?.output.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return result?.status == 0 && !name.isEmpty ? name : nil
    }

    /// Whether member `index`'s PostgreSQL answers, and is (`writes`) or is not a primary.
    public func accepts(_ index: Int, writes: Bool) -> Bool {
        (try? PostgresServer.psql(host: "127.0.0.1", port: members[index].pgPort, "SELECT pg_is_in_recovery()", timeout: 2)) == (writes ? "f" : "t")
    }

    /// Whether member `index` is a replica streaming from the leader.
    public func streams(_ index: Int) -> Bool {
        (try? PostgresServer.psql(host: "127.0.0.1", port: members[index].pgPort, "SELECT status FROM pg_stat_wal_receiver", timeout: 2)) == "streaming"
    }

    /// `patronictl switchover --force` from `from` to `to` (member names).
    @discardableResult
    public func switchover(from: String, to: String) throws -> String {
        let result = try runCommand("/usr/bin/patronictl", ["-c", members[0].config, "switchover", "--leader", from, "--candidate", to, "--force", scope],
                                    environment: ["PATH": "/usr/bin:/bin", "HOME": directory.path])
        guard result.status == 0 else { throw FixtureError("patronictl switchover failed: \(result.output)") }
        return result.output
    }

    /// The leader key's `mod_revision`: it changes when a restarted Patroni writes the key again.
    public func leaderRevision() -> Int? {
        let result = try? runCommand("/usr/bin/etcdctl", ["--endpoints=\(etcdEndpoint)", "get", "-w", "json", "\(namespace)/\(scope)/leader"],
                                     environment: ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"])
        guard let text = result?.output, let range = text.range(of: #""mod_revision":[0-9]+"#, options: .regularExpression) else { return nil }
        return Int(text[range].split(separator: ":")[1])
    }

    /// `patronictl pause --wait` or `resume --wait`: Patroni's maintenance mode.
    public func maintenance(_ on: Bool) throws {
        let result = try runCommand("/usr/bin/patronictl", ["-c", members[0].config, on ? "pause" : "resume", "--wait", scope],
                                    environment: ["PATH": "/usr/bin:/bin", "HOME": directory.path])
        guard result.status == 0 else { throw FixtureError("patronictl \(on ? "pause" : "resume") failed: \(result.output)") }
    }

    /// Member `index`'s Patroni stopped (SIGTERM; paused, it leaves PostgreSQL running) or killed
    /// (SIGKILL; PostgreSQL runs on), then started again at once.
    public func restartPatroni(_ index: Int, kill hard: Bool) throws {
        guard let process = members[index].process else { throw FixtureError("pg\(index + 1)'s Patroni is not running") }
        if hard { process.killNow() } else { process.signal(SIGTERM) }
        if !eventually(timeout: 20, { !process.isRunning }) {
            // Seen once on a loaded machine: a paused Patroni slow to leave. What matters here is
            // that Patroni is gone while PostgreSQL runs on, which a kill gives as well.
            print("Patroni did not stop within 20 s of SIGTERM; killing it. Its log:\n\(process.log.suffix(3000))")
            process.killNow()
            guard eventually(timeout: 10, { !process.isRunning }) else { throw FixtureError("Patroni did not stop:\n\(process.log)") }
        }
        try start(index, postgresRuns: true)
    }

    /// kill -9 of member `index`'s postmaster alone: Patroni finds PostgreSQL gone on its next
    /// loop and starts it again (read-only first, for a leader).
    public func killPostmaster(_ index: Int) {
        let pidFile = members[index].dataDirectory + "/postmaster.pid"
        if let pid = (try? String(contentsOfFile: pidFile, encoding: .utf8))?.split(separator: "\n").first.flatMap({ pid_t($0) }) {
            kill(pid, SIGKILL)
        }
    }

    /// kill -9 of member `index`'s Patroni and its postmaster: a crash.
    public func crash(_ index: Int) {
        let pidFile = members[index].dataDirectory + "/postmaster.pid"
        let postmaster = (try? String(contentsOfFile: pidFile, encoding: .utf8))?.split(separator: "\n").first.flatMap { pid_t($0) }
        members[index].process?.killNow()
        if let postmaster { kill(postmaster, SIGKILL) }
    }

    public func stop() {
        for i in members.indices {
            guard let process = members[i].process, process.isRunning else { continue }
            process.signal(SIGTERM)
            if !eventually(timeout: 15, { !process.isRunning }) { process.killNow() }
            // A Patroni stopped this way stops its PostgreSQL; one that was killed may leave it.
            _ = try? runCommand(PostgresServer.runner, PostgresServer.asPostgres(["\(PostgresServer.binDirectory)/pg_ctl", "stop", "-D", members[i].dataDirectory, "-m", "immediate"]))
        }
    }
}

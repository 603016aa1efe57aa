import Foundation
import HarpCluster
import HarpConfig
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Makes one real PgBouncer match an instance's plan, on a thread of its own (libpq blocks).
///
/// Level-triggered like the builtin mode: each step compares what should be (the latest plan)
/// with what is (the process, the ini's target, the pause state) and takes the next action:
/// start or restart PgBouncer; PAUSE before pointing it elsewhere; KILL once
/// `server_transfer_timeout` has passed with the PAUSE unfinished; rewrite `[databases]`,
/// RELOAD and RESUME once a lead master is known. An unmanaged instance's PgBouncer is left as it
/// is: no PAUSE, RESUME or RELOAD.
final class PgBouncerDriver: @unchecked Sendable {
    let instance: InstanceConfiguration
    let logger: Logger
    let paths: PgBouncerPaths
    private let runsAsRoot = geteuid() == 0
    /// PgBouncer refuses root, so as root it is told to become `postgres`.
    private let owner: PrivateFiles.Owner?
    private let binary: String

    // Shared with callers, under `condition`.
    let condition = NSCondition()
    private var desired: InstancePlan?
    /// Set by `apply`, so that a plan that comes while a step runs is not waited past.
    private var planChanged = false
    private var stopRequested = false
    var published = Published()
    private var exitWaiters: [CheckedContinuation<Void, Never>] = []
    private var exited = false

    struct Published {
        var summary: PoolSummary?
        var listening: String?
        /// Why PgBouncer does not listen where the plan asks (another instance holds that address).
        var listenError: String?
    }

    // The driver thread's own state.
    enum Pause: Equatable {
        case running
        case pausing(since: ContinuousClock.Instant)
        case paused
    }

    private var process: PgBouncerProcess?
    var admin: AdminConsole?
    /// The connection a PAUSE was sent on: its answer means every server connection is released.
    var pauseConsole: AdminConsole?
    var pause = Pause.running
    /// Databases KILLed during this pause; each needs its own RESUME.
    var killed: [String] = []
    /// What the ini on disk says now.
    var applied: (settings: PgBouncerSettings, target: LeaderTarget?)?
    private var authText: String?
    var password = generatedPassword()
    /// A PgBouncer just started or adopted is paused before anything else.
    var freshStart = false
    /// The running PgBouncer's `[databases]` is known to be the one just written: we started it,
    /// or the one we adopted already had it. No PAUSE is needed to put it on the lead master.
    var knownOnTarget = false
    private var firstStart = true
    private var backoff: Duration = .seconds(1)
    private var nextStartAt = ContinuousClock.now
    var nextMonitorAt = ContinuousClock.now
    /// Problems being reported, by subject: each is logged once, and its end once.
    private var problems: [Problem: String] = [:]

    enum Problem: String {
        case settings, listen, target, start, authFile = "auth_file", adminConsole = "admin console"
    }
    private var adminFailures = 0

    init(instance: InstanceConfiguration, logger: Logger) {
        self.instance = instance
        self.logger = logger
        paths = PgBouncerPaths(configDirectory: instance.configDirectory, instance: instance.name)
        owner = geteuid() == 0 ? PrivateFiles.Owner.named("postgres") : nil
        binary = Self.findBinary(in: instance.pgbouncerBinDir)
        let thread = Thread { [self] in run() }
        thread.name = "pgbouncer-\(instance.name)"
        thread.start()
    }

    /// `pgbouncer_bin_dir`, else the PATH, else Debian's /usr/sbin.
    private static func findBinary(in directory: String?) -> String {
        if let directory { return directory + "/pgbouncer" }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":") + ["/usr/sbin", "/usr/local/sbin", "/usr/bin"] where access("\(dir)/pgbouncer", X_OK) == 0 {
            return "\(dir)/pgbouncer"
        }
        return "/usr/sbin/pgbouncer"
    }

    func apply(_ plan: InstancePlan) {
        condition.withLock {
            desired = plan
            planChanged = true
            condition.signal()
        }
    }

    var snapshot: Published { condition.withLock { published } }

    /// The directives of the plan it was last given.
    var desiredDirectives: EffectiveDirectives? { condition.withLock { desired?.directives } }

    /// Stops PgBouncer and the thread; returns once both are gone.
    func stop() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.withLock {
                if exited { continuation.resume(); return }
                stopRequested = true
                exitWaiters.append(continuation)
                condition.signal()
            }
        }
    }

    // MARK: - The loop

    private func run() {
        while true {
            condition.lock()
            // Poll briskly only while something is under way (PgBouncer starting, a PAUSE waiting
            // for its answer); otherwise wake for supervision, or at once for a new plan.
            let managed = desired?.managed ?? false
            let busy = process != nil && (admin == nil || (freshStart && managed) || pause != .running)
            if !planChanged && !stopRequested {
                _ = condition.wait(until: Date(timeIntervalSinceNow: busy ? 0.01 : process == nil ? 0.05 : 0.2))
            }
            planChanged = false
            let plan = desired
            let stopping = stopRequested
            condition.unlock()
            if stopping { break }
            guard let plan else { continue }
            step(plan)
        }
        shutDownPgBouncer()
        condition.withLock {
            exited = true
            published = Published()
            exitWaiters.forEach { $0.resume() }
            exitWaiters = []
        }
    }

    private func shutDownPgBouncer() {
        pauseConsole = nil
        admin = nil
        guard let process else { return }
        logger.info("stopping PgBouncer", metadata: ["pid": "\(process.pid)"])
        process.stop()
        self.process = nil
    }

    private func step(_ plan: InstancePlan) {
        let wanted = PgBouncerSettings(instance: instance.name, directives: plan.directives, paths: paths, runUser: owner?.name)
        var settings = wanted
        condition.withLock { published.listenError = plan.listenBlocked }
        if let problem = wanted.validate(runningAsRoot: runsAsRoot) {
            report(.settings, problem.message + (applied == nil ? "; PgBouncer is not started" : "; PgBouncer keeps its current settings"))
            guard let current = applied?.settings else { return }
            settings = current
        } else if let blocked = plan.listenBlocked {
            // Another instance holds that address (the host logged it): keep what runs, if anything.
            report(.listen, blocked + (applied == nil ? "; PgBouncer is not started" : "; PgBouncer keeps its current listener"))
            guard let current = applied?.settings else { return }
            settings = current
        } else {
            resolved(.settings)
            resolved(.listen)
        }
        var target = plan.managed ? plan.routing.serving : (applied?.target ?? plan.routing.serving)
        if let t = target, let problem = PgBouncerSettings.validate(target: t) {
            report(.target, problem.message + "; treated as no lead master")
            target = nil
        } else {
            resolved(.target)
        }

        guard superviseProcess(settings: settings, target: target, dcsRead: plan.dcsRead) else { return }
        guard let process, connectAdmin(settings: settings, process: process) else { return }

        if plan.managed {
            if let applied, applied.settings != settings {
                guard applySettings(settings) else { return }
            }
            follow(target, plan: plan)
        }
        if ContinuousClock.now >= nextMonitorAt {
            nextMonitorAt = .now + max(plan.directives.monitorInterval, .milliseconds(100))
            refreshAuthFile(settings: settings, reload: plan.managed)
            monitor(settings: settings)
        }
    }

    /// Starts, restarts or adopts PgBouncer as needed; false while there is none to talk to.
    private func superviseProcess(settings: PgBouncerSettings, target: LeaderTarget?, dcsRead: Bool) -> Bool {
        if let process, let status = process.exitStatus() {
            logger.error("PgBouncer exited; restarting it paused", metadata: ["pid": "\(process.pid)", "status": "\(status)", "retry_in_s": "\(backoff.seconds)"])
            forgetProcess()
            nextStartAt = .now + backoff
            backoff = min(backoff * 2, .seconds(30))
            return false
        }
        if let process {
            // A PgBouncer that has stayed up a minute has earned a fresh backoff.
            if ContinuousClock.now - process.startedAt > .seconds(60) { backoff = .seconds(1) }
            return true
        }
        // Not before the DCS has been read: a client let in while the lead master is unknown could
        // only wait (or fail) on a placeholder.
        guard dcsRead, ContinuousClock.now >= nextStartAt else { return false }
        do throws(PgBouncerProcess.Failure) {
            try PrivateFiles.makeDirectory(paths.runDirectory, owner: owner)
            let previousDatabases = Self.databasesSection(of: paths.ini)
            try writeFiles(settings: settings, target: target)
            if firstStart, let running = PgBouncerProcess.adopt(pidFile: paths.pidFile) {
                // An earlier harp-proxy left it running: it re-reads the files (and so learns the
                // new admin password) on SIGHUP, then is driven like one of ours.
                running.signal(SIGHUP)
                process = running
                // Its clients' sessions stay: a PAUSE would wait on every session-pooled client
                // until KILL. It needs one only if it pointed somewhere else.
                knownOnTarget = previousDatabases != nil && previousDatabases == Self.databasesSection(of: paths.ini)
                logger.info("adopted the running PgBouncer named by its pidfile", metadata: ["pid": "\(running.pid)", "pidfile": "\(paths.pidFile)"])
            } else {
                let started = try PgBouncerProcess.start(binary: binary, ini: paths.ini)
                process = started
                knownOnTarget = true
                logger.info("started PgBouncer", metadata: ["pid": "\(started.pid)", "ini": "\(paths.ini)", "listen": "\(settings.listenAddress):\(settings.listenPort)"])
            }
            firstStart = false
            freshStart = true
            pause = .running
            adminFailures = 0
            resolved(.start)
            return true
        } catch {
            report(.start, error.message)
            nextStartAt = .now + backoff
            backoff = min(backoff * 2, .seconds(30))
            return false
        }
    }

    private func forgetProcess() {
        process = nil
        admin = nil
        pauseConsole = nil
        pause = .running
        killed = []
        condition.withLock { published = Published() }
    }

    /// The `[databases]` section of an ini file, nil if there is none to read.
    static func databasesSection(of path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        var inside = false
        var lines: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("[") { inside = trimmed == "[databases]" }
            else if inside { lines.append(line) }
        }
        return lines.isEmpty ? nil : lines.joined(separator: "\n")
    }

    func writeFiles(settings: PgBouncerSettings, target: LeaderTarget?) throws(PgBouncerProcess.Failure) {
        let auth = PgBouncerSettings.authFile(adminPassword: password, userList: userList(settings))
        try PrivateFiles.write(auth, to: paths.authFile, owner: owner)
        try PrivateFiles.write(settings.ini(target: target), to: paths.ini, owner: owner)
        authText = auth
        applied = (settings, target)
    }

    /// The `auth_file` directive's user list, read as PgBouncer's user could read it.
    private func userList(_ settings: PgBouncerSettings) -> String? {
        guard let path = settings.directives[DirectiveKeys.authFile] else { return nil }
        if let text = PrivateFiles.readable(path, by: owner) {
            resolved(.authFile)
            return text
        }
        report(.authFile, "auth_file '\(path)' cannot be read\(owner.map { " by \($0.name)" } ?? ""): only the admin console's user is in PgBouncer's auth file")
        return nil
    }

    private func connectAdmin(settings: PgBouncerSettings, process: PgBouncerProcess) -> Bool {
        if let admin, !admin.isBroken { return true }
        admin = nil
        do throws(AdminConsole.Failure) {
            admin = try AdminConsole(socketDirectory: paths.runDirectory, port: settings.listenPort, password: password)
            adminFailures = 0
            condition.withLock { published.listening = "\(settings.listenAddress):\(settings.listenPort)" }
            return true
        } catch {
            adminFailures += 1
            // PgBouncer takes a moment to open its socket: say so only past 3 s, then every 300 tries.
            if ContinuousClock.now - process.startedAt > .seconds(3), adminFailures % 300 == 1 {
                logger.warning("cannot reach PgBouncer's admin console", metadata: ["socket": "\(paths.socket(port: settings.listenPort))", "error": "\(error.message)"])
            }
            return false
        }
    }

    /// Directive changes: rewrite the ini and RELOAD; the listener itself needs a restart.
    private func applySettings(_ settings: PgBouncerSettings) -> Bool {
        guard let applied, let process else { return false }
        if settings.needsRestart(from: applied.settings) {
            logger.warning("listen_address or listen_port changed: restarting PgBouncer, whose clients are disconnected",
                           metadata: ["listen": "\(settings.listenAddress):\(settings.listenPort)"])
            process.stop()
            forgetProcess()
            nextStartAt = .now
            return false
        }
        do {
            try writeFiles(settings: settings, target: applied.target)
            try admin?.run("RELOAD")
            logger.info("directives changed: PgBouncer reloaded")
        } catch {
            report(.adminConsole, "cannot apply the new directives to PgBouncer: \(error)")
            self.admin = nil
            return false
        }
        return true
    }

    /// The auth file follows the `auth_file` it copies: a changed user list is rewritten and,
    /// for a managed instance, reloaded.
    private func refreshAuthFile(settings: PgBouncerSettings, reload: Bool) {
        let auth = PgBouncerSettings.authFile(adminPassword: password, userList: userList(settings))
        guard auth != authText, let admin else { return }
        do throws(PgBouncerProcess.Failure) {
            try PrivateFiles.write(auth, to: paths.authFile, owner: owner)
            authText = auth
        } catch { report(.authFile, error.message); return }
        guard reload else { return }
        do {
            try admin.run("RELOAD")
            logger.info("auth_file changed: PgBouncer reloaded")
        } catch { report(.adminConsole, "RELOAD after an auth_file change: \(error)") }
    }

    /// SHOW POOLS, STATS and DATABASES, summed over the client databases.
    private func monitor(settings: PgBouncerSettings) {
        guard let admin else { return }
        do {
            let pools = try admin.run("SHOW POOLS").filter { $0["database"] != "pgbouncer" }
            let stats = try admin.run("SHOW STATS").filter { $0["database"] != "pgbouncer" }
            let databases = try admin.run("SHOW DATABASES").filter { $0["name"] != "pgbouncer" }
            var summary = PoolSummary()
            func sum(_ rows: [[String: String]], _ key: String) -> Int { rows.reduce(0) { $0 + (Int($1[key] ?? "") ?? 0) } }
            summary.clActive = sum(pools, "cl_active")
            summary.clWaiting = sum(pools, "cl_waiting")
            summary.svActive = sum(pools, "sv_active")
            summary.svIdle = sum(pools, "sv_idle")
            summary.totalXactCount = sum(stats, "total_xact_count")
            summary.bytesReceived = sum(stats, "total_received")
            summary.bytesSent = sum(stats, "total_sent")
            let queries = sum(stats, "total_query_count")
            summary.avgQueryTime = queries == 0 ? 0 : sum(stats, "total_query_time") / queries
            summary.paused = pause != .running || databases.contains { $0["paused"] == "1" }
            resolved(.adminConsole)
            condition.withLock {
                published.summary = summary
                published.listening = "\(settings.listenAddress):\(settings.listenPort)"
            }
        } catch {
            report(.adminConsole, "\(error)")
            self.admin = nil
        }
    }

    /// Logs a problem once, until it changes or ends.
    func report(_ subject: Problem, _ message: String) {
        guard problems[subject] != message else { return }
        problems[subject] = message
        if subject == .authFile { logger.warning("\(message)") } else { logger.error("\(message)", metadata: ["subject": "\(subject.rawValue)"]) }
    }

    func resolved(_ subject: Problem) {
        guard problems.removeValue(forKey: subject) != nil else { return }
        logger.info("resolved", metadata: ["subject": "\(subject.rawValue)"])
    }
}

import HarpCluster
import HarpConfig
import Logging

/// A switchover as PgBouncer makes it, on the driver's thread: PAUSE (server connections are
/// released as transactions end), KILL what is still open after `server_transfer_timeout`
/// (at once with `session_transfer_mode: fast`), repoint `[databases]` at the new lead master,
/// RELOAD and RESUME. `reconnect` repoints and reloads without a PAUSE.
extension PgBouncerDriver {
    /// PAUSE, KILL after `server_transfer_timeout`, repoint, RELOAD, RESUME.
    func follow(_ target: LeaderTarget?, plan: InstancePlan) {
        guard let admin, let applied else { return }
        let onTarget = target != nil && target!.sameRoute(as: applied.target)
        if freshStart, knownOnTarget, onTarget, pause == .running, let target {
            // Started (or adopted) with its ini already on the lead master: nothing to PAUSE for.
            // (A PAUSE here would close the server connection of a client that arrived in the
            // first milliseconds, and PgBouncer would then wait server_login_retry, 15 s, for
            // that pool; an adopted one's session clients would wait for KILL.)
            freshStart = false
            logger.info("PgBouncer started on the lead master", metadata: ["leader": "\(target)", "ms": "\((ContinuousClock.now - plan.observedAt).milliseconds)"])
            nextMonitorAt = .now
            return
        }
        do {
            if case .pausing = pause, onTarget, !freshStart {
                // The lead master came back before the PAUSE finished: carry on where we were.
                pauseConsole = nil
                try resume(admin)
                logger.info("lead master unchanged after all: PgBouncer resumed", metadata: ["leader": "\(target!)"])
                return
            }
            let transferMode = plan.directives.sessionTransferMode
            if transferMode == .reconnect, !freshStart, !onTarget, pause == .running, let target {
                // No PAUSE: PgBouncer closes each old server connection once it is released and
                // opens new ones to the new lead master; queries never wait.
                try writeFiles(settings: applied.settings, target: target)
                try admin.run("RELOAD")
                logger.info("PgBouncer points at the new lead master (session_transfer_mode reconnect: no PAUSE)",
                            metadata: ["leader": "\(target)", "from": "\(applied.target.map { "\($0.name)" } ?? "none")",
                                       "ms": "\((ContinuousClock.now - plan.observedAt).milliseconds)"])
                return
            }
            // `fast` does not wait for transactions to finish: KILL at once.
            let transferTimeout = transferMode == .fast ? .zero : plan.directives.serverTransferTimeout
            if freshStart || !onTarget {
                switch pause {
                case .running:
                    pauseConsole = try sendPause()
                    pause = .pausing(since: .now)
                    if !freshStart {
                        logger.info("PAUSE: in-flight transactions finish, new queries wait",
                                    metadata: ["reason": "\(target.map { "lead master is now \($0)" } ?? plan.stateName)"])
                    }
                case .pausing(let since):
                    if try pauseConsole?.poll() == true {
                        pauseConsole = nil
                        pause = .paused
                        if !freshStart { logger.info("PgBouncer paused", metadata: ["waited_ms": "\((ContinuousClock.now - since).milliseconds)"]) }
                    } else if killed.isEmpty, !freshStart, ContinuousClock.now - since >= transferTimeout {
                        try killDatabases(admin, after: ContinuousClock.now - since, mode: transferMode)
                    }
                case .paused:
                    break
                }
            }
            guard pause == .paused, let target else { return }
            if !onTarget {
                try writeFiles(settings: applied.settings, target: target)
                try admin.run("RELOAD")
            }
            try resume(admin)
            let ms = (ContinuousClock.now - plan.observedAt).milliseconds
            logger.info(freshStart ? "PgBouncer started paused, now resumed on the lead master" : "PgBouncer points at the new lead master and is resumed",
                        metadata: ["leader": "\(target)", "from": "\(applied.target.map { "\($0.name)" } ?? "none")", "ms": "\(ms)"])
            freshStart = false
            nextMonitorAt = .now
        } catch {
            report(.adminConsole, "\(error)")
            self.admin = nil
            pauseConsole = nil
            if case .pausing = pause { pause = .running }
        }
    }

    func killDatabases(_ admin: AdminConsole, after waited: Duration, mode: SessionTransferMode) throws {
        let databases = try admin.run("SHOW DATABASES").compactMap { $0["name"] }.filter { $0 != "pgbouncer" }
        logger.warning(mode == .fast ? "session_transfer_mode fast: KILL open transactions at once" : "server_transfer_timeout passed with transactions still open: KILL",
                       metadata: ["waited_s": "\(waited.seconds)", "databases": "\(databases.joined(separator: ","))"])
        // PgBouncer 1.18 refuses KILL while the pooler is PAUSEd. So: lift the PAUSE, KILL each
        // database (which leaves it paused by itself), and PAUSE again for databases that a `*`
        // entry may create meanwhile. No server connection is idle to hand out in between.
        pauseConsole = nil
        try run(admin, "RESUME", tolerating: ["not paused"])
        for db in databases {
            guard PgBouncerSettings.isWord(db) else {
                logger.warning("not killing a database whose name the admin console cannot take", metadata: ["database": "\(db)"])
                continue
            }
            do { try admin.run("KILL \(db)") } catch { logger.warning("KILL failed", metadata: ["database": "\(db)", "error": "\(error)"]) }
        }
        killed = databases.isEmpty ? ["*"] : databases
        pauseConsole = try sendPause()
    }

    /// PAUSE on a connection of its own: PgBouncer answers it only once every server connection
    /// is released, and the main console must stay free meanwhile.
    func sendPause() throws(AdminConsole.Failure) -> AdminConsole {
        let console = try AdminConsole(socketDirectory: paths.runDirectory, port: applied?.settings.listenPort ?? 0, password: password)
        try console.send("PAUSE")
        return console
    }

    func resume(_ admin: AdminConsole) throws(AdminConsole.Failure) {
        // "not paused" is what we wanted anyway.
        try run(admin, "RESUME", tolerating: ["not paused"])
        for db in killed where PgBouncerSettings.isWord(db) {
            try run(admin, "RESUME \(db)", tolerating: ["not paused", "no such database"])
        }
        killed = []
        pause = .running
    }

    func run(_ admin: AdminConsole, _ command: String, tolerating messages: [String]) throws(AdminConsole.Failure) {
        do { try admin.run(command) } catch {
            guard messages.contains(where: { error.message.contains($0) }) else { throw error }
        }
    }
}

import HarpCluster
import HarpConfig
import Logging

/// What the log says when an instance's plan changes: said once per change, from the old and
/// the new plan alone (so a repeated plan says nothing again).
enum PlanLog {
    static func transition(from old: InstancePlan?, to new: InstancePlan, instance: InstanceConfiguration, logger: Logger) {
        if let blocked = new.listenBlocked, old?.listenBlocked != blocked { logger.error("\(blocked)") }
        location(from: old, to: new, logger: logger)
        dcs(from: old, to: new, logger: logger)
        guard old?.stateName != new.stateName || old?.routing != new.routing else { return }
        if case .leader(let before)? = old?.routing, case .leader(let after) = new.routing, after.sameRoute(as: before) {
            // Its manager restarted (Patroni under a new lease, say): nothing changes for clients.
            logger.info("lead master's key written again under a new lease: sessions and routing stay",
                        metadata: ["leader": "\(after)", "lease": "\(after.lease)"])
            return
        }
        var metadata: Logger.Metadata = ["state": "\(new.stateName)"]
        switch new.routing {
        case .leader(let t): metadata["leader"] = "\(t)"
        case .waitingForWrites(let t, let reason):
            metadata["leader"] = "\(t)"
            metadata["reason"] = "\(reason)"
        case .readOnlyLeader(let name, let reason):
            metadata["leader"] = "\(name)"
            metadata["reason"] = "\(reason)"
        case .noLeader(let reason), .fenced(let reason): metadata["reason"] = "\(reason)"
        }
        logger.info("plan", metadata: metadata)
    }

    /// An instance that names no location: which it follows and why, or why none.
    private static func location(from old: InstancePlan?, to new: InstancePlan, logger: Logger) {
        guard let choice = new.locationChoice, choice != old?.locationChoice else { return }
        switch choice {
        case .follow(let location, let others):
            if case .follow(let before, _)? = old?.locationChoice, before == location {
                if !others.isEmpty {
                    logger.warning("the DCS now holds other locations too; still following \(location): set proxy.location to make the choice explicit",
                                   metadata: ["location": "\(location)", "others": "\(others.joined(separator: ","))"])
                }
            } else {
                logger.info("following location \(location): the only one the DCS holds, and the configuration names none",
                            metadata: ["location": "\(location)"])
            }
        case .wait(let reason):
            logger.info("\(reason)")
        case .ambiguous(let reason):
            logger.error("no location to follow: \(reason)")
        }
    }

    /// The DCS lost and found again: fencing, or routing on under `dcs_failure_policy: keep`.
    private static func dcs(from old: InstancePlan?, to new: InstancePlan, logger: Logger) {
        let wasFenced = if case .fenced? = old?.routing { true } else { false }
        let keeps = new.directives.dcsFailurePolicy == .keep
        if case .fenced = new.routing, !wasFenced, let clock = new.fenceClock {
            logger.warning("DCS unreachable longer than the leader lease: fencing, no routing until it is back",
                           metadata: ["outage_s": "\(Planner.seconds(clock.outage))", "lease_s": "\(Planner.seconds(clock.lease))"])
        } else if keeps, new.dcsUnreachable, !(old?.dcsUnreachable ?? false) {
            logger.warning("DCS unreachable; dcs_failure_policy is keep: routing to the last known lead master",
                           metadata: ["outage_s": "\(new.fenceClock.map { Planner.seconds($0.outage) } ?? "?")",
                                      "leader": "\(new.routing.target.map { "\($0)" } ?? "none")"])
        }
        if !new.dcsUnreachable, old?.dcsUnreachable ?? false, wasFenced || keeps {
            logger.info("DCS reachable again: routing resumes from the current state")
        }
    }
}

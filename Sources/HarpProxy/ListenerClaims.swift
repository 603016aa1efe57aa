import HarpConfig

/// Which instance of the process may bind the listener its effective directives ask for, once
/// those are known (they may come from the DCS). Two instances that ask for overlapping
/// addresses cannot both listen: the one that already holds the address keeps it, and at a
/// start the one defined first gets it. Pure: the host calls it with every instance's claim.
enum ListenerClaims {
    struct Claim: Equatable {
        var instance: String
        var address: String
        var port: Int
        /// The instance was given this same address by the previous plan.
        var heldBefore: Bool
    }

    /// The instances that must not bind, each with the reason: the address and who holds it.
    static func refusals(_ claims: [Claim]) -> [String: String] {
        var granted: [Claim] = []
        var refused: [String: String] = [:]
        // Holders first, each group in the order given (the configuration's).
        for claim in claims.filter(\.heldBefore) + claims.filter({ !$0.heldBefore }) {
            if let holder = granted.first(where: { ConfigLoader.listenersOverlap(($0.address, $0.port), (claim.address, claim.port)) }) {
                refused[claim.instance] = "cannot listen on \(display(claim)): address in use by instance '\(holder.instance)' (\(display(holder))); give '\(claim.instance)' its own listen_port"
            } else {
                granted.append(claim)
            }
        }
        return refused
    }

    static func display(_ claim: Claim) -> String {
        claim.address.contains(":") ? "[\(claim.address)]:\(claim.port)" : "\(claim.address):\(claim.port)"
    }
}

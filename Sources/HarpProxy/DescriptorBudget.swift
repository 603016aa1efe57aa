#if canImport(Glibc)
import Glibc
#endif

/// How many client connections the process can hold: each builtin client takes two descriptors
/// (client and lead master), plus a reserve for listeners, the DCS and logs.
enum DescriptorBudget {
    static let reserve = 64

    /// Raises the soft RLIMIT_NOFILE to the hard limit and returns the limit in force.
    static func raiseLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur > rlim_t(Int32.max) ? Int(Int32.max) : Int(limit.rlim_cur)
    }

    /// Each instance's `max_client_conn`, scaled down together when their sum would not fit.
    static func caps(for wanted: [String: Int], limit: Int) -> [String: Int] {
        let total = wanted.values.reduce(0, +)
        let available = max(wanted.count, (limit - reserve) / 2)
        guard total > available else { return wanted }
        return wanted.mapValues { max(1, $0 * available / total) }
    }
}

extension Duration {
    /// Milliseconds with their fraction, for reaction-time figures.
    var fractionalMilliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}

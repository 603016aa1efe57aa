/// What the control socket can ask of the daemon. Replies are JSON objects as text.
public protocol ControlActions: Sendable {
    /// The whole process: cluster, version, pid, uptime, DCS, every instance.
    func status() async -> String
    /// One instance's status object, or nil when there is no such instance.
    func status(of instance: String) async -> String?
    func instanceNames() async -> [String]
    /// Writes the instance's `managed` key and returns its status once the instance has taken it.
    func setManaged(_ instance: String, _ managed: Bool) async throws -> String
    /// Does what SIGHUP does.
    func reload() async -> String
}

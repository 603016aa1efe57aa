/// Where HARP's state lives in etcd: the contract harpctl, the proxy and an operator's etcdctl share.
///
///     /harp/<cluster>/nodes/<node>             {"name":"node1","location":"dc1","dsn":"host=10.0.0.1 port=5432 dbname=app"}
///     /harp/<cluster>/locations/<loc>/leader   {"name":"node1"}   the lead master lease; absent = no leader
///     /harp/<cluster>/proxies/global/config    {"listen_port":6432,...}  directives for every proxy
///     /harp/<cluster>/proxies/<proxy>/config   {...}  that instance's directives; they override global
///     /harp/<cluster>/proxies/<proxy>/managed  "false" unmanages the instance; absent or "true" = managed
///     /harp/<cluster>/proxies/<proxy>/status   what the proxy reports, on a lease
public struct DCSLayout: Sendable {
    public let cluster: String

    public init(cluster: String) { self.cluster = cluster }

    /// Every key of the cluster is under this prefix: the session watches it.
    public var prefix: String { "/harp/\(cluster)/" }

    public var nodesPrefix: String { prefix + "nodes/" }
    public var locationsPrefix: String { prefix + "locations/" }
    public var proxiesPrefix: String { prefix + "proxies/" }
    public var clusterKey: String { prefix + "cluster" }

    public func node(_ name: String) -> String { nodesPrefix + name }
    public func leader(location: String) -> String { locationsPrefix + location + "/leader" }
    public func proxyConfig(_ name: String) -> String { proxiesPrefix + name + "/config" }
    public var globalProxyConfig: String { proxyConfig("global") }
    public func proxyManaged(_ name: String) -> String { proxiesPrefix + name + "/managed" }
    public func proxyStatus(_ name: String) -> String { proxiesPrefix + name + "/status" }
    /// Whether `key` is a proxy's status record (`proxies/<name>/status`), which no proxy reads back.
    public func isProxyStatus(_ key: String) -> Bool {
        guard key.hasPrefix(proxiesPrefix), key.hasSuffix("/status") else { return false }
        let name = key.dropFirst(proxiesPrefix.count).dropLast("/status".count)
        return !name.isEmpty && !name.contains("/")
    }
}

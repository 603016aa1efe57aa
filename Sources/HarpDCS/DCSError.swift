/// Why a DCS operation did not happen, in words an operator can act on.
public enum DCSError: Error, Sendable, CustomStringConvertible {
    /// Every endpoint failed; each reason is listed.
    case unreachable([EndpointFailure])
    /// etcd answered with an error (a gRPC status code and its message).
    case server(endpoint: String, code: Int, message: String)
    /// The username or password was refused.
    case authentication(endpoint: String, message: String)
    /// The reply was not what etcd's gateway sends.
    case protocolError(endpoint: String, message: String)

    public struct EndpointFailure: Sendable, CustomStringConvertible {
        public var endpoint: String
        public var reason: String
        public var isTLS: Bool
        public var description: String { "\(endpoint): \(isTLS ? "TLS: " : "")\(reason)" }
    }

    public var description: String {
        switch self {
        case .unreachable(let failures):
            return "etcd unreachable: " + failures.map(\.description).joined(separator: "; ")
        case .server(let endpoint, let code, let message):
            return "etcd \(endpoint) refused the request: \(message) (gRPC code \(code))"
        case .authentication(let endpoint, let message):
            return "etcd \(endpoint) refused the credentials in dcs.username/dcs.password: \(message)"
        case .protocolError(let endpoint, let message):
            return "unexpected reply from etcd \(endpoint): \(message)"
        }
    }
}

import Foundation
import HarpDCS

/// `harpctl promote`: makes a node the lead master of its location with a compare-and-swap on
/// the leader key, conditioned on the key as it was read. A promote that raced another change of
/// that key between its read and its write fails and names the leader that won; it never
/// overwrites a change it did not see.
public struct LeaderPromotion: Sendable {
    public let node: String
    public let location: String
    public let key: String
    /// The leader key as read: the swap succeeds only if it is still this (nil: absent).
    public let current: KeyValue?

    public enum Outcome: Sendable, Equatable {
        case promoted(previous: String?)
        /// The key changed since it was read; `now` leads (nil: no one).
        case raced(now: String?)
    }

    /// The promotion of `node` as `state` (read at `snapshot`) stands: nil with the reason when
    /// there is no such node or it belongs elsewhere.
    public static func prepare(node: String, location: String?, state: ClusterState, snapshot: DCSSnapshot) -> Result<LeaderPromotion, PromotionError> {
        guard let record = state.nodes[node] else {
            return .failure(PromotionError("no node '\(node)' (nodes: \(state.nodes.keys.sorted().joined(separator: ", ")))"))
        }
        let place = location ?? record.location
        guard record.location == place else { return .failure(PromotionError("node '\(node)' belongs to location '\(record.location)', not '\(place)'")) }
        let key = state.layout.leader(location: place)
        return .success(LeaderPromotion(node: node, location: place, key: key, current: snapshot[key]))
    }

    /// The leader the key names as read.
    public var previous: String? { current.flatMap { Self.leaderName($0.value) } }

    /// Writes the leader key, on `lease` if not 0, if it is still as read.
    public func commit(_ client: EtcdClient, lease: Int64 = 0) async throws(DCSError) -> Outcome {
        let guardOn: EtcdCompare = current.map { EtcdCompare(key: key, .equal, .modRevision($0.modRevision)) } ?? .absent(key)
        let value = String(decoding: (try? JSONSerialization.data(withJSONObject: ["name": node], options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        let result = try await client.txn(compare: [guardOn], success: [.put(key: key, value: value, lease: lease)], failure: [.range(key: key)])
        guard result.succeeded else {
            return .raced(now: result.ranges.first?.first.flatMap { Self.leaderName($0.value) })
        }
        return .promoted(previous: previous)
    }

    static func leaderName(_ value: String) -> String? {
        ((try? JSONSerialization.jsonObject(with: Data(value.utf8))) as? [String: Any])?["name"] as? String
    }
}

public struct PromotionError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

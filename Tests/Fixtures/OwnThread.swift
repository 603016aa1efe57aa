import Foundation

/// Runs blocking `body` (a psql, a libpq call) on a thread of its own, so that an async test
/// neither blocks its executor nor waits for one of its few threads: clients meant to be under
/// way at once really are.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

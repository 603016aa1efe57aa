import Foundation
import HarpCluster
@testable import HarpProxy
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The two ways of asking whether a named lead master takes writes: an HTTP endpoint (Patroni's
/// REST API), with requests that overlap, and PostgreSQL itself over a connection of the proxy's
/// own. Each runs on a thread of its own and ends within milliseconds of its stop.
final class PromotionCheckTests: XCTestCase {


    /// A request that is never answered does not hold up the next: with a per-request timeout of
    /// 60 s, the answer of a later request still comes through (one at a time, it would not
    /// before the 60 s had passed).
    func testAnAPIRequestLeftUnansweredDoesNotHoldUpTheNext() async throws {
        let api = try LoopbackListener(silent: 2, body: #"{"state": "running", "role": "master"}"#)
        defer { api.stop() }
        let stop = StopSignal()
        let asking = Task {
            await offThread { HTTPProbe.run("http://127.0.0.1:\(api.port)/patroni", expect: patroniPrimary, stop: stop, timeout: .seconds(60)) }
        }
        let answered = await eventuallyAsync(timeout: .seconds(20)) { api.accepted >= 3 }
        XCTAssertTrue(answered, "a third request was made while two were unanswered")
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(20))
            stop.set()  // ends the wait (false) if the answer never counts
        }
        let primary = await asking.value
        watchdog.cancel()
        XCTAssertTrue(primary, "the third request's answer says primary")
    }

    /// A replica's answer keeps it asking; `stop` ends it, false.
    func testAReplicaAnswerKeepsItAskingUntilStopped() async throws {
        let api = try LoopbackListener(silent: 0, body: #"{"state": "running", "role": "replica"}"#)
        defer { api.stop() }
        let stop = StopSignal()
        let asking = Task { await offThread { HTTPProbe.run("http://127.0.0.1:\(api.port)/patroni", expect: patroniPrimary, stop: stop) } }
        let many = await eventuallyAsync(timeout: .seconds(20)) { api.accepted >= 10 }
        XCTAssertTrue(many, "asked again after each replica answer")
        stop.set()
        let primary = await asking.value
        XCTAssertFalse(primary)
    }

    /// PostgreSQL itself, out of recovery: said at once. A user it does not know: the reason,
    /// from libpq, once, without the password; the check goes on trying until stopped.
    func testPostgreSQLItselfIsAskedWithTheConfiguredSettings() async throws {
        let server = SharedPostgres.first
        let address = DatabaseAddress.tcp(host: "127.0.0.1", port: server.port)
        let good = DirectCheck(address: address, conninfo: "user=postgres dbname=postgres")
        let outcome = await offThread { PostgresProbe.run(good, stop: StopSignal()) { XCTFail("no failure expected: \($0)") } }
        XCTAssertEqual(outcome, .outOfRecovery)

        let bad = DirectCheck(address: address, conninfo: "user=no_such_role dbname=postgres password=s3cret")
        let failures = Failures()
        let stop = StopSignal()
        let asking = Task { await offThread { PostgresProbe.run(bad, stop: stop) { failures.add($0) } } }
        let failed = await eventuallyAsync(timeout: .seconds(20)) { !failures.all.isEmpty }
        XCTAssertTrue(failed)
        try await Task.sleep(for: .milliseconds(300))  // more failed attempts meanwhile, none of which may be said again
        stop.set()
        guard case .stopped(let last) = await asking.value else { return XCTFail("it cannot have connected") }
        XCTAssertEqual(failures.all.count, 1, "said once: \(failures.all)")
        XCTAssertTrue(failures.all.first?.contains(#"role "no_such_role" does not exist"#) ?? false, "\(failures.all)")
        XCTAssertFalse(failures.all.joined().contains("s3cret"))
        XCTAssertEqual(last, failures.all.first)
    }

    final class Failures: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [String] = []
        func add(_ s: String) { lock.withLock { list.append(s) } }
        var all: [String] { lock.withLock { list } }
    }

    /// A node that accepts connections and never answers (a paused postmaster, a link gone
    /// silent): the probe does not block on it, and its stop ends it within milliseconds, both
    /// while connecting and while waiting for a query's answer.
    func testAProbeOfASilentNodeEndsAtOnceWhenStopped() async throws {
        let silent = try LoopbackListener(silent: 1_000_000, body: "")
        defer { silent.stop() }
        let failures = Failures()
        for probe in ["postgresql", "http"] {
            let stop = StopSignal()
            let check = DirectCheck(address: .tcp(host: "127.0.0.1", port: silent.port), conninfo: "user=postgres dbname=postgres")
            let before = silent.accepted
            let asking = Task {
                await offThread {
                    probe == "http" ? HTTPProbe.run("http://127.0.0.1:\(silent.port)/patroni", expect: patroniPrimary, stop: stop)
                        : PostgresProbe.run(check, stop: stop) { failures.add($0) } == .outOfRecovery
                }
            }
            let connected = await eventuallyAsync(timeout: .seconds(10)) { silent.accepted > before }
            XCTAssertTrue(connected, probe)
            let stoppedAt = ContinuousClock.now
            stop.set()
            let answer = await asking.value
            XCTAssertFalse(answer, probe)
            XCTAssertLessThan(ContinuousClock.now - stoppedAt, .milliseconds(500), "\(probe): ended at its stop, not at a timeout")
        }
    }
}

/// Runs a blocking probe on a thread of its own, as the host does.
private func offThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

/// What Patroni's REST API says of a primary.
private let patroniPrimary = ["role": ["master", "primary"], "state": ["running"]]

/// A listener on loopback that accepts every connection, never answers its first `silent` ones (as
/// Patroni's API may not around a promotion, or a paused node never does), and answers every
/// later one with an HTTP 200 and `body`.
final class LoopbackListener: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let lock = NSLock()
    private var kept: [Int32] = []
    private var count = 0
    var accepted: Int { lock.withLock { count } }

    init(silent: Int, body: String) throws {
        let listening = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listening, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let chosen = freePort()
        guard withLoopbackAddress(port: chosen, { bind(listening, $0, $1) }) == 0, listen(listening, 64) == 0 else {
            close(listening)
            throw FixtureError("cannot listen on \(chosen)")
        }
        fd = listening
        port = chosen
        let response = Array("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\(body)".utf8)
        Thread {
            while true {
                let client = accept(self.fd, nil, nil)
                guard client >= 0 else { return }
                let silentOne = self.lock.withLock {
                    self.count += 1
                    if self.count <= silent { self.kept.append(client) }
                    return self.count <= silent
                }
                if silentOne { continue }
                var request = [UInt8](repeating: 0, count: 4096)
                _ = recv(client, &request, request.count, 0)
                writeAll(client, response)
                close(client)
            }
        }.start()
    }

    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        for c in lock.withLock({ kept }) { close(c) }
    }
}

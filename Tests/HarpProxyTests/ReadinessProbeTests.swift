@testable import HarpHealth
import XCTest

/// What /health/is-ready makes of libpq's answer: like pg_isready, any answer of the lead master
/// means it was reached; an error the proxy sends for it does not.
final class ReadinessProbeTests: XCTestCase {
    func testReadinessTakesAnyAnswerOfTheLeadMasterButNotTheProxysOwnRefusals() {
        // Reached: authentication refused, unknown role or database, too many connections.
        for text in [
            "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  28P01: password authentication failed for user \"app\"",
            "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  28000: role \"root\" does not exist",
            "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  3D000: database \"nope\" does not exist",
        ] {
            XCTAssertNil(ReadinessProbe.verdict(errorText: text), text)
        }
        // Not ready: starting up, shutting down or in recovery; the proxy cannot reach it; no answer.
        XCTAssertEqual(ReadinessProbe.verdict(errorText: "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  57P03: the database system is starting up\nLOCATION: x"),
                       "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  the database system is starting up")
        XCTAssertNotNil(ReadinessProbe.verdict(errorText: "... failed: FATAL:  08006: cannot connect to the lead master node1 (127.0.0.1:1): connection refused"))
        XCTAssertNotNil(ReadinessProbe.verdict(errorText: "... failed: FATAL:  57P01: terminating connection because harp-proxy is shutting down"))
        XCTAssertNotNil(ReadinessProbe.verdict(errorText: "connection to server at \"127.0.0.1\", port 6432 failed: Connection refused"))
        XCTAssertNil(ReadinessProbe.sqlstate(in: "FATAL:  something without a code"))
    }
}

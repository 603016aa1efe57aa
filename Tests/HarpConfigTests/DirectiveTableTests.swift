import HarpConfig
import XCTest

/// The directive table is the one place names, defaults, units and scopes are written: check it
/// holds together.
final class DirectiveTableTests: XCTestCase {
    func testEveryDefaultIsAValueOfItsOwnKind() {
        for spec in ProxyDirectives.all {
            guard let value = spec.defaultValue else { continue }
            let raw: RawValue = switch value {
            case .string(let s): .text(s)
            case .integer(let i): .number(Double(i))
            case .duration(let d): .text(formatDuration(d))
            case .boolean(let b): .boolean(b)
            }
            XCTAssertEqual(try? spec.parse(raw).get(), value, "\(spec.name)'s default \(value) does not parse as \(spec.kind.expectation)")
        }
    }

    func testNamesAreUnique() {
        XCTAssertEqual(Set(ProxyDirectives.names).count, ProxyDirectives.all.count)
    }

    /// Every key the code reads names a directive of the table, whose values are of the key's type.
    func testEveryTypedKeyNamesADirectiveOfItsType() {
        for (name, type) in DirectiveKeys.all {
            guard let spec = ProxyDirectives.spec(name) else { XCTFail("\(name) is not in the table"); continue }
            let expected: String = switch spec.kind {
            case .string, .choice: "String"
            case .integer, .bytes: "Int"
            case .duration: "Duration"
            case .boolean: "Bool"
            }
            XCTAssertEqual(type, expected, name)
        }
    }

    func testTheAdditionsAreTheOnesHARPDoesNotHave() {
        XCTAssertEqual(ProxyDirectives.all.filter { !$0.harp }.map(\.name).sorted(),
                       ["dcs_failure_policy", "hold_timeout", "max_replica_lag", "pool_mode", "replica_fallback", "route_to"])
        XCTAssertEqual(ProxyDirectives.spec("hold_timeout")?.scope, .builtin)
        XCTAssertEqual(ProxyDirectives.spec("pool_mode")?.scope, .pgbouncer)
        XCTAssertEqual(ProxyDirectives.defaultValue("dcs_failure_policy"), .string(DCSFailurePolicy.fence.rawValue))
    }

    /// `route_to` and `replica_fallback` take their words; `max_replica_lag` a size as PostgreSQL
    /// writes one. Anything else is an error that names the directive and the form it takes.
    func testReplicaDirectivesTakeTheirValuesAndSayWhatIsWrong() {
        XCTAssertEqual(ProxyDirectives.defaultValue("route_to"), .string("lead_master"))
        XCTAssertNil(ProxyDirectives.defaultValue("max_replica_lag"), "no bound unless one is set")
        XCTAssertEqual(ProxyDirectives.defaultValue("replica_fallback"), .string("none"), "a fallback is never the default")
        let route = ProxyDirectives.spec("route_to")!
        XCTAssertEqual(try route.parse(.text("Replica")).get(), .string("replica"))
        guard case .failure(let bad) = route.parse(.text("replicas")) else { return XCTFail("replicas accepted") }
        XCTAssertEqual(bad.description, "invalid value 'replicas' for 'route_to': expected one of lead_master, replica")
        let lag = ProxyDirectives.spec("max_replica_lag")!
        for (raw, bytes) in [(RawValue.number(1048576), 1 << 20), (.text("16MB"), 16 << 20), (.text("512 kB"), 512 << 10),
                             (.text("1GB"), 1 << 30), (.text("2tb"), 2 << 40), (.text("100"), 100), (.text("0"), 0)] {
            XCTAssertEqual(try lag.parse(raw).get(), .integer(bytes), "\(raw)")
        }
        for raw in [RawValue.text("16 MiB"), .text("1.5GB"), .text("-1"), .text("MB"), .number(1.5), .boolean(true), .text("99999999999TB")] {
            guard case .failure(let error) = lag.parse(raw) else { return XCTFail("\(raw) accepted") }
            XCTAssertEqual(error.description, "invalid value \(raw.display) for 'max_replica_lag': expected a size: a number of bytes, or a number with kB, MB, GB or TB (e.g. 16MB)")
        }
        XCTAssertEqual(try ProxyDirectives.spec("replica_fallback")!.parse(.text("lead_master")).get(), .string("lead_master"))
    }
}

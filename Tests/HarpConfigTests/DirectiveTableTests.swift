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
            let expected: String = switch spec.defaultValue ?? .string("") {
            case .string: "String"
            case .integer: "Int"
            case .duration: "Duration"
            case .boolean: "Bool"
            }
            XCTAssertEqual(type, expected, name)
        }
    }

    func testTheAdditionsAreTheThreeHARPDoesNotHave() {
        XCTAssertEqual(ProxyDirectives.all.filter { !$0.harp }.map(\.name).sorted(), ["dcs_failure_policy", "hold_timeout", "pool_mode"])
        XCTAssertEqual(ProxyDirectives.spec("hold_timeout")?.scope, .builtin)
        XCTAssertEqual(ProxyDirectives.spec("pool_mode")?.scope, .pgbouncer)
        XCTAssertEqual(ProxyDirectives.defaultValue("dcs_failure_policy"), .string(DCSFailurePolicy.fence.rawValue))
    }
}

@testable import HarpProxy
import XCTest

/// Which instance gets a listener when the effective directives of two ask for the same one.
final class ListenerClaimsTests: XCTestCase {
    typealias Claim = ListenerClaims.Claim

    func testDistinctListenersAreAllGranted() {
        XCTAssertEqual(ListenerClaims.refusals([
            Claim(instance: "p1", address: "0.0.0.0", port: 6432, heldBefore: false),
            Claim(instance: "p2", address: "0.0.0.0", port: 6433, heldBefore: false),
            Claim(instance: "p3", address: "127.0.0.1", port: 6434, heldBefore: false),
            Claim(instance: "p4", address: "127.0.0.2", port: 6434, heldBefore: false),
        ]), [:])
    }

    func testAtAStartTheInstanceDefinedFirstGetsTheAddress() {
        let refused = ListenerClaims.refusals([
            Claim(instance: "p1", address: "0.0.0.0", port: 6432, heldBefore: false),
            Claim(instance: "p2", address: "127.0.0.1", port: 6432, heldBefore: false),
        ])
        XCTAssertEqual(Array(refused.keys), ["p2"], "a wildcard address overlaps every address on its port")
        XCTAssertEqual(refused["p2"], "cannot listen on 127.0.0.1:6432: address in use by instance 'p1' (0.0.0.0:6432); give 'p2' its own listen_port")
    }

    func testTheHolderKeepsItsAddressWhenAnotherIsMovedOntoIt() {
        let refused = ListenerClaims.refusals([
            Claim(instance: "p1", address: "127.0.0.1", port: 7000, heldBefore: false),  // moved onto p2's port
            Claim(instance: "p2", address: "127.0.0.1", port: 7000, heldBefore: true),
        ])
        XCTAssertEqual(Array(refused.keys), ["p1"])
        XCTAssertTrue(refused["p1"]?.contains("by instance 'p2'") == true)
    }
}

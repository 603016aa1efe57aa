@testable import HarpProxy
import NIOCore
import XCTest

/// Where a cut session may be told why: only between two of the lead master's messages, never
/// inside one, never in an encrypted stream, never while an encryption request awaits its answer.
final class SessionFramingTests: XCTestCase {
    private func request(_ code: Int32) -> [UInt8] {
        var message = ByteBuffer()
        message.writeInteger(Int32(8))
        message.writeInteger(code)
        return Array(message.readableBytesView)
    }

    private func message(_ type: Character, _ body: [UInt8]) -> [UInt8] {
        var message = ByteBuffer()
        message.writeString(String(type))
        message.writeInteger(Int32(body.count + 4))
        message.writeBytes(body)
        return Array(message.readableBytesView)
    }

    /// What a server answers a plain startup: AuthenticationOk, a ParameterStatus, BackendKeyData,
    /// ReadyForQuery; and the offsets where each message ends.
    private func serverAnswer() -> (bytes: [UInt8], ends: Set<Int>) {
        let messages = [message("R", [0, 0, 0, 0]), message("S", Array("server_version\u{0}15.8\u{0}".utf8)),
                        message("K", [0, 0, 0, 1, 0, 0, 0, 2]), message("Z", Array("I".utf8)),
                        message("D", Array(repeating: 7, count: 70_000))]
        var bytes: [UInt8] = []
        var ends: Set<Int> = []
        for m in messages {
            bytes += m
            ends.insert(bytes.count)
        }
        return (bytes, ends)
    }

    /// Feeds `bytes` in pieces of `step` and checks the boundary after each piece.
    private func feedServer(_ framing: SessionFraming, _ bytes: [UInt8], step: Int, ends: Set<Int>, offset: Int = 0,
                            file: StaticString = #filePath, line: UInt = #line) {
        var at = 0
        while at < bytes.count {
            let next = min(bytes.count, at + step)
            framing.serverSent(ByteBuffer(bytes: bytes[at..<next]))
            at = next
            XCTAssertEqual(framing.atBoundary, ends.contains(at), "after \(at) bytes in pieces of \(step)", file: file, line: line)
        }
    }

    func testAPlainSessionIsAtABoundaryOnlyBetweenMessages() {
        let (bytes, ends) = serverAnswer()
        for step in [1, 2, 3, 5, 7, 64, 4096, bytes.count] {
            let framing = SessionFraming()
            framing.clientSent(ByteBuffer(bytes: startupMessage()))
            XCTAssertTrue(framing.atBoundary, "nothing from the server yet")
            feedServer(framing, bytes, step: step, ends: ends)
        }
    }

    func testAnSSLRequestAnsweredNIsFollowedInPlainText() {
        let (bytes, ends) = serverAnswer()
        for step in [1, 3, 4096] {
            let framing = SessionFraming()
            // The request arrives in two pieces; its one-byte answer is owed until it comes.
            let ssl = request(PostgresWire.sslRequestCode)
            framing.clientSent(ByteBuffer(bytes: ssl[0..<3]))
            framing.clientSent(ByteBuffer(bytes: ssl[3...]))
            XCTAssertFalse(framing.atBoundary, "an SSLRequest awaits its one-byte answer")
            framing.serverSent(ByteBuffer(bytes: Array("N".utf8)))
            XCTAssertTrue(framing.atBoundary)
            framing.clientSent(ByteBuffer(bytes: request(PostgresWire.gssEncRequestCode) + []))
            XCTAssertFalse(framing.atBoundary)
            framing.serverSent(ByteBuffer(bytes: Array("N".utf8)))
            framing.clientSent(ByteBuffer(bytes: startupMessage()))
            feedServer(framing, bytes, step: step, ends: ends)
        }
    }

    func testAnEncryptedSessionIsNeverAtABoundary() {
        for answer in ["S", "G"] {
            let framing = SessionFraming()
            framing.clientSent(ByteBuffer(bytes: request(answer == "S" ? PostgresWire.sslRequestCode : PostgresWire.gssEncRequestCode)))
            framing.serverSent(ByteBuffer(bytes: Array(answer.utf8)))
            XCTAssertFalse(framing.atBoundary)
            // TLS records that happen to look like messages change nothing.
            framing.clientSent(ByteBuffer(bytes: startupMessage()))
            framing.serverSent(ByteBuffer(bytes: message("Z", Array("I".utf8))))
            XCTAssertFalse(framing.atBoundary, "after '\(answer)'")
        }
    }

    func testACancelRequestOrBytesThatAreNotPostgreSQLAreNeverAtABoundary() {
        let cancel = SessionFraming()
        var bytes = ByteBuffer()
        bytes.writeInteger(Int32(16))
        bytes.writeInteger(PostgresWire.cancelRequestCode)
        bytes.writeInteger(Int64(42))
        cancel.clientSent(bytes)
        XCTAssertFalse(cancel.atBoundary)

        let garbage = SessionFraming()
        garbage.clientSent(ByteBuffer(bytes: startupMessage()))
        garbage.serverSent(ByteBuffer(bytes: [UInt8(ascii: "E"), 0, 0, 0, 2]))  // a length below 4
        XCTAssertFalse(garbage.atBoundary)
        garbage.serverSent(ByteBuffer(bytes: message("Z", Array("I".utf8))))
        XCTAssertFalse(garbage.atBoundary, "once lost, never found again")


        // PostgreSQL 17's sslnegotiation=direct: a TLS ClientHello with no SSLRequest before it.
        let direct = SessionFraming()
        direct.clientSent(ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]))
        XCTAssertFalse(direct.atBoundary, "a TLS stream from its first byte")
        direct.serverSent(ByteBuffer(bytes: [0x16, 0x03, 0x03, 0x00, 0x7a, 0x02]))
        XCTAssertFalse(direct.atBoundary)
    }
}

import HarpCluster
import NIOCore

/// The few PostgreSQL protocol messages the proxy speaks itself: it never parses a session (it
/// follows only where its messages end, see `SessionFraming`), but it must answer a client it
/// cannot serve, or tell one it cuts why, in words libpq shows ("no lead master for location
/// dc1"), not with a bare disconnect.
enum PostgresWire {
    static let sslRequestCode: Int32 = 80877103
    static let gssEncRequestCode: Int32 = 80877104
    static let cancelRequestCode: Int32 = 80877102
    /// Startup packets larger than this are not PostgreSQL's (libpq's limit is 10000).
    static let maximumStartupLength = 10_000

    /// An ErrorResponse with severity FATAL, a SQLSTATE and a message.
    static func errorResponse(sqlstate: String, message: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var fields = allocator.buffer(capacity: 64 + message.utf8.count)
        for (code, value) in [("S", "FATAL"), ("V", "FATAL"), ("C", sqlstate), ("M", message)] {
            fields.writeString(code)
            fields.writeString(value)
            fields.writeInteger(UInt8(0))
        }
        fields.writeInteger(UInt8(0))
        var message = allocator.buffer(capacity: fields.readableBytes + 5)
        message.writeString("E")
        message.writeInteger(Int32(fields.readableBytes + 4))
        message.writeBuffer(&fields)
        return message
    }

    enum StartupStep: Equatable {
        /// More bytes are needed.
        case needMore
        /// An SSLRequest or GSSENCRequest (8 bytes, consumed): answer 'N' and read on.
        case encryptionRequest
        /// A complete startup message (consumed): now the error can be sent.
        case startup
        /// A CancelRequest, or bytes that are not PostgreSQL: close without a word.
        case close
    }

    /// Reads the next step of a client's startup from `buffer`, consuming what it recognises.
    static func nextStartupStep(_ buffer: inout ByteBuffer) -> StartupStep {
        guard buffer.readableBytes >= 8,
              let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self),
              let code = buffer.getInteger(at: buffer.readerIndex + 4, as: Int32.self) else { return .needMore }
        guard length >= 8, Int(length) <= maximumStartupLength else { return .close }
        if length == 8 && (code == sslRequestCode || code == gssEncRequestCode) {
            buffer.moveReaderIndex(forwardBy: 8)
            return .encryptionRequest
        }
        if code == cancelRequestCode { return .close }
        guard buffer.readableBytes >= Int(length) else { return .needMore }
        buffer.moveReaderIndex(forwardBy: Int(length))
        return .startup
    }
}

/// Why a client is not served, as the ErrorResponse it gets.
struct Refusal: Error, Sendable {
    var sqlstate: String
    var message: String

    /// `location` nil: the instance names none and has none to follow (the reason is added).
    static func noLeader(location: String?, instance: String) -> Refusal {
        guard let location else { return Refusal(sqlstate: "57P03", message: "no location to follow (proxy \(instance))") }
        return Refusal(sqlstate: "57P03", message: "no lead master for location \(location) (proxy \(instance))")
    }

    static func tooMany(instance: String) -> Refusal {
        Refusal(sqlstate: "53300", message: "too many connections for proxy \(instance)")
    }

    static func cannotConnect(leader: String, error: String) -> Refusal {
        Refusal(sqlstate: "08006", message: "cannot connect to the lead master \(leader): \(error)")
    }

    /// A lead master that never takes writes (a standby cluster's leader), in PostgreSQL's
    /// 57P03 words.
    static func readOnlyLeader(_ reason: String, instance: String) -> Refusal {
        Refusal(sqlstate: "57P03", message: "the database system is not accepting writes: \(reason) (proxy \(instance))")
    }

    static let shuttingDown = Refusal(sqlstate: "57P01", message: "harp-proxy is shutting down")

    /// Why a session is cut, as 57P01 (what PostgreSQL sends a session it terminates, and what
    /// drivers and pools take as "reconnect").
    static func cut(instance: String, location: String, from previous: LeaderTarget?, to next: LeaderTarget?, fenced: String?) -> Refusal {
        let why: String
        if let fenced {
            why = "the proxy is fenced: \(fenced)"
        } else if let next {
            why = "the lead master of location \(location) moved from \(previous?.name ?? "none") to \(next.name)"
        } else {
            why = "location \(location) has no lead master"
        }
        return Refusal(sqlstate: "57P01", message: "terminating connection because \(why) (proxy \(instance))")
    }
}

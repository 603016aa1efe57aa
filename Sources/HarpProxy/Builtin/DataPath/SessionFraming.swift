import NIOCore

/// Where a session's message boundaries are in what the lead master sends the client, followed
/// as the bytes pass: a session the proxy cuts (the lead master moved, the DCS is lost, the proxy
/// stops) then ends with an ErrorResponse that libpq shows, instead of "server closed the
/// connection unexpectedly", whenever the cut falls between two messages.
///
/// Only headers are read: a message's type and length, then its length is skipped. The client's
/// side is read only until its startup message, to count the SSLRequest and GSSENCRequest
/// packets whose one-byte answers come first. Once the lead master accepts encryption ('S' or
/// 'G') the stream is opaque and nothing is ever added to it. Anything that does not look like
/// PostgreSQL makes it opaque too. Confined to the session's relay thread once it starts.
final class SessionFraming {
    // The client's side, until its startup message.
    private var clientStarted = false
    private var clientHeader: UInt64 = 0
    private var clientHeaderBytes = 0
    /// SSLRequest and GSSENCRequest packets passed on whose one-byte answers are still to come.
    private var answersDue = 0

    // The lead master's side.
    private var opaque = false
    private var serverHeader: UInt64 = 0
    private var serverHeaderBytes = 0
    private var serverSkip = 0

    /// True when everything the lead master sent so far ends a message, and nothing is owed to
    /// an encryption request: a message added now is read as the session's next one.
    var atBoundary: Bool {
        !opaque && answersDue == 0 && serverHeaderBytes == 0 && serverSkip == 0
    }

    /// Bytes from the client, before they are passed on.
    func clientSent(_ buffer: ByteBuffer) {
        guard !clientStarted else { return }
        buffer.withUnsafeReadableBytes { clientSent($0) }
    }

    /// Bytes from the lead master, before they are passed on.
    func serverSent(_ buffer: ByteBuffer) {
        guard !opaque else { return }
        buffer.withUnsafeReadableBytes { serverSent($0) }
    }

    /// Bytes from the client, before they are passed on.
    func clientSent(_ bytes: UnsafeRawBufferPointer) {
        guard !clientStarted else { return }
        var i = 0
        while i < bytes.count, !clientStarted {
            while clientHeaderBytes < 8, i < bytes.count {
                clientHeader = clientHeader << 8 | UInt64(bytes[i])
                clientHeaderBytes += 1
                i += 1
            }
            guard clientHeaderBytes == 8 else { return }
            let length = Int(Int32(truncatingIfNeeded: clientHeader >> 32))
            let code = Int32(truncatingIfNeeded: clientHeader)
            clientHeader = 0
            clientHeaderBytes = 0
            if length == 8, code == PostgresWire.sslRequestCode || code == PostgresWire.gssEncRequestCode {
                answersDue += 1  // 8 bytes: the next packet follows at once
                continue
            }
            clientStarted = true
            // A startup message of protocol 3: the lead master answers in messages from
            // here on. A CancelRequest (answered with nothing), a TLS ClientHello sent
            // directly (PostgreSQL 17's sslnegotiation=direct) or anything else: opaque.
            let startup = length > 8 && length <= PostgresWire.maximumStartupLength && code >> 16 == 3
            if !startup { opaque = true }
        }
    }

    /// Bytes from the lead master, before they are passed on.
    func serverSent(_ bytes: UnsafeRawBufferPointer) {
        guard !opaque else { return }
        var i = 0
        while i < bytes.count, !opaque {
            if serverSkip > 0 {
                let n = min(serverSkip, bytes.count - i)
                serverSkip -= n
                i += n
                continue
            }
            if answersDue > 0, serverHeaderBytes == 0 {
                answersDue -= 1
                // 'N': no encryption, the client goes on in plain text. 'S' or 'G': what
                // follows is encrypted. Anything else is not worth guessing about.
                if bytes[i] != UInt8(ascii: "N") { opaque = true }
                i += 1
                continue
            }
            while serverHeaderBytes < 5, i < bytes.count {
                serverHeader = serverHeader << 8 | UInt64(bytes[i])
                serverHeaderBytes += 1
                i += 1
            }
            guard serverHeaderBytes == 5 else { return }
            let length = Int(Int32(truncatingIfNeeded: serverHeader))
            serverHeader = 0
            serverHeaderBytes = 0
            guard length >= 4 else {
                opaque = true
                return
            }
            serverSkip = length - 4
        }
    }
}

import NIOCore

/// The data path of an established session: joins a client's channel to its lead master's once
/// the setup is done, and ends a session the proxy cuts. The mode and the setup know nothing of
/// how bytes pass; the user-space NIO glue (`GlueDataPath`) is the one built in.
protocol DataPath: Sendable {
    /// Joins `client` to `server`, on the client's loop (both channels are on it). `kept`, what
    /// the client sent during setup, goes to the lead master first. Throws if the pipelines
    /// cannot take it; the caller then closes both.
    func join(client: any Channel, server: any Channel, kept: ByteBuffer?) throws

    /// Ends a session the proxy cuts, on the client's loop: `error` (an ErrorResponse) first
    /// where the session sits between two of the lead master's messages, then both sides close.
    func cut(_ client: any Channel, with error: ByteBuffer)
}

/// Bytes pass through this process: a `GlueHandler` on each channel, writing what one reads to
/// the other, with the session's message boundaries tracked for a cut.
struct GlueDataPath: DataPath {
    let traffic: Traffic

    func join(client: any Channel, server: any Channel, kept: ByteBuffer?) throws {
        let framing = SessionFraming()
        let (clientSide, serverSide) = GlueHandler.matchedPair(traffic: traffic, framing: framing)
        try server.pipeline.syncOperations.addHandler(serverSide)
        try client.pipeline.syncOperations.addHandler(clientSide)
        if let kept, kept.readableBytes > 0 {
            framing.clientSent(kept)
            server.writeAndFlush(kept, promise: nil)
        }
    }

    func cut(_ client: any Channel, with error: ByteBuffer) {
        GlueHandler.cut(client, with: error)
    }
}

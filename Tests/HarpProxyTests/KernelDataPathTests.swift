import Foundation
import HarpCluster
import HarpConfig
@testable import HarpProxy
import HarpTestFixtures
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `data_path: kernel`: clients joined to the lead master by a BPF sockmap, through real etcd and
/// real PostgreSQL. The tests run as root (CI does); elsewhere the kernel path cannot be opened
/// and they are skipped, since the instance then passes bytes in user space as the others test.
final class KernelDataPathTests: XCTestCase {
    var a: PostgresServer { SharedPostgres.first }
    var b: PostgresServer { SharedPostgres.second }

    private func kernelRig(port: Int, _ extra: [String: DirectiveValue] = [:]) async throws -> ProxyRig {
        try XCTSkipUnless(getuid() == 0, "the kernel data path needs CAP_BPF and CAP_NET_ADMIN")
        var directives: [String: DirectiveValue] = ["data_path": .string("kernel"), "max_client_conn": .integer(2000)]
        directives.merge(extra) { $1 }
        let rig = try await ProxyRig.routing(port: port, directives, node1: a, node2: b)
        XCTAssertFalse(rig.capture.all.contains { $0.message.contains("data_path kernel is not available") },
                       "\(rig.capture.all.filter { $0.message.contains("data_path kernel") }.map { "\($0.metadata)" })")
        return rig
    }

    /// The restart of a client whose connect was under way happens before any join.
    func testClientsConnectingToALeaderThatIsDownGoToTheNewOneWhenItIsNamed() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port, ["timeout": .duration(.seconds(60))])
        try await clientsConnectingToADownLeaderGoToTheNewOne(rig: rig, port: port, newLeader: "node2", newPort: b.port)
        await rig.stop()
    }

    /// An echo server (socat) as the lead master, and a client joined to it in the kernel: a first
    /// word, answered, so that the join is made before anything large (a client may send only
    /// 64 KiB before the lead master is connected). The echo starts 0.3 s late: an answer that
    /// came before the join would keep the client in user space. `-t 60`: socat otherwise ends a
    /// connection 0.5 s after the client's EOF.
    private func joinedEchoClient(rig: ProxyRig, port: Int) async throws -> (CInt, TestProcess) {
        let (fd, echo) = try await echoClient(rig: rig, port: port)
        let joined = await rig.counters("p1")
        XCTAssertEqual(joined.inKernel, 1)
        return (fd, echo)
    }

    func testAClientIsJoinedInTheKernelAndCutAtASwitchover() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)")

        let session = try openSession(through: port, tag: "kernel-switchover", logDirectory: rig.etcd.directory.path)
        XCTAssertTrue(waitForActivity(on: a, "kernel-switchover"), "the transaction is open on node1, through the kernel path")
        let joined = await rig.counters("p1")
        XCTAssertEqual(joined.current, 1)
        XCTAssertEqual(joined.inKernel, 1, "the session is joined in the kernel, not glued in user space")

        try await rig.leader("dc1", "node2")
        XCTAssertTrue(eventually(timeout: 5) { !session.isRunning }, "the joined session is cut when the leader key changes")
        XCTAssertNotEqual(session.waitForExit(), 0)
        XCTAssertTrue(waitForActivity(on: a, "kernel-switchover", count: 0, timeout: 5), "node1's side is closed too")
        XCTAssertEqual(try serverPort(through: port).get(), "\(b.port)", "the next connection lands on node2")

        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained)
        let after = await rig.counters("p1")
        XCTAssertEqual(after.inKernel, 0)
        XCTAssertGreaterThan(after.bytesToServer, 100, "bytes passed in the kernel are counted")
        XCTAssertGreaterThan(after.bytesToClient, 100)
        await rig.stop()
    }

    /// Joined sessions cut between two messages read why, as in user space: idle, after an
    /// SSLRequest answered 'N', inside a transaction, and at a stop (the lead master's last
    /// message was a ReadyForQuery; see `KernelDataPath.sayGoodbye`).
    func testAJoinedSessionCutBetweenMessagesIsToldWhy() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        try await sessionsCutBetweenMessagesAreToldWhy(rig: rig, port: port, node1: a, node2: b, inKernel: true)
    }

    /// TLS from the client to PostgreSQL through the kernel path (the proxy passes the encrypted
    /// bytes on unseen), and a cut that adds nothing to the stream.
    func testATLSSessionPassesThroughTheKernelAndIsCutWithNothingAdded() async throws {
        try XCTSkipUnless(getuid() == 0, "the kernel data path needs CAP_BPF and CAP_NET_ADMIN")
        try await tlsSessionPassesThroughAndIsCutWithNothingAdded(port: freePort(), newLeader: b, ["data_path": .string("kernel")]) { counters in
            XCTAssertEqual(counters.inKernel, 1, "the TLS session is joined in the kernel")
        }
    }

    func testOnlyAWholeReadyForQueryEndsAMessage() {
        XCTAssertTrue(KernelDataPath.isReadyForQuery([0x5A, 0, 0, 0, 5, UInt8(ascii: "I")]))
        XCTAssertTrue(KernelDataPath.isReadyForQuery([0x5A, 0, 0, 0, 5, UInt8(ascii: "T")]))
        XCTAssertTrue(KernelDataPath.isReadyForQuery([0x5A, 0, 0, 0, 5, UInt8(ascii: "E")]))
        XCTAssertFalse(KernelDataPath.isReadyForQuery([0x5A, 0, 0, 0, 5, UInt8(ascii: "X")]), "not a transaction status")
        XCTAssertFalse(KernelDataPath.isReadyForQuery([0x5A, 0, 0, 0, 6, UInt8(ascii: "I")]), "not its length")
        XCTAssertFalse(KernelDataPath.isReadyForQuery([0x44, 0, 0, 0, 5, UInt8(ascii: "I")]), "not 'Z'")
        XCTAssertFalse(KernelDataPath.isReadyForQuery([0, 0, 0, 0, 0, 0]), "an input shorter than 6 bytes leaves zeros")
    }

    /// A result far larger than the kernel may hold for a reader that does not read: the pair moves
    /// to user space, and the client still gets every byte, in order.
    func testASlowReaderMovesToUserSpaceAndGetsEveryByteInOrder() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let copy = "COPY (SELECT g, md5(g::text) FROM generate_series(1, 1500000) g) TO STDOUT"
        func checksum(_ port: Int, slow: Bool) throws -> String {
            let psql = "\(PostgresServer.binDirectory)/psql -X -h 127.0.0.1 -p \(port) -U postgres -d postgres -c \"\(copy)\""
            // `sleep` before `cat`: psql's output pipe fills, psql stops reading its socket, and the
            // lead master's rows pile up in front of the client.
            let reader = slow ? "(sleep 2; cat)" : "cat"
            let result = try runCommand("/bin/bash", ["-c", "set -o pipefail; \(psql) | \(reader) | md5sum"],
                                        environment: ["PATH": "/usr/bin:/bin", "PGSSLMODE": "disable"])
            guard result.status == 0 else { throw FixtureError(result.output) }
            return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let direct = try checksum(a.port, slow: false)
        let proxied = Result { try checksum(port, slow: true) }
        if (try? proxied.get()) != direct, rig.repeatStopped() {
            // Reset after a correct prefix (psql fails): the checksum cannot tell more.
        } else {
            XCTAssertEqual(try proxied.get(), direct, "every byte arrived, in order")
        }
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") },
                      "the pair left the kernel when its reader fell behind")
        let fast = try checksum(port, slow: false)
        XCTAssertEqual(fast, direct)
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained)
        let counters = await rig.counters("p1")
        XCTAssertGreaterThan(counters.bytesToClient, 2 * 50_000_000, "both results counted, in the kernel and after the move")
        await rig.stop()
    }

    /// A reader that falls behind holds the lead master back: once the pair is parked to move to
    /// user space, the backend waits in ClientWrite instead of handing the rest of a result to the
    /// kernel's memory. (Parked input is charged to the socket's receive buffer; were it not, or
    /// were the pair left in the kernel path, the backend would finish the COPY and go idle while
    /// the client sleeps.) The move completes once the client reads again, and the result arrives
    /// whole, in order.
    func testALeadMasterIsHeldBackWhileTheClientDoesNotRead() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let copy = "COPY (SELECT g, md5(g::text) FROM generate_series(1, 1500000) g) TO STDOUT /* held-back */"
        let direct = try runCommand("/bin/bash", ["-c", "\(PostgresServer.binDirectory)/psql -X -h 127.0.0.1 -p \(a.port) -U postgres -d postgres -c \"\(copy)\" | md5sum"],
                                    environment: ["PATH": "/usr/bin:/bin"])
        let sum = rig.etcd.directory.path + "/held-back.md5"
        let reader = try TestProcess(name: "held-back", executable: "/bin/bash",
                                     arguments: ["-c", "set -o pipefail; \(PostgresServer.binDirectory)/psql -X -h 127.0.0.1 -p \(port) -U postgres -d postgres -c \"\(copy)\" | (sleep 6; cat) | md5sum > \(sum)"],
                                     logDirectory: rig.etcd.directory.path, environment: ["PATH": "/usr/bin:/bin", "PGSSLMODE": "disable"])
        let held = eventually(timeout: 5) {
            (try? a.query("SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'COPY%held-back%' AND pid <> pg_backend_pid()")) == "ClientWrite"
        }
        XCTAssertTrue(held, "the backend waits to write while the client does not read: \((try? a.query("SELECT state, wait_event FROM pg_stat_activity WHERE query LIKE 'COPY%held-back%' AND pid <> pg_backend_pid()")) ?? "?")")
        let exit = reader.waitForExit()
        let got = try? String(contentsOfFile: sum, encoding: .utf8)
        if exit != 0 || got != direct.output, rig.repeatStopped() {
            // Reset after a correct prefix: psql fails.
        } else {
            XCTAssertEqual(exit, 0)
            XCTAssertEqual(got, direct.output, "every byte arrived, in order")
        }
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") },
                      "the pair left the kernel when its reader fell behind")
        await rig.stop()
    }

    /// A client reset while its result piles up in front of it (the pair moving to user space):
    /// the connection ends at once on both sides, and is not reported as bytes lost.
    func testAClientResetWhileItsResultPilesUpEndsTheConnection() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let fd = try await copyNotRead(through: port, tag: "reset-reader", on: a)
        resetAndClose(fd)
        let ended = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(ended, "the connection ends")
        XCTAssertTrue(waitForActivity(on: a, "reset-reader", count: 0, timeout: 5), "the lead master's side is closed too")
        XCTAssertFalse(rig.capture.all.contains { $0.message.contains("the kernel lost") }, "a reset is not reported as bytes lost")
        await rig.stop()
    }

    /// The same after the move to user space: the client reads enough for the move to complete,
    /// stops reading again (the lead master is held back again, now by the glue), then resets.
    /// The lead master's socket, whose input waits parked, is closed with a reset too, so its
    /// backend ends at once instead of at its next window probe.
    func testAClientResetAfterTheMoveEndsTheLeadMastersSideAtOnce() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let fd = try await copyNotRead(through: port, tag: "moved-reset", on: a)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var read = 0
        var moved = false
        let deadline = Date().addingTimeInterval(20)
        while !moved, Date() < deadline {
            if read < 40 << 20 {
                let n = recv(fd, &buffer, buffer.count, CInt(MSG_DONTWAIT))
                if n > 0 {
                    read += n
                    continue
                }
            }
            moved = rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") }
            if !moved { usleep(10_000) }
        }
        XCTAssertTrue(moved, "the pair moved to user space once the client read (\(read) bytes)")
        let held = heldBack(on: a, tag: "moved-reset")
        if !held, rig.repeatStopped() {
            // Reset by the proxy already: its backend must end all the same.
            XCTAssertTrue(waitForActivity(on: a, "moved-reset", count: 0, timeout: 2), "the backend ends at once")
            close(fd)
            await rig.stop()
            return
        }
        XCTAssertTrue(held, "with the client no longer reading, the backend waits to write again")
        // Held back for a while: the backend's zero-window probes back off (0.2 s, doubling), so
        // its next one is seconds away when the client goes. Only a reset reaches it sooner.
        try await Task.sleep(for: .seconds(8))
        resetAndClose(fd)
        XCTAssertTrue(waitForActivity(on: a, "moved-reset", count: 0, timeout: 2), "the backend ends at once")
        let ended = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(ended)
        await rig.stop()
    }

    /// `echoBack` (see there) through a kernel-path instance. True if the pair moved to user space on the way.
    private func echoBack(_ payload: [UInt8], readAfter: Duration) async throws -> Bool {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let (fd, echo) = try await joinedEchoClient(rig: rig, port: port)
        try await HarpProxyTests.echoBack(payload, readAfter: readAfter, fd: fd, echo: echo, rig: rig)
        return rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") }
    }

    /// A client that sends 6 MB and half-closes, to an echo server that answers everything and
    /// closes after the client's FIN: every byte comes back before the EOF, both ways.
    func testAHalfCloseIsPassedOnOnlyAfterEveryByteBeforeIt() async throws {
        _ = try await echoBack(indexedBytes(6 << 20), readAfter: .zero)
    }

    /// Both ways at once, with a reader that starts late: the client streams 24 MB to an echo
    /// server and half-closes while the echo piles up in front of it, so the pair moves to user
    /// space with bytes under way in both directions and the client's FIN among them. Every byte
    /// comes back, in order, then the EOF.
    func testAFloodBothWaysWithALateReaderMovesToUserSpaceAndLosesNothing() async throws {
        // Not reading for 2 s: the echo backs up in front of this client, beyond the 8 MiB the
        // kernel path lets wait, while this side keeps sending.
        let moved = try await echoBack(indexedBytes(24 << 20), readAfter: .seconds(2))
        XCTAssertTrue(moved, "the pair left the kernel when its reader fell behind")
    }

    func testAClientThatHalfClosesAndReadsLateStillMovesToUserSpace() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        try await halfCloseThenReadLate(rig: rig, port: port) { joined in XCTAssertEqual(joined.inKernel, 1) }
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") },
                      "the pair left the kernel although the client had half-closed")
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained, "the pair ends once both sides have closed")
        await rig.stop()
    }

    /// The lead master sends most of a large answer, pauses, then sends the rest and closes, to a
    /// client that has half-closed and does not read yet: the pair is parked before the rest
    /// comes, so the rest waits in the lead master's socket, which has closed by the time the
    /// client reads and the pair moves to user space. NIO reads such a socket to its end the
    /// moment it takes it over; the rest must still reach the client, then the EOF. (Whether the
    /// glue is there in time was a race, seen once in 1,400 stress runs; `AdoptedSocketTests`
    /// checks that part without one.)
    func testAnAnswerParkedAfterTheLeadMasterClosedStillArrivesWhole() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        try await halfCloseThenReadLate(rig: rig, port: port, size: 28 << 20, pauseAfter: 24 << 20) { joined in
            XCTAssertEqual(joined.inKernel, 1)
        }
        XCTAssertTrue(rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") },
                      "the pair left the kernel")
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained, "the pair ends once both sides have closed")
        await rig.stop()
    }

    /// Linux's two faults in a move to user space, made to happen (see
    /// `KernelDataPath.InjectedFaults`; Linux shows them rarely and at random), through the real
    /// path: the client reads a correct prefix, then a reset (never a gap, a repeat, or an end of
    /// stream that looks whole); an ERROR says what happened; the instance counts it for
    /// `harp_proxy_kernel_faults_total`; and the pair's sockets are gone.
    private func faultInAMove(lost: UInt64 = 0, repeated: UInt64 = 0, error: String,
                              file: StaticString = #filePath, line: UInt = #line) async throws -> ClientCounters {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        let path = try KernelDataPath.shared().get()
        path.injectAtNextMove(lost: lost, repeated: repeated)
        defer { path.injectAtNextMove() }
        // The last 4 MiB come 0.3 s after the rest, when the pair is parked (more than 8 MiB wait
        // for the client): so the lead master's socket still holds input after the move, and the
        // check that a repeat trips does read from it. (Without the pause a fast lead master can
        // be read to its end by the kernel before the park, and nothing is read after the move.)
        let (received, reset, sent) = try await halfCloseThenReadLate(rig: rig, port: port, pauseAfter: 16 << 20, checked: false) { joined in
            XCTAssertEqual(joined.inKernel, 1, file: file, line: line)
        }
        // Input lost stops the move before the glue takes over; a repeat shows after.
        XCTAssertEqual(rig.capture.all.contains { $0.message.contains("moved from the kernel data path to user space") }, lost == 0,
                       "the move ended in user space only if nothing was lost", file: file, line: line)
        XCTAssertLessThan(received.count, sent.count, "not all of it", file: file, line: line)
        XCTAssertEqual(memcmp(received, sent, received.count), 0, "what arrived is the stream's beginning, as sent", file: file, line: line)
        XCTAssertTrue(reset, "a reset ends it, not an end of stream that looks whole", file: file, line: line)
        let drained = await eventuallyAsync(timeout: .seconds(5)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained, "the connection is gone", file: file, line: line)
        // Logged on the instance's loop once the pair has ended, which may be after the reset.
        var errors: [String] { rig.capture.all.filter { $0.level == .error }.map(\.message) }
        XCTAssertTrue(eventually(timeout: 5) { !errors.isEmpty }, file: file, line: line)
        XCTAssertEqual(errors.count, 1, "\(errors)", file: file, line: line)
        XCTAssertTrue(errors.first?.contains(error) == true, "\(errors)", file: file, line: line)
        let counters = await rig.counters("p1")
        await rig.stop()
        return counters
    }

    func testInputTheKernelLostInAMoveResetsTheConnectionAndIsCounted() async throws {
        let counters = try await faultInAMove(lost: 1000, error: "the kernel lost 1000 bytes of a connection")
        XCTAssertEqual(counters.kernelLost, 1)
        XCTAssertEqual(counters.kernelRepeated, 0)
    }

    func testInputTheKernelHandedOverTwiceResetsTheConnectionAndIsCounted() async throws {
        let counters = try await faultInAMove(repeated: 100, error: "the kernel handed 100 bytes of a connection to harp-proxy twice")
        XCTAssertEqual(counters.kernelRepeated, 1)
        XCTAssertEqual(counters.kernelLost, 0)
    }

    func testNoDescriptorLeakAfterManyJoinedConnections() async throws {
        let port = freePort()
        let rig = try await kernelRig(port: port)
        _ = try serverPort(through: port).get()
        try await Task.sleep(for: .milliseconds(300))
        let before = openDescriptors()
        for _ in 0..<300 { loopbackConnect(port: port, send: []) }
        for _ in 0..<20 { XCTAssertEqual(try serverPort(through: port).get(), "\(a.port)") }
        let drained = await eventuallyAsync(timeout: .seconds(20)) { await rig.counters("p1").current == 0 }
        XCTAssertTrue(drained)
        try await Task.sleep(for: .milliseconds(500))
        let after = openDescriptors()
        XCTAssertLessThanOrEqual(after, before + 4, "descriptors before: \(before), after 320 connections: \(after)")
        await rig.stop()
    }
}


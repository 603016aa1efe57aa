import CSpawn
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One running PgBouncer: started by harp-proxy (its child) or found through its pidfile (left by
/// an earlier harp-proxy), and the files it reads.
final class PgBouncerProcess {
    struct Failure: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    let pid: pid_t
    /// Started by this process, so reaped with waitpid; an adopted one is only probed.
    let isChild: Bool
    let startedAt: ContinuousClock.Instant

    private init(pid: pid_t, isChild: Bool) {
        self.pid = pid
        self.isChild = isChild
        startedAt = .now
    }

    /// Starts `pgbouncer <ini>` in its own process group (a Ctrl-C meant for harp-proxy must not
    /// reach it), with stdin from /dev/null, harp-proxy's stdout and stderr, and no other
    /// descriptor of ours.
    static func start(binary: String, ini: String) throws(Failure) -> PgBouncerProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        harp_spawn_close_from(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(binary), strdup(ini), nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, binary, &actions, &attributes, argv, environ)
        guard rc == 0 else { throw Failure(message: "cannot start \(binary): \(String(cString: strerror(rc)))") }
        return PgBouncerProcess(pid: pid, isChild: true)
    }

    /// A PgBouncer already running for this instance: the pidfile names a live `pgbouncer`.
    static func adopt(pidFile: String) -> PgBouncerProcess? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
              kill(pid, 0) == 0 || errno == EPERM,
              let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
              comm.trimmingCharacters(in: .whitespacesAndNewlines) == "pgbouncer"
        else { return nil }
        return PgBouncerProcess(pid: pid, isChild: false)
    }

    /// nil while it runs; otherwise how it ended.
    func exitStatus() -> String? {
        if isChild {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == 0 { return nil }
            if r < 0 { return "gone" }
            if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
            return "killed by signal \(status & 0x7f)"
        }
        if kill(pid, 0) == 0 || errno == EPERM { return nil }
        return "gone"
    }

    func signal(_ signal: Int32) { kill(pid, signal) }

    /// SIGTERM (PgBouncer's immediate shutdown), then SIGKILL if it lingers.
    func stop(grace: Duration = .seconds(5)) {
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while exitStatus() == nil {
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                _ = isChild ? waitpid(pid, nil, 0) : 0
                return
            }
            usleep(20_000)
        }
    }
}

/// Files PgBouncer reads: written whole (a temp file renamed over the old one), mode 0600, owned
/// by the user PgBouncer runs as, since it re-reads them on RELOAD after dropping root.
enum PrivateFiles {
    struct Owner: Equatable {
        let name: String
        let uid: uid_t
        let gid: gid_t

        static func named(_ name: String) -> Owner? {
            guard let pw = getpwnam(name) else { return nil }
            return Owner(name: name, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
        }
    }

    static func write(_ text: String, to path: String, owner: Owner?) throws(PgBouncerProcess.Failure) {
        let temp = path + ".tmp-\(getpid())"
        unlink(temp)
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .init(message: "cannot write \(path): \(String(cString: strerror(errno)))") }
        var ok = true
        text.utf8CString.withUnsafeBufferPointer { buffer in
            var offset = 0
            let count = buffer.count - 1
            while offset < count {
                let n = Glibc.write(fd, buffer.baseAddress! + offset, count - offset)
                if n <= 0 { ok = false; return }
                offset += n
            }
        }
        if let owner, fchown(fd, owner.uid, owner.gid) != 0 { ok = false }
        close(fd)
        guard ok, rename(temp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw .init(message: "cannot write \(path): \(reason)")
        }
    }

    /// The private folder: created 0700 for the owner; an existing one is tightened to that.
    static func makeDirectory(_ path: String, owner: Owner?) throws(PgBouncerProcess.Failure) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw .init(message: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        chmod(path, 0o700)
        if let owner, chown(path, owner.uid, owner.gid) != 0 {
            throw .init(message: "cannot give \(path) to \(owner.name): \(String(cString: strerror(errno)))")
        }
    }

    /// A file's text if `owner` (PgBouncer's user) or, without one, this process may read it:
    /// a path from the DCS must not make root copy a file its reader could not see.
    static func readable(_ path: String, by owner: Owner?) -> String? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        if let owner {
            let mode = st.st_mode
            let allowed = (st.st_uid == owner.uid && mode & S_IRUSR != 0) || (st.st_gid == owner.gid && mode & S_IRGRP != 0) || mode & S_IROTH != 0
            guard allowed else { return nil }
        }
        return try? String(contentsOfFile: path, encoding: .utf8)
    }
}

/// A password for the admin console: 40 letters and digits from the system's random source.
func generatedPassword(length: Int = 40) -> String {
    let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
    var generator = SystemRandomNumberGenerator()
    return String((0..<length).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
}

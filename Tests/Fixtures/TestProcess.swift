import CSpawn
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child process a test starts and must stop: its output goes to a log file in the test's folder.
/// Spawned and reaped with posix_spawn and waitpid, so that nothing else reaps it behind our back.
public final class TestProcess: @unchecked Sendable {
    public let name: String
    public let pid: pid_t
    public let logPath: String
    private var exitStatus: Int32?

    public init(name: String, executable: String, arguments: [String], logDirectory: String,
                environment: [String: String]? = nil) throws {
        self.name = name
        logPath = "\(logDirectory)/\(name).log"
        pid = try spawn(executable, arguments, outputPath: logPath, append: true, environment: environment)
        LiveChildren.add(pid)
    }

    public var isRunning: Bool {
        guard exitStatus == nil else { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid || r < 0 {
            exitStatus = status
            LiveChildren.remove(pid)
            return false
        }
        return true
    }

    public func signal(_ signal: Int32) { if exitStatus == nil { kill(pid, signal) } }

    /// Waits for the exit and returns the raw wait status.
    @discardableResult
    public func waitForExit() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus = status
        LiveChildren.remove(pid)
        return status
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    public func stop(grace: TimeInterval = 5) {
        guard isRunning else { return }
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while isRunning && Date() < deadline { usleep(20_000) }
        if isRunning { signal(SIGKILL) }
        waitForExit()
    }

    public func killNow() {
        guard isRunning else { return }
        signal(SIGKILL)
        waitForExit()
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit { killNow() }
}

/// Every child a test started and has not reaped: when the test process exits, those still
/// running are stopped, so that no etcd or PostgreSQL outlives the run.
enum LiveChildren {
    nonisolated(unsafe) private static var pids: Set<pid_t> = []
    private static let lock = NSLock()
    nonisolated(unsafe) private static var registered = false

    static func add(_ pid: pid_t) {
        lock.withLock {
            pids.insert(pid)
            if !registered {
                registered = true
                atexit { LiveChildren.stopAll() }
            }
        }
    }

    static func remove(_ pid: pid_t) { _ = lock.withLock { pids.remove(pid) } }

    static func stopAll() {
        let all = lock.withLock { pids }
        all.forEach { kill($0, SIGTERM) }
        for _ in 0..<50 where all.contains(where: { waitpid($0, nil, WNOHANG) == 0 }) { usleep(100_000) }
        all.forEach { kill($0, SIGKILL) }
    }
}

/// posix_spawn with stdin from /dev/null and stdout and stderr to `outputPath`.
func spawn(_ executable: String, _ arguments: [String], outputPath: String, append: Bool,
           environment: [String: String]?) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // Nothing else of ours reaches the child: not the proxy's listeners, not a test's sockets.
    harp_spawn_close_from(&actions, 3)
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { env.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, nil, argv, env)
    guard rc == 0 else { throw FixtureError("cannot start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// A folder for one test, removed when the object goes away.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(_ label: String = "harp-test") {
        let base = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()
        let template = base + "/\(label)-XXXXXX"
        var bytes = Array(template.utf8CString)
        path = bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        chmod(path, 0o755)
        LiveDirectories.add(path)
    }

    public func file(_ name: String) -> String { "\(path)/\(name)" }

    @discardableResult
    public func write(_ name: String, _ text: String) -> String {
        let p = file(name)
        try? FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: p, contents: Data(text.utf8))
        return p
    }

    deinit {
        LiveDirectories.remove(path)
    }
}

/// Test folders not yet removed. Most go with their `TemporaryDirectory`; those of objects that
/// live until the process ends (the shared PostgreSQL servers, rigs kept by teardown blocks) go
/// at exit, after the processes using them are stopped.
/// `HARP_KEEP_TEST_DIRS=1` keeps them all, for a look after a failure.
enum LiveDirectories {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var paths: Set<String> = []
    nonisolated(unsafe) private static var registered = false
    private static let keep = ProcessInfo.processInfo.environment["HARP_KEEP_TEST_DIRS"] != nil

    static func add(_ path: String) {
        lock.withLock {
            if !registered {
                registered = true
                atexit { LiveDirectories.removeAll() }
            }
            paths.insert(path)
        }
    }

    static func remove(_ path: String) {
        lock.withLock { _ = paths.remove(path) }
        if !keep { try? FileManager.default.removeItem(atPath: path) }
    }

    private static func removeAll() {
        let all = lock.withLock { paths }
        guard !keep else { return }
        LiveChildren.stopAll()  // whatever the order the exit handlers run in
        for path in all { try? FileManager.default.removeItem(atPath: path) }
    }
}

/// Runs a command to completion and returns its exit status and output (stdout and stderr).
@discardableResult
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let output = NSTemporaryDirectory() + "/harp-cmd-\(UUID().uuidString)"
    defer { unlink(output) }
    let pid = try spawn(executable, arguments, outputPath: output, append: false, environment: environment)
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (code, text)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
public func eventually(timeout: TimeInterval = 10, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try condition() { return true }
        usleep(20_000)
    } while Date() < deadline
    return try condition()
}

/// An executable this package builds, found beside the running test bundle.
public func builtExecutable(_ name: String) -> String {
    var url = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).resolvingSymlinksInPath()
    while url.path != "/" && !FileManager.default.isExecutableFile(atPath: url.deletingLastPathComponent().appendingPathComponent(name).path) {
        url.deleteLastPathComponent()
    }
    return url.deletingLastPathComponent().appendingPathComponent(name).path
}

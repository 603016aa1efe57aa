#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The whole file as text, or a `ConfigError` that says why it cannot be read.
func readTextFile(_ path: String) throws(ConfigError) -> String {
    let top = SourceLocation(file: path, line: 1, column: 1)
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ConfigError(top, "cannot read the file: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var info = stat()
    if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
        throw ConfigError(top, "cannot read the file: it is a directory")
    }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw ConfigError(top, "cannot read the file: \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
        if bytes.count > 16 << 20 { throw ConfigError(top, "the file is larger than 16 MiB: not a configuration file") }
    }
    return String(decoding: bytes, as: UTF8.self)
}

func parentDirectory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// A relative path in config.yml is relative to config.yml's folder, not to the working directory.
func resolve(_ path: String, in directory: String) -> String {
    normalized(path.hasPrefix("/") ? path : directory + "/" + path)
}

/// Drops `.` and folds `x/..`, so that messages show `/etc/harp/conf.d`, not `/etc/harp/./x/../conf.d`.
func normalized(_ path: String) -> String {
    var parts: [Substring] = []
    for part in path.split(separator: "/", omittingEmptySubsequences: true) {
        if part == "." { continue }
        if part == "..", let last = parts.last, last != ".." { parts.removeLast(); continue }
        parts.append(part)
    }
    let joined = parts.joined(separator: "/")
    return path.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
}

import Logging
import Synchronization

/// A log level that a reload changes for every logger built on it, copies included (a
/// `Logger` is a value: each mode and task holds its own copy).
public final class LogLevelSetting: Sendable {
    /// The level's index in `Logger.Level.allCases`, or -1 for none.
    private let value: Atomic<Int>

    /// - Parameter level: nil: the wrapped handler's level applies.
    public init(_ level: Logger.Level?) { value = Atomic(Self.code(level)) }

    public var level: Logger.Level? {
        get {
            let code = value.load(ordering: .relaxed)
            return code < 0 ? nil : Logger.Level.allCases[code]
        }
        set { value.store(Self.code(newValue), ordering: .relaxed) }
    }

    /// Sets the level and says so through `logger` (built on this setting), at whichever of the
    /// old and new levels shows the line.
    public func change(to level: Logger.Level?, saying logger: Logger, _ metadata: Logger.Metadata) {
        let shownBefore = logger.logLevel <= .info
        if shownBefore { logger.info("log_level changed", metadata: metadata) }
        self.level = level
        if !shownBefore { logger.info("log_level changed", metadata: metadata) }
    }

    private static func code(_ level: Logger.Level?) -> Int {
        level.flatMap { Logger.Level.allCases.firstIndex(of: $0) } ?? -1
    }
}

/// A handler whose level is `setting`'s when that is set, else the wrapped handler's: an
/// instance's `log_level` over the process's, both changed by SIGHUP without a restart (through
/// their `LogLevelSetting`). Setting `logLevel` on a logger changes that copy only, as with any
/// handler.
public struct LiveLevelHandler: LogHandler {
    public var wrapped: any LogHandler
    public let setting: LogLevelSetting
    private var own: Logger.Level?

    public init(wrapping handler: any LogHandler, setting: LogLevelSetting) {
        wrapped = handler
        self.setting = setting
    }

    public var logLevel: Logger.Level {
        get { own ?? setting.level ?? wrapped.logLevel }
        set { own = newValue }
    }

    public var metadata: Logger.Metadata {
        get { wrapped.metadata }
        set { wrapped.metadata = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { wrapped.metadataProvider }
        set { wrapped.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { wrapped[metadataKey: key] }
        set { wrapped[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) { wrapped.log(event: event) }
}

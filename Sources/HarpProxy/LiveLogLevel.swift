import Logging
import Synchronization

/// A log level that a reload changes for every logger built on it, copies included (a
/// `Logger` is a value: each mode and task holds its own copy).
public final class LogLevelSetting: Sendable {
    private let value: Mutex<Logger.Level?>

    /// - Parameter level: nil: the wrapped handler's level applies.
    public init(_ level: Logger.Level?) { value = Mutex(level) }

    public var level: Logger.Level? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

/// A handler whose level is `setting`'s when that is set, else the wrapped handler's: an
/// instance's `log_level` over the process's, both changed by SIGHUP without a restart.
public struct LiveLevelHandler: LogHandler {
    public var wrapped: any LogHandler
    public let setting: LogLevelSetting

    public init(wrapping handler: any LogHandler, setting: LogLevelSetting) {
        wrapped = handler
        self.setting = setting
    }

    public var logLevel: Logger.Level {
        get { setting.level ?? wrapped.logLevel }
        set { setting.level = newValue }
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

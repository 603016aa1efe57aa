/// This build's version, shown by `--version` and in status output.
public enum HarpVersion {
    public static let string = "0.1.0-dev"
}

// swift-tools-version:6.0
import PackageDescription

// Dependencies point one way:
//   HarpConfig (config.yml values, directives)   HarpDCS (etcd client and session, knows no proxies)
//                 \                              /
//                  HarpCluster (DCS layout, records, leader resolution, effective directives)
//                                  |
//                                  |
//                  HarpProxy (the host, its instances and their modes: builtin, pgbouncer)
//                  HarpControl (the Unix control socket; asks the daemon through ControlActions)
//                  HarpHealth (HTTP /health/is-live and /health/is-ready; probes with libpq)
//                                  |
//                     harp-proxy, harpctl (executables)
let package = Package(
    name: "harp-proxy",
    products: [
        .executable(name: "harp-proxy", targets: ["harp-proxy"]),
        .executable(name: "harpctl", targets: ["harpctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        // posix_spawn's closefrom action (glibc 2.34+), so that children inherit no descriptor of ours.
        .target(name: "CRelay"),
        .target(name: "CSpawn"),

        .target(name: "HarpConfig", dependencies: ["CYAML", "COpenSSL"]),
        .target(name: "HarpDCS", dependencies: [
            "CCurl", "HarpConfig",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "HarpCluster", dependencies: [
            "HarpConfig", "HarpDCS",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "HarpProxy", dependencies: [
            "HarpConfig", "HarpDCS", "HarpCluster", "CLibPQ", "CSpawn", "CRelay",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "HarpControl", dependencies: [
            "HarpConfig",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "HarpHealth", dependencies: [
            "CLibPQ", "HarpConfig",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "harp-proxy", dependencies: [
            "HarpConfig", "HarpDCS", "HarpCluster", "HarpProxy", "HarpControl", "HarpHealth",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "harpctl", dependencies: [
            "HarpConfig", "HarpDCS", "HarpCluster",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Test fixtures: real etcd processes, certificates made by the openssl CLI, free ports.
        .target(name: "HarpTestFixtures", dependencies: ["HarpDCS", "HarpConfig", "CSpawn", "CLibPQ"], path: "Tests/Fixtures"),
        .testTarget(name: "HarpConfigTests", dependencies: ["HarpConfig", "HarpCluster", "HarpDCS", "HarpTestFixtures"]),
        .testTarget(name: "HarpClusterTests", dependencies: [
            "HarpCluster", "HarpDCS", "HarpConfig", "HarpTestFixtures",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "HarpProxyTests", dependencies: [
            "HarpProxy", "HarpHealth", "HarpCluster", "HarpDCS", "HarpConfig", "HarpTestFixtures",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .testTarget(name: "HarpctlTests", dependencies: ["HarpCluster", "HarpDCS", "HarpConfig", "HarpTestFixtures"]),
        .testTarget(name: "HarpDCSTests", dependencies: [
            "HarpDCS", "HarpCluster", "HarpConfig", "HarpTestFixtures",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)

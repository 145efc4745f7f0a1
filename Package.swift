// swift-tools-version: 6.1
import PackageDescription

// Release builds of the numerical code drop overflow and exclusivity checks: the hot loops
// already run over raw pointers with explicit sizes, and these checks block vectorisation.
let fastMath: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let stageNames = [
    "prepare-data", "classify-train", "extract-attention", "cam-refine",
    "pseudo-label", "psa-refine", "seg-train", "single-stage-train", "evaluate",
]

/// Every stage executable depends on the same plumbing plus whatever its work needs.
let stageDependencies: [String: [Target.Dependency]] = [
    "prepare-data": ["Datasets", "Imaging"],
    "classify-train": ["Engine", "Training", "Datasets", "Imaging", "Localization", "AReAM", "ACR"],
    "extract-attention": ["Engine", "Training", "Datasets", "Imaging", "Localization", "CAM"],
    "cam-refine": ["Imaging", "Datasets", "Localization", "AReAM", "CAMRefinement"],
    "pseudo-label": ["Imaging", "Datasets", "Localization"],
    "psa-refine": ["Engine", "Training", "PSA", "Localization", "Datasets", "Imaging"],
    "seg-train": ["Engine", "Training", "Datasets", "Imaging", "Localization"],
    // The only stage that links FSR: an FSR edit leaves every other stage's executable, and so its
    // cache key, unchanged (StageTests/ModuleBoundaryTests pins this).
    "single-stage-train": ["Engine", "Training", "Datasets", "Imaging", "Localization", "SingleStage", "FSR"],
    "evaluate": ["Imaging", "Datasets", "Localization"],
]

let package = Package(
    name: "wsss",
    platforms: [.macOS(.v13)],
    products: stageNames.map { .executable(name: $0, targets: [$0]) } + [
        .executable(name: "wsss", targets: ["wsss"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg62-turbo-dev"])]),

        .target(name: "ArtifactStore", dependencies: [
            "CHDF5", "CZstd", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Small pieces several modules share: the seeded generators.
        .target(name: "Primitives", swiftSettings: fastMath),
        .target(name: "Imaging", dependencies: ["CPNG", "CJPEG", "Primitives"], swiftSettings: fastMath),
        .target(name: "Datasets", dependencies: ["ArtifactStore", "Imaging", "CZlib", "Primitives"], swiftSettings: fastMath),
        .target(name: "StageKit", dependencies: [
            "ArtifactStore", "Primitives",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "Engine", dependencies: ["COpenBLAS", "ArtifactStore", "Primitives"], swiftSettings: fastMath),
        .target(name: "Localization", dependencies: ["COpenBLAS", "Imaging", "ArtifactStore", "Datasets"], swiftSettings: fastMath),
        // PSA / AffinityNet: confident pairs, the affinity head and loss, the random walk.
        .target(name: "PSA", dependencies: ["Engine", "COpenBLAS", "Primitives"], swiftSettings: fastMath),

        // What the trainers share above the engine: the checkpoint layout, training logs, batching,
        // the segmentation epoch loop and predictor.
        .target(name: "Training", dependencies: [
            "Engine", "Datasets", "Imaging", "Localization", "ArtifactStore", "StageKit", "Primitives",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: fastMath),

        // Methods (Sources/Methods/<family>): each paper's objectives, online label makers and
        // heads, one module per family so that a stage links only the methods it can run, and an
        // edit to one method changes only the executables (cache keys) of the stages that run it.
        .target(name: "CAM", dependencies: ["Engine", "Primitives"], path: "Sources/Methods/CAM", swiftSettings: fastMath),
        .target(name: "AReAM", dependencies: ["Engine", "Localization", "COpenBLAS", "Primitives"], path: "Sources/Methods/AReAM", swiftSettings: fastMath),
        .target(name: "ACR", dependencies: ["Engine", "Localization", "Primitives"], path: "Sources/Methods/ACR", swiftSettings: fastMath),
        .target(name: "CAMRefinement", dependencies: ["Localization", "AReAM", "ACR", "COpenBLAS", "Primitives"],
                path: "Sources/Methods/CAMRefinement", swiftSettings: fastMath),
        .target(name: "FSR", dependencies: ["Engine", "Primitives"], path: "Sources/Methods/FSR", swiftSettings: fastMath),
        .target(name: "SingleStage", dependencies: ["Engine", "FSR", "Localization", "Imaging", "ArtifactStore", "Primitives", "Training"],
                path: "Sources/Methods/SingleStage", swiftSettings: fastMath),
        .target(name: "Runner", dependencies: [
            "ArtifactStore", "StageKit",
            .product(name: "Yams", package: "Yams"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Engine micro-benchmarks (release build; not part of the tests).
        .executableTarget(name: "engine-bench", dependencies: ["Engine", "Localization", "Primitives", "ACR"], swiftSettings: fastMath),
        // The Swift side of `make bench` (Benchmarks/bench.sh): training step, forward with attention, sgemm.
        .executableTarget(name: "bench-train-step", dependencies: ["Engine", "Primitives", "StageKit"], swiftSettings: fastMath),
        // `wsss report`: the results page, drawn from artifacts (reads maps, datasets, checkpoint logs).
        .target(name: "Report", dependencies: ["Runner", "ArtifactStore", "Imaging", "Datasets", "Localization", "Training"]),
        .executableTarget(name: "wsss", dependencies: [
            "Runner", "Report", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "ArtifactStoreTests", dependencies: ["ArtifactStore", "TestSupport"]),
        .testTarget(name: "ImagingTests", dependencies: ["Imaging", "Primitives", "TestSupport"]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "ArtifactStore", "Imaging", "Primitives", "TestSupport"]),
        .testTarget(name: "StageKitTests", dependencies: ["StageKit"]),
        // Helpers shared by the test targets: finite-difference gradient checks, the stage process runner.
        .target(name: "TestSupport", dependencies: ["Engine", "Primitives", "ArtifactStore"], path: "Tests/TestSupport"),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "ArtifactStore", "Primitives", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "MethodsTests", dependencies: [
            "CAM", "AReAM", "ACR", "CAMRefinement", "FSR", "SingleStage", "Engine", "Localization", "ArtifactStore", "Datasets", "Imaging", "Primitives", "Training", "TestSupport",
        ], exclude: ["Fixtures"]),
        .testTarget(name: "RunnerTests", dependencies: ["Runner", "ArtifactStore", "wsss-test-stage", "wsss", "TestSupport"]),
        // A real stage executable (StageKit contract) that the runner's tests run.
        .executableTarget(name: "wsss-test-stage", dependencies: [
            "StageKit", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "PSATests", dependencies: ["PSA", "Engine", "Primitives", "ArtifactStore", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "LocalizationTests", dependencies: ["Localization", "ArtifactStore", "Imaging", "Datasets"], exclude: ["Fixtures"]),
        // Runs the stage executables end to end (they are built alongside the tests).
        .testTarget(name: "StageTests", dependencies: ["ArtifactStore", "Datasets", "Imaging", "Localization", "Engine", "Training", "Primitives", "CAM", "PSA", "TestSupport"]),
    ] + stageNames.map { name in
        .executableTarget(
            name: name,
            dependencies: ["StageKit", "ArtifactStore", "Primitives"] + (stageDependencies[name] ?? []),
            swiftSettings: fastMath
        )
    },
    swiftLanguageModes: [.v5]
)

// Coverage-guided fuzz targets (Fuzz/, README "Fuzzing"): declared only when WSSS_FUZZ is set, as
// `make fuzz` does for its separate build folder (.build-fuzz, built with -sanitize=fuzzer,address),
// so that the ordinary build and `make test` never see them.
let fuzzTargets: [String: [Target.Dependency]] = [
    "FuzzPipeline": ["Runner"],
    "FuzzPNG": ["Imaging"],
    "FuzzJPEG": ["Imaging"],
    "FuzzIDX": ["Datasets"],
    "FuzzArtifact": ["ArtifactStore", "Datasets", "Localization", "Training"],
]
if Context.environment["WSSS_FUZZ"] != nil {
    package.targets.append(.target(name: "FuzzSupport", path: "Fuzz/Sources/FuzzSupport"))
    for (name, dependencies) in fuzzTargets.sorted(by: { $0.key < $1.key }) {
        package.targets.append(.executableTarget(name: name, dependencies: dependencies + ["FuzzSupport"], path: "Fuzz/Sources/\(name)"))
        package.products.append(.executable(name: name, targets: [name]))
    }
}

// swift-tools-version:6.0
// Onestep: a lean CPU server for one-step distilled image generators.
// No package dependencies: the toolchain plus three system C libraries (OpenBLAS, libpng, libcurl).
import PackageDescription

/// Release builds of the kernels drop bounds checks in hot loops; debug builds keep them.
let fastMath: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "Onestep",
    products: [
        .executable(name: "onestep-serve", targets: ["onestep-serve"]),
        .executable(name: "onestep-distill", targets: ["onestep-distill"]),
        .executable(name: "onestep-load", targets: ["onestep-load"]),
    ],
    targets: [
        // C libraries, each imported by exactly one Swift file.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl",
                       providers: [.apt(["libcurl4-openssl-dev"])]),

        // PNG encode/decode on libpng's simplified API: the only importer of CPNG (used by the core and the load tester).
        .target(name: "PNGCodec", dependencies: ["CPNG"]),

        // Hand-written fp32/int8 convolution kernels (AVX-512, AVX2, scalar; chosen at run time).
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),

        // Tensors, kernels, model, sampling, weight IO: shared by the server and the distiller.
        .target(name: "OnestepCore", dependencies: ["COpenBLAS", "CKernels", "PNGCodec"], swiftSettings: fastMath),

        // HTTP/1.1 parsing, response writing and the epoll connection loop; knows nothing of models.
        .target(name: "HTTP1"),

        // Routes, batching, metrics, lifecycle of the server.
        .target(name: "OnestepServer", dependencies: ["OnestepCore", "HTTP1"]),
        .executableTarget(name: "onestep-serve", dependencies: ["OnestepServer", "OnestepCore"]),
        // Forward-pass timing of the full-size text-to-image latent networks (random weights).
        .executableTarget(name: "onestep-latent-bench", dependencies: ["OnestepCore"]),

        // Training engine, data, teacher, distillation, evaluation: linked only into onestep-distill.
        .target(name: "OnestepTrain", dependencies: ["OnestepCore", "PNGCodec"], swiftSettings: fastMath),
        .executableTarget(name: "onestep-distill", dependencies: ["OnestepTrain", "OnestepCore"]),

        // The load tester lives in the top-level loadtest/ folder.
        .target(name: "OnestepLoad", dependencies: ["CCurl", "PNGCodec"], path: "loadtest/Sources/OnestepLoad"),
        .executableTarget(name: "onestep-load", dependencies: ["OnestepLoad"], path: "loadtest/Sources/onestep-load"),

        .testTarget(name: "OnestepCoreTests", dependencies: ["OnestepCore", "PNGCodec"], exclude: ["Golden"]),
        .testTarget(name: "HTTP1Tests", dependencies: ["HTTP1"]),
        .testTarget(name: "OnestepServerTests", dependencies: ["OnestepServer", "OnestepCore", "HTTP1", "PNGCodec"], exclude: ["png_decode.py"]),
        .testTarget(name: "OnestepTrainTests", dependencies: ["OnestepTrain", "OnestepCore", "PNGCodec"]),
        .testTarget(name: "OnestepLoadTests", dependencies: ["OnestepLoad"]),
    ],
    swiftLanguageModes: [.v6]
)

// swift-tools-version:6.0
// Onestep: a lean CPU server for one-step distilled image generators.
// No package dependencies: the toolchain plus three system C libraries (OpenBLAS, libpng, libcurl).
import PackageDescription

// Every Swift module builds with SwiftPM's own settings (-O and whole-module optimisation in release): no
// -Ounchecked, so `precondition`s (shapes, label ranges, loader bounds) fire in the binaries that ship, the tests
// and sanitizer runs see them, and the fuzzers (swiftc -O) build the same configuration. The hot loops that
// would want unchecked arithmetic are in the C target CKernels (-O3) and OpenBLAS; `onestep-serve bench` and
// `onestep-distill bench` measured the change as within noise (docs/ARCHITECTURE.md, "Build configuration").

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

        // Hand-written fp32/int8 convolution, GroupNorm-statistics, SiLU and attention kernels (AVX-512, AVX2,
        // scalar; chosen at run time). x86 code sits behind OSK_X86 (onestep_isa.h), so aarch64 builds the scalar
        // paths (scripts/check-aarch64).
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        // The training-only kernels (conv weight gradient, Adam and the gradient norm, GroupNorm backward): linked
        // only into onestep-distill, through OnestepTrain. They share CKernels' private ISA and e^x headers.
        .target(name: "CTrainKernels", dependencies: ["CKernels"], path: "Sources/CTrainKernels",
                cSettings: [.unsafeFlags(["-O3"]), .headerSearchPath("../CKernels")]),

        // Tensors, kernels, model, sampling, weight IO: shared by the server and the distiller.
        .target(name: "OnestepCore", dependencies: ["COpenBLAS", "CKernels", "PNGCodec"]),

        // HTTP/1.1 parsing, response writing and the epoll connection loop; knows nothing of models.
        .target(name: "HTTP1"),

        // The executables' flag parser and sub-command dispatch (did-you-mean, --help, exit statuses 0/1/2).
        .target(name: "CommandLineKit"),

        // Routes, batching, metrics, lifecycle of the server.
        .target(name: "OnestepServer", dependencies: ["OnestepCore", "HTTP1", "CommandLineKit"]),
        .executableTarget(name: "onestep-serve", dependencies: ["OnestepServer", "OnestepCore", "CommandLineKit"]),
        // Forward-pass timing of the full-size text-to-image latent networks (random weights).
        .executableTarget(name: "onestep-latent-bench", dependencies: ["OnestepCore"]),

        // Training engine, data, teacher, distillation, evaluation: linked only into onestep-distill.
        .target(name: "OnestepTrain", dependencies: ["OnestepCore", "CTrainKernels", "PNGCodec"]),
        .executableTarget(name: "onestep-distill", dependencies: ["OnestepTrain", "OnestepCore", "CommandLineKit"]),

        // The load tester lives in the top-level loadtest/ folder.
        .target(name: "OnestepLoad", dependencies: ["CCurl", "PNGCodec"], path: "loadtest/Sources/OnestepLoad"),
        .executableTarget(name: "onestep-load", dependencies: ["OnestepLoad"], path: "loadtest/Sources/onestep-load"),

        .testTarget(name: "OnestepCoreTests", dependencies: ["OnestepCore", "PNGCodec"], exclude: ["Golden"]),
        .testTarget(name: "HTTP1Tests", dependencies: ["HTTP1"]),
        .testTarget(name: "CommandLineKitTests", dependencies: ["CommandLineKit"]),
        .testTarget(name: "OnestepServerTests", dependencies: ["OnestepServer", "OnestepCore", "HTTP1", "PNGCodec"], exclude: ["png_decode.py"]),
        .testTarget(name: "OnestepTrainTests", dependencies: ["OnestepTrain", "OnestepCore", "PNGCodec"]),
        .testTarget(name: "OnestepLoadTests", dependencies: ["OnestepLoad"]),
    ],
    swiftLanguageModes: [.v6]
)

import Foundation
import XCTest
import OnestepCore
#if canImport(Glibc)
import Glibc
#endif
import PNGCodec

/// The offline subcommands of onestep-serve, run as a user runs them: the built binary in a subprocess.
final class CommandLineTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var golden: String { Fixtures.golden }  // ../shared/golden, or ONESTEP_GOLDEN

    /// The onestep-serve binary built beside the test bundle.
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/onestep-serve"
    }

    @discardableResult
    func run(_ exe: String, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try Self.runProcess(exe, args)
    }

    /// `exe args` in a subprocess: its exit status, standard output and standard error (the one subprocess runner
    /// of the onestep-serve command-line tests).
    static func runProcess(_ exe: String, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func temp(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "onestep-cli-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/" + name
    }

    func testBinaryIsBuilt() {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Self.binary), "onestep-serve not found at \(Self.binary)")
    }

    /// run-unet reproduces io.safetensors from the command line for every golden case.
    func testRunUNetReproducesGolden() throws {
        for name in ["ddpm_tiny", "cd_tiny", "ddpm_gray"] {
            let dir = Self.golden + "/" + name, out = temp("out.safetensors")
            let r = try run(Self.binary, ["run-unet", "--model", dir, "--inputs", dir + "/io.safetensors", "--out", out])
            XCTAssertEqual(r.status, 0, r.err)
            let got = try SafetensorsFile(path: out), want = try SafetensorsFile(path: dir + "/io.safetensors")
            XCTAssertLessThanOrEqual(TensorError.relativeL2(try got.floats("unet_out").data, try want.floats("unet_out").data), 1e-5, name)
            XCTAssertLessThanOrEqual(TensorError.maxAbs(try got.floats("cm_image").data, try want.floats("cm_image").data), 1e-4, name)
            XCTAssertEqual(try got.integers("cm_uint8").values, try want.integers("cm_uint8").values, name)
        }
    }

    /// generate writes PNGs that an independent decoder (tests/png_decode.py: zlib + filters, no libpng) reads,
    /// with the pixels our own decoder sees.
    func testGenerateWritesStandardPNGs() throws {
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let decoder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/png_decode.py"
        for (model, n, expected) in [("cd_tiny", 1, "16 16 3"), ("ddpm_gray", 1, "8 8 1"), ("cd_tiny", 9, "50 50 3")] {
            let out = temp("img.png")
            let r = try run(Self.binary, ["generate", "--model", Self.golden + "/" + model, "--seed", "5", "-n", String(n), "--label", "3", "--plain", "--out", out].filter { model != "ddpm_gray" || ($0 != "--label" && $0 != "3") })
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("wrote"), r.out)
            guard let python else { return XCTFail("python3 is needed for the independent PNG decoder") }
            let d = try run(python, [decoder, out])
            XCTAssertEqual(d.status, 0, d.err)
            XCTAssertTrue(d.out.hasPrefix(expected), "\(model) n=\(n): \(d.out)")
        }
    }

    func testBenchPrintsTableAndJSON() throws {
        let r = try run(Self.binary, ["bench", "--model", Self.golden + "/ddpm_gray", "--batch", "1,4", "--seconds", "0.1"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("images/s") && r.out.contains("ddpm_gray"), r.out)
        let j = try run(Self.binary, ["bench", "--model", Self.golden + "/ddpm_gray", "--batch", "2", "--seconds", "0.1", "--json"])
        let firstLine = try XCTUnwrap(j.out.split(separator: "\n").first, "bench --json printed nothing: \(j.err)")
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(firstLine.utf8)) as? [String: Any])
        for key in ["model", "dtype", "batch", "images_per_s", "gflops", "sgemm_gflops", "ratio_to_sgemm"] {
            XCTAssertNotNil(obj[key], "bench --json lacks \(key)")
        }
        XCTAssertGreaterThan(obj["images_per_s"] as? Double ?? 0, 0)
    }

    func testBadFlagsAreClearErrors() throws {
        let cases: [([String], String)] = [
            (["generate", "--model", Self.golden + "/cd_tiny", "--out", "/tmp/x.png", "--steps", "9"], "--steps 9"),
            (["generate", "--model", Self.golden + "/cd_tiny", "--out", "/tmp/x.png", "--label", "dog"], "label"),
            (["generate", "--model", "/nonexistent", "--out", "/tmp/x.png"], "/nonexistent: does not exist"),
            (["generate", "--bogus"], "unknown flag --bogus"),
            (["bench", "--model", Self.golden + "/cd_tiny", "--batch", "0"], "--batch"),
            (["frobnicate"], "unknown command"),
        ]
        for (args, expected) in cases {
            let r = try run(Self.binary, args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
        }
    }

    /// --help at the top lists every sub-command (and serve's flags, the default command); a sub-command's --help
    /// lists its flags; both exit 0.
    func testHelpListsSubcommands() throws {
        for args in [["--help"], ["help"], ["-h"]] {
            let r = try run(Self.binary, args)
            XCTAssertEqual(r.status, 0, "\(args) \(r.err)")
            for command in ["serve", "generate", "run-unet", "bench", "quantize"] {
                XCTAssertTrue(r.out.contains("\n  \(command) "), "\(args) does not list \(command):\n\(r.out)")
            }
            XCTAssertTrue(r.out.contains("--max-batch"), r.out)
        }
        let g = try run(Self.binary, ["generate", "--help"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(g.out.contains("usage: onestep-serve generate") && g.out.contains("--seed"), g.out)
    }

    /// An unknown flag or command is a usage error (exit 2) that names the closest known one.
    func testUnknownFlagSuggestsTheClosest() throws {
        let cases: [([String], String)] = [
            (["--modles", "models"], "unknown flag --modles; did you mean --models?"),
            (["serve", "--max-bacth", "4"], "did you mean --max-batch?"),
            (["bench", "--modle", "x"], "did you mean --model?"),
            (["genrate"], "unknown command 'genrate'; did you mean 'generate'?"),
        ]
        for (args, expected) in cases {
            let r = try run(Self.binary, args)
            XCTAssertEqual(r.status, 2, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
        }
    }

    /// A port another process listens on: exit 1 (the command line was fine), naming the port and what to do.
    func testPortInUseExitsOneWithAClearMessage() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        XCTAssertTrue(bound)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let r = try run(Self.binary, ["--port", String(port), "--models", Self.golden + "/cd_tiny", "--no-access-log"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("cannot listen on 127.0.0.1:\(port)") && r.err.contains("another process is listening on port \(port)"), r.err)
    }

    func testQuantizeCommandWritesInt8Model() throws {
        let out = temp("int8")
        let r = try run(Self.binary, ["quantize", "--model", Self.golden + "/ddpm_tiny", "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("PSNR"), r.out)
        XCTAssertEqual(try ImagePipeline.load(path: out).weightDType, "int8")
    }

    // MARK: issue 16 item 7

    static let shipped = repoRoot + "/models/shapes16-cd-int8"

    /// `generate --scheduler CLASS` on a pixel model: the shipped DDPM teacher sampled by DDIM and by
    /// DPM-Solver++ from its own scheduler config (as diffusers' from_config); an unknown class is refused.
    func testPixelGenerateTakesASchedulerClass() throws {
        let teacher = Self.repoRoot + "/models/shapes16-ddpm"
        var bytes: [String: Data] = [:]
        for cls in ["DDIMScheduler", "DPMSolverMultistepScheduler"] {
            let out = temp("\(cls).png")
            let r = try run(Self.binary, ["generate", "--model", teacher, "--scheduler", cls, "--steps", "10", "--seed", "3", "--label", "star", "--out", out])
            XCTAssertEqual(r.status, 0, r.err)
            bytes[cls] = try Data(contentsOf: URL(fileURLWithPath: out))
        }
        XCTAssertNotEqual(bytes["DDIMScheduler"], bytes["DPMSolverMultistepScheduler"], "two samplers, one image")
        let bad = try run(Self.binary, ["generate", "--model", teacher, "--scheduler", "HeunScheduler", "--seed", "1", "--out", temp("x.png")])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.err.contains("'HeunScheduler'") && bad.err.contains("DDIMScheduler"), bad.err)
    }

    /// The model card's samples.png comes out of the command the card documents, pixel for pixel.
    func testModelCardGridIsReproducible() throws {
        let out = temp("samples.png")
        let r = try run(Self.binary, ["generate", "--model", Self.shipped, "--per-class", "-n", "8", "--seed", "0", "--scale", "3", "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let made = try PNG.read(path: out), card = try PNG.read(path: Self.shipped + "/samples.png")
        XCTAssertEqual(made.width, card.width)
        XCTAssertEqual(made.height, card.height)
        // Same layout, seeds and classes: equal here (the card was regenerated with this command); a CPU whose
        // fp32 edge convolutions round differently (AVX2 vs AVX-512 FMA order) may move a value by a few levels,
        // while a wrong seed, class or layout changes whole cells by tens of levels.
        let diffs = zip(made.pixels, card.pixels).map { abs(Int($0) - Int($1)) }
        let maxLevels = 4, maxMeanLevels = 0.25
        XCTAssertLessThanOrEqual(diffs.max() ?? 0, maxLevels, "generate --per-class differs from the model card's samples.png")
        XCTAssertLessThanOrEqual(Double(diffs.reduce(0, +)) / Double(diffs.count), maxMeanLevels)
    }

    /// Grids carry a title, class names on the rows and seeds on the columns; --plain gives the bare tiles. The
    /// labelled grid is the plain one moved right and down by the label margins, and those margins have text.
    func testGridsAreLabelledUnlessPlain() throws {
        let plainPath = temp("plain.png"), labelledPath = temp("labelled.png")
        for (path, extra) in [(plainPath, ["--plain"]), (labelledPath, [])] {
            let r = try run(Self.binary, ["generate", "--model", Self.shipped, "--per-class", "-n", "3", "--seed", "4", "--scale", "2", "--out", path] + extra)
            XCTAssertEqual(r.status, 0, r.err)
        }
        let plain = try PNG.read(path: plainPath), labelled = try PNG.read(path: labelledPath)
        XCTAssertEqual([plain.width, plain.height], [3 * 34 - 2, 8 * 34 - 2], "8 classes x 3 seeds of 16x16 shown 2x")
        // The top margin depends only on there being a title and column labels; the left one on the widest class
        // name ("crescent" and "triangle", 8 characters).
        let m = GridLabels(title: "x", rowLabels: ["crescent"], columnLabels: ["4"]).margins(cell: 32, gridWidth: plain.width)
        XCTAssertEqual(labelled.height, plain.height + m.top)
        XCTAssertGreaterThanOrEqual(labelled.width, plain.width + m.left)
        let left = m.left
        let dark = { (x: Int, y: Int) -> Bool in labelled.pixels[(y * labelled.width + x) * 3] < 128 }
        XCTAssertTrue((0..<m.top).contains { y in (0..<labelled.width).contains { dark($0, y) } }, "title and seeds above the grid")
        XCTAssertTrue((m.top..<labelled.height).contains { y in (0..<left).contains { dark($0, y) } }, "class names left of the grid")
        // The tiles themselves are unchanged.
        let ox = m.left, oy = m.top
        for y in 0..<plain.height { for x in 0..<plain.width where plain.pixels[(y * plain.width + x) * 3] != labelled.pixels[((y + oy) * labelled.width + x + ox) * 3] {
            return XCTFail("tile pixel (\(x), \(y)) moved or changed")
        } }
    }

    /// --scale N enlarges by nearest neighbour: every N x N block is one source pixel; 1...64 accepted.
    func testScaleIsNearestNeighbour() throws {
        let one = temp("one.png"), four = temp("four.png")
        for (path, scale) in [(one, "1"), (four, "4")] {
            let r = try run(Self.binary, ["generate", "--model", Self.shipped, "--seed", "5", "--label", "star", "--scale", scale, "--out", path])
            XCTAssertEqual(r.status, 0, r.err)
        }
        let a = try PNG.read(path: one), b = try PNG.read(path: four)
        XCTAssertEqual([b.width, b.height], [a.width * 4, a.height * 4])
        for y in 0..<b.height { for x in 0..<b.width { for k in 0..<3 where b.pixels[(y * b.width + x) * 3 + k] != a.pixels[((y / 4) * a.width + x / 4) * 3 + k] {
            return XCTFail("pixel (\(x), \(y)) is not its source pixel")
        } } }
        XCTAssertEqual(try run(Self.binary, ["generate", "--model", Self.shipped, "--scale", "64", "--out", temp("s.png")]).status, 0)
        for (args, expected) in [(["--scale", "0"], "--scale 0"), (["--scale", "65"], "--scale 65"),
                                 (["--per-class", "--label", "star"], "leave out --label")] {
            let r = try run(Self.binary, ["generate", "--model", Self.shipped, "--out", temp("x.png")] + args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
        }
    }

    /// The bench table's columns fit their longest entry ("fp32-blas" was printed "fp32-bla").
    func testBenchTableDoesNotTruncate() throws {
        let r = try run(Self.binary, ["bench", "--model", Self.shipped, "--precision", "blas,fp32", "--batch", "1", "--seconds", "0.05"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("fp32-blas "), r.out)
        XCTAssertTrue(r.out.contains("shapes16-cd-int8 "), r.out)
    }

    func testDefaultModelHelpSaysTheRule() throws {
        let r = try run(Self.binary, ["serve", "--help"])
        XCTAssertTrue(r.out.contains("shapes16-cd-int8 if loaded, else the first by name"), r.out)
    }
}

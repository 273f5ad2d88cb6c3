import Foundation
import XCTest
import OnestepCore
import PNGCodec

/// `onestep-serve generate` and `run-pipeline` on the text-to-image goldens (../shared/golden/*_tiny,
/// T2I_README.md), run as a user runs them: the built binary in a subprocess.
final class TextCommandLineTests: XCTestCase {
    static let folders = ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny", "tcd_tiny", "cfg_v_tiny"]

    /// The built onestep-serve run in a subprocess, as CommandLineTests runs it.
    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try CommandLineTests.runProcess(CommandLineTests.binary, args)
    }

    func temp(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "onestep-t2i-cli-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/" + name
    }

    struct Case { var key: String; var c: [String: String]; var expected: [Int64]; var reference: [Float] }

    static func cases(_ io: SafetensorsFile) throws -> [Case] {
        let meta = try XCTUnwrap(io.metadata["cases"]?.data(using: .utf8))
        let d = try XCTUnwrap(try JSONSerialization.jsonObject(with: meta) as? [String: [String: String]])
        return try d.keys.sorted().map { k in
            Case(key: k, c: d[k]!, expected: try io.integers("uint8_" + k).values, reference: try io.floats("image_" + k).data)
        }
    }

    /// uint8 equal to diffusers' except within 1e-4 of a rounding boundary (T2I_README.md's tolerance).
    static func assertMatches(_ got: [UInt8], _ c: Case, _ what: String) {
        XCTAssertEqual(got.count, c.expected.count, what)
        guard got.count == c.expected.count else { return }
        let bad = got.indices.filter { j in
            guard Int64(got[j]) != c.expected[j] else { return false }
            let boundary = ((Double(c.reference[j]) * 255).rounded(.down) + 0.5) / 255
            return abs(Int64(got[j]) - c.expected[j]) > 1 || abs(Double(c.reference[j]) - boundary) > 1e-4
        }
        let differing = got.indices.filter { Int64(got[$0]) != c.expected[$0] }.count
        print("\(what): \(differing) uint8 values differ, \(bad.count) away from a rounding boundary")
        XCTAssertTrue(bad.isEmpty, "\(what): \(bad.count) uint8 values differ away from a rounding boundary")
    }

    func testGenerateMatchesGoldenImages() throws {
        for name in Self.folders {
            let dir = Fixtures.golden + "/" + name
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            for c in try Self.cases(io) {
                let out = temp("img.png")
                var args = ["generate", "--model", dir, "--prompt", c.c["prompt"]!, "--seed", c.c["seed"]!, "--steps", c.c["steps"]!,
                            "--guidance", c.c["guidance_scale"]!, "--eta", c.c["eta"] ?? "0", "--out", out]
                if let neg = c.c["negative_prompt"], !neg.isEmpty { args += ["--negative-prompt", neg] }
                let r = try run(args)
                XCTAssertEqual(r.status, 0, "\(name) \(c.key): \(r.err)")
                guard r.status == 0 else { continue }
                let png = try PNG.read(path: out)
                XCTAssertEqual(png.channels, 3)
                Self.assertMatches(png.pixels, c, "generate \(name) \(c.key)")
            }
        }
    }

    func testRunPipelineReproducesGolden() throws {
        for name in Self.folders {
            let dir = Fixtures.golden + "/" + name, out = temp("out.safetensors")
            let r = try run(["run-pipeline", "--model", dir, "--inputs", dir + "/io.safetensors", "--out", out])
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            guard r.status == 0 else { continue }
            let got = try SafetensorsFile(path: out), want = try SafetensorsFile(path: dir + "/io.safetensors")
            XCTAssertEqual(try got.integers("prompt_input_ids").values, try want.integers("prompt_input_ids").values, "\(name) token ids")
            for t in ["prompt_embeds", "unet_out", "vae_decoded"] {
                let e = TensorError.relativeL2(try got.floats(t).data, try want.floats(t).data)
                print("run-pipeline \(name) \(t) relative L2 \(e)")
                XCTAssertLessThanOrEqual(e, 1e-5, "\(name) \(t)")
            }
            for c in try Self.cases(want) {
                XCTAssertLessThanOrEqual(TensorError.maxAbs(try got.floats("image_" + c.key).data, c.reference), 1e-4, "\(name) image_\(c.key)")
                Self.assertMatches(try got.integers("uint8_" + c.key).values.map { UInt8($0) }, c, "run-pipeline \(name) \(c.key)")
            }
        }
    }

    func testGenerateRefusesBadTextRequests() throws {
        let dir = Fixtures.golden + "/sd_turbo_tiny", out = temp("x.png")
        let noPrompt = try run(["generate", "--model", dir, "--seed", "1", "--out", out])
        XCTAssertNotEqual(noPrompt.status, 0)
        XCTAssertTrue(noPrompt.err.contains("--prompt"), noPrompt.err)
        let badSize = try run(["generate", "--model", dir, "--prompt", "", "--seed", "1", "--size", "30x32", "--out", out])
        XCTAssertNotEqual(badSize.status, 0)
        XCTAssertTrue(badSize.err.contains("multiple of 8"), badSize.err)
        let pixel = try run(["generate", "--model", Fixtures.golden + "/cd_tiny", "--prompt", "cat", "--seed", "1", "--out", out])
        XCTAssertNotEqual(pixel.status, 0)
        XCTAssertTrue(pixel.err.contains("--prompt is for text-to-image models"), pixel.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no file written for a refused request")
    }
}

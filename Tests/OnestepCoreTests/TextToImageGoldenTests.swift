import Foundation
import XCTest
@testable import OnestepCore

/// Golden cases of ../shared/golden/*_tiny (T2I_README.md): each `uint8_K` is diffusers' StableDiffusionPipeline
/// image for the case's prompt, seed, steps, guidance_scale, negative_prompt and eta. The Swift pipeline must give
/// the same bytes except where diffusers' float image lies within 1e-4 of a rounding boundary.
struct T2IGoldenCase {
    var key: String
    var request: TextGenerationRequest
    var steps: Int
    var eta: Double
    var expected: [UInt8]     // (H, W, 3)
    var reference: [Float]    // (H, W, 3) diffusers' float image in [0, 1]
    var size: Int

    static let folders = ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny", "tcd_tiny", "cfg_v_tiny"]

    static func folder(_ name: String) -> String { Fixtures.golden + "/" + name }

    static func load(_ name: String) throws -> [T2IGoldenCase] { try load(io: folder(name) + "/io.safetensors") }

    /// The cases of any io.safetensors in T2I_README.md's layout (also the LoRA and TAESD goldens of this repo).
    static func load(io path: String) throws -> [T2IGoldenCase] {
        let io = try SafetensorsFile(path: path)
        let meta = try XCTUnwrap(io.metadata["cases"]?.data(using: .utf8))
        let cases = try XCTUnwrap(try JSONSerialization.jsonObject(with: meta) as? [String: [String: String]])
        return try cases.keys.sorted().map { key in
            let c = cases[key]!
            let img = try io.floats("image_" + key)
            let u8 = try io.integers("uint8_" + key)
            let neg = c["negative_prompt"] ?? ""
            return T2IGoldenCase(key: key,
                                 request: TextGenerationRequest(prompt: c["prompt"]!, negativePrompt: neg.isEmpty ? nil : neg,
                                                                seed: UInt64(c["seed"]!)!, guidanceScale: Double(c["guidance_scale"]!)!),
                                 steps: Int(c["steps"]!)!, eta: Double(c["eta"] ?? "0")!,
                                 expected: u8.values.map { UInt8($0) }, reference: img.data, size: img.shape[0])
        }
    }

    /// Pixels that differ from diffusers' uint8 and are not within 1e-4 of a rounding boundary (or differ by more
    /// than one level). Empty means equal as the README defines it.
    func badPixels(_ got: [UInt8]) -> [Int] {
        guard got.count == expected.count else { return [-1] }
        return got.indices.filter { j in
            guard got[j] != expected[j] else { return false }
            let u = Double(reference[j]) * 255
            let boundary = (u.rounded(.down) + 0.5) / 255
            return abs(Int(got[j]) - Int(expected[j])) > 1 || abs(Double(reference[j]) - boundary) > 1e-4
        }
    }
}

final class TextToImageGoldenTests: XCTestCase {
    func loadText(_ name: String) throws -> TextToImagePipeline {
        guard case .text(let p) = try GenerationPipeline.load(path: T2IGoldenCase.folder(name)) else {
            XCTFail("\(name) did not load as a text-to-image pipeline"); throw CocoaError(.featureUnsupported)
        }
        return p
    }

    func testGoldenImagesFromSwiftAPI() throws {
        for name in T2IGoldenCase.folders {
            let pipe = try loadText(name)
            for c in try T2IGoldenCase.load(name) {
                let img = try pipe.generate([c.request], steps: c.steps, width: c.size, height: c.size, eta: c.eta)
                let got = ImageQuantizer.toUInt8(img)
                // Float image as diffusers' postprocess: clamp(x / 2 + 0.5, 0, 1), (H, W, 3) order.
                let h = img.shape[2], w = img.shape[3]
                var maxErr: Float = 0
                for y in 0..<h { for x in 0..<w { for ch in 0..<3 {
                    let v = min(max(img.data[(ch * h + y) * w + x] / 2 + 0.5, 0), 1)
                    maxErr = max(maxErr, abs(v - c.reference[(y * w + x) * 3 + ch]))
                } } }
                let bad = c.badPixels(got)
                let differing = zip(got, c.expected).filter { $0 != $1 }.count
                print("\(name) \(c.key): image max abs error \(maxErr), uint8 differing \(differing) (all at rounding boundaries: \(bad.isEmpty))")
                XCTAssertLessThanOrEqual(maxErr, 1e-4, "\(name) \(c.key) float image")
                XCTAssertTrue(bad.isEmpty, "\(name) \(c.key): \(bad.count) uint8 values differ away from a rounding boundary")
            }
        }
    }

    /// The same request gives the same bytes alone or in a batch with other prompts, seeds and guidance
    /// (CFG and non-CFG images mixed in one batch).
    func testBatchInvariance() throws {
        for name in ["cfg_v_tiny", "lcm_tiny", "tcd_tiny"] {
            let pipe = try loadText(name)
            let cases = try T2IGoldenCase.load(name)
            let steps = cases[0].steps, eta = cases[0].eta
            var batch = cases.filter { $0.steps == steps }.map(\.request)
            batch.append(TextGenerationRequest(prompt: "no guidance here", seed: 5, guidanceScale: 0))
            batch.append(TextGenerationRequest(prompt: "a photo of a cat", negativePrompt: "dogs", seed: 0, guidanceScale: 2.5))
            let together = ImageQuantizer.toUInt8(try pipe.generate(batch, steps: steps, eta: eta))
            let per = together.count / batch.count
            for (i, r) in batch.enumerated() {
                let alone = ImageQuantizer.toUInt8(try pipe.generate([r], steps: steps, eta: eta))
                XCTAssertEqual(alone, Array(together[(i * per)..<((i + 1) * per)]), "\(name): request \(i) differs alone vs in a batch of \(batch.count)")
            }
        }
    }

    func testFieldsAndRequestChecks() throws {
        let lcm = try loadText("lcm_tiny"), cfg = try loadText("cfg_v_tiny")
        XCTAssertFalse(lcm.fields.contains("negative_prompt"), "LCM's guidance is an embedding: no negative prompt")
        XCTAssertEqual(cfg.fields, ["prompt", "negative_prompt", "guidance_scale", "size", "seed", "steps", "n"])
        let r = TextGenerationRequest(prompt: "x", seed: 1)
        XCTAssertThrowsError(try cfg.generate([r], steps: 2, width: 30, height: 32)) { e in
            XCTAssertTrue("\(e)".contains("multiple of 8"), "\(e)")
        }
        XCTAssertThrowsError(try cfg.generate([r], steps: 0)) { e in XCTAssertTrue("\(e)".contains("steps 0"), "\(e)") }
        XCTAssertThrowsError(try cfg.generate([TextGenerationRequest(prompt: "x", seed: 1, guidanceScale: .nan)], steps: 2)) { e in
            XCTAssertTrue("\(e)".contains("guidance_scale"), "\(e)")
        }
    }
}

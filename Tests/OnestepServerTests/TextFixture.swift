// The text-to-image fixture: a models folder linking the five golden diffusers pipelines (cfg_v_tiny: DDIM
// v-prediction with classifier-free guidance and a negative prompt; sdxs_tiny: one-step Euler with the TAESD
// decoder; sd_turbo_tiny: Euler trailing, 1-2 steps; lcm_tiny: LCM with the guidance-scale embedding; tcd_tiny:
// TCD with eta 0.3), loaded once, and the diffusers cases of their io.safetensors. Kept apart from the pixel fixture
// (ServerFixture.swift), whose tests count models and defaults.
import Foundation
import OnestepCore
import PNGCodec
import XCTest
@testable import OnestepServer

enum TextFixtures {
    static let names = ["cfg_v_tiny", "lcm_tiny", "sd_turbo_tiny", "sdxs_tiny", "tcd_tiny"]

    static let models: Result<ModelRegistry, Error> = Result {
        guard FileManager.default.fileExists(atPath: Fixtures.golden + "/cfg_v_tiny/model_index.json") else {
            throw TestClientError(description: "golden text pipelines not found at \(Fixtures.golden); set ONESTEP_GOLDEN to the shared/golden folder")
        }
        let dir = Fixtures.tempDir("text")
        for name in names {
            try FileManager.default.createSymbolicLink(atPath: dir + "/" + name, withDestinationPath: Fixtures.golden + "/" + name)
        }
        return try ModelRegistry.load(directory: dir, preferred: "sdxs_tiny", log: { _ in })
    }

    /// One diffusers case: `pipe(prompt, num_inference_steps=steps, guidance_scale=g, negative_prompt=...,
    /// generator=torch.Generator().manual_seed(seed))`, its uint8 image (H, W, 3) and float image in [0, 1].
    struct Case {
        var model: String
        var key: String
        var prompt: String
        var negativePrompt: String
        var seed: Int
        var steps: Int
        var guidance: Double
        var uint8: [Int64]
        var float: [Float]
        var side: Int

        /// The request body for POST /v1/images/generations.
        var body: String {
            var d: [String: Any] = ["model": model, "prompt": prompt, "seed": seed, "steps": steps, "guidance_scale": guidance]
            if !negativePrompt.isEmpty { d["negative_prompt"] = negativePrompt }
            return String(decoding: try! JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]), as: UTF8.self)
        }
    }

    /// The cases of `model`'s golden io.safetensors, or of `io` (same layout; e.g. the LoRA goldens of this repo).
    static func cases(_ model: String, io: String? = nil) throws -> [Case] {
        let f = try SafetensorsFile(path: io ?? Fixtures.golden + "/\(model)/io.safetensors")
        let meta = try XCTUnwrap(f.metadata["cases"]?.data(using: .utf8))
        let cases = try XCTUnwrap(try JSONSerialization.jsonObject(with: meta) as? [String: [String: String]])
        return try cases.keys.sorted().map { key in
            let c = cases[key]!
            let u = try f.integers("uint8_" + key), img = try f.floats("image_" + key)
            return Case(model: model, key: key, prompt: c["prompt"] ?? "", negativePrompt: c["negative_prompt"] ?? "",
                        seed: Int(c["seed"] ?? "") ?? -1, steps: Int(c["steps"] ?? "") ?? -1,
                        guidance: Double(c["guidance_scale"] ?? "") ?? -1, uint8: u.values, float: img.data, side: u.shape[0])
        }
    }

    /// Compares a PNG with diffusers' uint8 image: every byte equal, except a difference of one level where the
    /// float image sits within 1e-4 (x 255) of a rounding boundary (the tolerance T2I_README.md states).
    /// Returns a description of the first mismatch, or nil.
    static func mismatch(_ png: [UInt8], _ c: Case) -> String? {
        guard let image = try? PNG.decode(png) else { return "\(c.model) \(c.key): not a PNG" }
        guard image.width == c.side, image.height == c.side, image.channels == 3 else {
            return "\(c.model) \(c.key): \(image.width)x\(image.height)x\(image.channels), expected \(c.side)x\(c.side)x3"
        }
        for i in 0..<c.uint8.count where Int64(image.pixels[i]) != c.uint8[i] {
            let scaled = Double(c.float[i]) * 255
            let nearBoundary = abs(scaled - scaled.rounded(.down) - 0.5) <= 1e-4 * 255
            if abs(Int64(image.pixels[i]) - c.uint8[i]) > 1 || !nearBoundary {
                return "\(c.model) \(c.key): byte \(i) is \(image.pixels[i]), diffusers \(c.uint8[i]) (float \(c.float[i]))"
            }
        }
        return nil
    }
}

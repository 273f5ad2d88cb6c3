import XCTest
@testable import OnestepCore

/// The forward pass and the one-step sampler against what diffusers computes (../shared/golden).
final class GoldenTests: XCTestCase {
    /// Tolerances from shared/golden/README.md.
    static let unetRelativeL2: Double = 1e-5
    static let imageMaxAbs: Float = 1e-4
    static let roundingBoundaryMargin: Float = 1e-4

    func check(_ name: String) throws {
        let dir = try Fixtures.goldenCase(name)
        // The serving path, packed as the server packs a float model (fp32 kernels).
        var model = try ModelDirectory(path: dir).loadModel().0
        model.packForServing(.fp32)
        let io = try SafetensorsFile(path: dir + "/io.safetensors")
        let x = try io.floats("x"), t = try io.floats("t")
        let labels = io.entries["class_labels"] != nil ? try io.integers("class_labels").values.map { Int($0) } : nil
        let y = model.forwardBatched(x, timesteps: t.data, classLabels: labels, pool: BufferPool())
        let expected = try io.floats("unet_out")
        XCTAssertEqual(y.shape, expected.shape)
        let rel = TensorError.relativeL2(y.data, expected.data)
        XCTAssertLessThanOrEqual(rel, Self.unetRelativeL2, "\(name): UNet relative L2 error \(rel)")

        // One-step consistency sampling from the stored noise.
        let noise = try io.floats("cm_noise")
        let schedule = ConsistencySchedule(config: ConsistencySchedulerConfig(), steps: 1)
        XCTAssertEqual(schedule.timesteps[0], try io.floats("cm_timestep").data[0])
        let image = ConsistencySampler.denoiseOnce(noise: noise, model: model, labels: labels)
        let expectedImage = try io.floats("cm_image")
        let maxAbs = TensorError.maxAbs(image.data, expectedImage.data)
        XCTAssertLessThanOrEqual(maxAbs, Self.imageMaxAbs, "\(name): one-step image max abs error \(maxAbs)")

        let pixels = ImageQuantizer.toUInt8(image)
        let expectedPixels = try io.integers("cm_uint8").values
        let c = image.shape[1], h = image.shape[2], w = image.shape[3]
        var mismatches = 0
        for i in 0..<image.shape[0] { for ch in 0..<c { for yy in 0..<h { for xx in 0..<w {
            let k = ((i * h + yy) * w + xx) * c + ch
            guard Int64(pixels[k]) != expectedPixels[k] else { continue }
            let v = min(max(expectedImage.data[((i * c + ch) * h + yy) * w + xx] / 2 + 0.5, 0), 1) * 255
            let distance = abs(v - v.rounded(.down) - 0.5)  // 0 at a .5 rounding boundary
            XCTAssertLessThan(distance / 255, Self.roundingBoundaryMargin, "\(name): pixel \(k) differs away from a rounding boundary")
            mismatches += 1
        } } } }
        print("golden \(name): unet relL2 \(rel), image maxAbs \(maxAbs), uint8 mismatches at boundaries \(mismatches)")
    }

    func testDDPMTiny() throws { try check("ddpm_tiny") }
    func testCDTiny() throws { try check("cd_tiny") }
    func testDDPMGray() throws { try check("ddpm_gray") }

    /// The full sampler path (noise from the seed) reproduces the stored-noise path for the same noise.
    func testSamplerUsesTorchNoise() throws {
        let dir = try Fixtures.goldenCase("cd_tiny")
        var model = try ModelDirectory(path: dir).loadModel().0
        model.packForServing(.fp32)
        let sampler = ConsistencySampler()
        let reqs = [GenerationRequest(seed: 7, label: 3)]
        let img = sampler.sample(reqs, steps: 1, channels: 3, size: 16) { x, t, l in
            model.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: l, pool: BufferPool())
        }
        var g = TorchGenerator(seed: 7)
        let noise = g.randn(shape: [1, 3, 16, 16])
        let direct = ConsistencySampler.denoiseOnce(noise: noise, model: model, labels: [3])
        XCTAssertEqual(img.data, direct.data)
    }
}

extension ConsistencySampler {
    /// The one-step formula spelled out as the golden README states it, for the test above.
    static func denoiseOnce(noise: Tensor, model: UNet2DModel, labels: [Int]?) -> Tensor {
        let sigma: Float = 80, sd: Float = 0.5, smin: Float = 0.002
        let sample = noise.data.map { $0 * sigma }
        let scale = (sigma * sigma + sd * sd).squareRoot()
        let t = ConsistencySchedule(config: .init(), steps: 1).timesteps[0]
        let out = model.forwardBatched(Tensor(shape: noise.shape, data: sample.map { $0 / scale }),
                                timesteps: Array(repeating: t, count: noise.shape[0]), classLabels: labels,
                                       pool: BufferPool())
        let cSkip = sd * sd / ((sigma - smin) * (sigma - smin) + sd * sd)
        let cOut = (sigma - smin) * sd / (sigma * sigma + sd * sd).squareRoot()
        return Tensor(shape: noise.shape, data: zip(out.data, sample).map { min(max(cOut * $0 + cSkip * $1, -1), 1) })
    }
}

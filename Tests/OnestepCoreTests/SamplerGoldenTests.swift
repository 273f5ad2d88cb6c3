import XCTest
@testable import OnestepCore

/// Samplers against diffusers (Golden/sampler_golden.safetensors, made by scripts/golden/make_sampler_golden.py):
/// whole pipelines on a DDPM-family UNet2DModel, and the text-to-image students' schedulers step by step.
final class SamplerGoldenTests: XCTestCase {
    /// Image tolerance in [0, 1] pixel units where the value is not clipped, and the margin around a uint8 rounding
    /// boundary inside which a differing pixel is accepted (shared/golden/README.md).
    static let imageMaxAbs: Float = 1e-4
    static let roundingBoundaryMargin: Float = 1e-4
    /// Step-by-step vectors: max abs error relative to the largest magnitude of the expected tensor (float32
    /// arithmetic in a slightly different order than torch's; measured errors are printed).
    static let stepRelative: Float = 1e-5

    static let dir = Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden"

    struct Case {
        let name: String
        let config: SchedulerConfig
        let steps: Int
        let seed: UInt64
        let eta: Double
    }

    func cases(_ key: String, in io: SafetensorsFile) throws -> [Case] {
        let text = try XCTUnwrap(io.metadata[key])
        let json = SchedulerConfig.quotingNonFiniteNumbers(Data(text.utf8))
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: json) as? [[String: Any]])
        return try list.map { d in
            let name = try XCTUnwrap(d["name"] as? String)
            let cfg = try XCTUnwrap(d["scheduler"] as? [String: Any])
            return Case(name: name, config: SchedulerConfig(values: cfg, path: "case \(name)"), steps: try XCTUnwrap(d["steps"] as? Int),
                        seed: UInt64(try XCTUnwrap(d["seed"] as? Int)), eta: (d["eta"] as? NSNumber)?.doubleValue ?? 0)
        }
    }

    /// The sampler a case's config names, with the pipeline's eta applied where the sampler takes one.
    func sampler(_ c: Case) throws -> any Sampler {
        let s = try SamplerRegistry.sampler(config: c.config)
        if var d = s as? DDIMSampler { d.eta = Float(c.eta); return d }
        if var t = s as? TCDSampler { t.eta = c.eta; return t }
        return s
    }

    func testAlphasCumprodMatchTorch() throws {
        let io = try SafetensorsFile(path: Self.dir + "/sampler_golden.safetensors")
        for (schedule, values) in [("linear", [:]), ("scaled_linear", ["beta_start": 0.00085, "beta_end": 0.012]),
                                   ("squaredcos_cap_v2", [:])] as [(String, [String: Any])] {
            let cfg = SchedulerConfig(values: values.merging(["beta_schedule": schedule], uniquingKeysWith: { a, _ in a }), path: schedule)
            let ours = try DiscreteSchedule(config: cfg).alphasCumprod
            let theirs = try io.floats("alphas_cumprod_" + schedule).data
            let differing = zip(ours, theirs).filter { $0 != $1 }.count
            let maxRel = zip(ours, theirs).map { abs($0 - $1) / $1 }.max()!
            print("alphas_cumprod \(schedule): \(differing) of \(ours.count) values differ, max relative \(maxRel)")
            // torch.linspace (fused multiply-add from the nearer end) and cumprod (double accumulator) reproduced exactly.
            XCTAssertEqual(differing, 0, "\(schedule): max relative difference \(maxRel)")
        }
    }

    /// DDIM (4 and 10 steps, eta 0 and 1), DPM-Solver++ 2M with thresholding, DDPM ancestral, Euler and DDIM with
    /// each prediction type on the ddpm-cifar10-convention UNet, loaded through its model_index.json.
    func testPipelinesMatchDiffusers() throws {
        let pipeline = try ImagePipeline.load(path: Self.dir + "/ddpm_cifar_tiny")
        XCTAssertTrue(pipeline.sampler is DDPMSampler, "model_index.json names DDPMScheduler: \(pipeline.sampler)")
        XCTAssertNil(pipeline.samplerAssumption)
        let io = try SafetensorsFile(path: Self.dir + "/sampler_golden.safetensors")
        let all = try cases("pipeline_cases", in: io)
        XCTAssertEqual(all.count, 20)
        var mismatchedTotal = 0
        for c in all {
            let s = try sampler(c)
            var gens = [TorchGenerator(seed: c.seed)]
            let x = s.sample(generators: &gens, shape: [1, 3, 8, 8], steps: c.steps, model: pipeline.modelCall(.none))
            let expected = try io.floats("image_" + c.name)  // (H, W, C) in [0, 1]
            let pixels = ImageQuantizer.toUInt8(x)           // (1, H, W, C)
            let expectedPixels = try io.integers("uint8_" + c.name).values
            var maxAbs: Float = 0, mismatches = 0
            for k in 0..<expected.count {
                let (y, xx, ch) = (k / 24, (k / 3) % 8, k % 3)
                let ours = min(max(x.data[(ch * 8 + y) * 8 + xx] / 2 + 0.5, 0), 1)
                maxAbs = max(maxAbs, abs(ours - expected.data[k]))
                if Int64(pixels[k]) != expectedPixels[k] {
                    let v = expected.data[k] * 255
                    let distance = abs(v - v.rounded(.down) - 0.5)
                    XCTAssertLessThan(distance / 255, Self.roundingBoundaryMargin, "\(c.name): pixel \(k) differs away from a rounding boundary")
                    mismatches += 1
                }
            }
            mismatchedTotal += mismatches
            print("sampler golden \(c.name) (\(type(of: s).className), \(c.steps) steps): image max abs \(maxAbs), uint8 mismatches at boundaries \(mismatches)")
            XCTAssertLessThanOrEqual(maxAbs, Self.imageMaxAbs, c.name)
        }
        print("sampler golden: \(all.count) images, \(mismatchedTotal) uint8 values at rounding boundaries")
    }

    /// ImagePipeline.withScheduler is diffusers' from_config: the DDPMScheduler folder sampled as DDIMScheduler
    /// gives the golden DDIMPipeline images (made with DDIMScheduler.from_config(ddpm.config)) bit for bit in uint8,
    /// and an unknown class is refused naming it.
    func testWithSchedulerIsFromConfig() throws {
        let pipeline = try ImagePipeline.load(path: Self.dir + "/ddpm_cifar_tiny")
        let ddim = try pipeline.withScheduler("DDIMScheduler")
        XCTAssertTrue(ddim.sampler is DDIMSampler, "\(ddim.sampler)")
        let io = try SafetensorsFile(path: Self.dir + "/sampler_golden.safetensors")
        for (seed, steps) in [(0, 10), (3, 4)] {
            let x = ddim.generate([GenerationRequest(seed: UInt64(seed), label: nil)], steps: steps)
            let ours = ImageQuantizer.toUInt8(x).map(Int64.init)
            let theirs = try io.integers("uint8_ddim\(steps)_s\(seed)").values
            XCTAssertEqual(ours.count, theirs.count)
            let differing = zip(ours, theirs).filter { $0 != $1 }.count
            print("withScheduler(DDIMScheduler) seed \(seed), \(steps) steps: \(differing) of \(ours.count) uint8 values differ from DDIMPipeline")
            XCTAssertEqual(differing, 0)
        }
        XCTAssertThrowsError(try pipeline.withScheduler("NoSuchScheduler")) { e in
            XCTAssertTrue("\(e)".contains("NoSuchScheduler") && "\(e)".contains("DDIMScheduler"), "\(e)")
        }
    }

    /// The text-to-image students' schedulers step by step: timesteps, init_noise_sigma, each scaled model input and
    /// each step's sample, with the recorded fake network outputs fed back and noise from the case's seed.
    func testStepVectorsMatchDiffusers() throws {
        let io = try SafetensorsFile(path: Self.dir + "/sampler_golden.safetensors")
        let all = try cases("step_cases", in: io)
        XCTAssertEqual(all.count, 24)
        for c in all {
            let s = try sampler(c)
            let key = "steps_" + c.name
            var run = s.start(steps: c.steps)
            XCTAssertEqual(run.timesteps, try io.floats(key + "_timesteps").data, "\(c.name) timesteps")
            let initSigma = try io.floats(key + "_init_sigma").data[0]
            XCTAssertEqual(run.initNoiseSigma, initSigma, accuracy: initSigma * 1e-6, "\(c.name) init_noise_sigma")
            let xIn = try io.floats(key + "_x_in"), outs = try io.floats(key + "_out"), prevs = try io.floats(key + "_prev")
            let per = 4 * 8 * 8
            func slice(_ t: Tensor, _ k: Int) -> Tensor { Tensor(shape: [1, 4, 8, 8], data: Array(t.data[(k * per)..<((k + 1) * per)])) }
            var gens = [TorchGenerator(seed: c.seed)]
            var x = Tensor(shape: [1, 4, 8, 8], data: gens[0].randn(count: per).map { $0 * run.initNoiseSigma })
            var worst: Float = 0
            for k in 0..<run.timesteps.count {
                let scaled = run.scaleModelInput(x, index: k)
                worst = max(worst, try Self.check(scaled, slice(xIn, k), "\(c.name) x_in[\(k)]"))
                x = run.step(slice(outs, k), index: k, sample: x, generators: &gens)
                worst = max(worst, try Self.check(x, slice(prevs, k), "\(c.name) prev[\(k)]"))
            }
            print("step golden \(c.name) (\(type(of: s).className), \(c.steps) steps): worst relative error \(worst)")
        }
    }

    static func check(_ ours: Tensor, _ expected: Tensor, _ what: String) throws -> Float {
        let scale = max(1, expected.data.map(abs).max()!)
        let err = TensorError.maxAbs(ours.data, expected.data) / scale
        XCTAssertLessThanOrEqual(err, stepRelative, what)
        return err
    }

    /// A stochastic sampler (DDIM eta 1, DDPM) gives an image the same bytes alone or in a batch.
    func testStochasticSamplersAreBatchInvariant() throws {
        let pipeline = try ImagePipeline.load(path: Self.dir + "/ddpm_cifar_tiny")
        var ddim = try DDIMSampler(config: .defaults(className: "DDIMScheduler"))
        ddim.eta = 1
        for s in [ddim, pipeline.sampler] as [any Sampler] {
            var alone = [TorchGenerator(seed: 42)]
            let a = s.sample(generators: &alone, shape: [1, 3, 8, 8], steps: 5, model: pipeline.modelCall(.none))
            var batch = [TorchGenerator(seed: 7), TorchGenerator(seed: 42), TorchGenerator(seed: 9)]
            let b = s.sample(generators: &batch, shape: [3, 3, 8, 8], steps: 5, model: pipeline.modelCall(.none))
            XCTAssertEqual(ImageQuantizer.toUInt8(a), Array(ImageQuantizer.toUInt8(b)[192..<384]), "\(s)")
            XCTAssertEqual(a.data, Array(b.data[192..<384]), "\(s): float values")
        }
    }
}

import XCTest
@testable import OnestepCore

/// Choosing and configuring samplers from diffusers scheduler configs and model folders: every refusal names the
/// file, the key or class, and says what to use instead.
final class SamplerConfigTests: XCTestCase {
    func sampler(_ json: String, className: String? = nil) throws -> any Sampler {
        try ModelDirectory.sampler(schedulerConfig: Data(json.utf8), path: "scheduler_config.json", className: className)
    }

    func assertRefused(_ json: String, mentions words: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try sampler(json), file: file, line: line) { e in
            let text = "\(e)"
            XCTAssertTrue(e is ModelLoadError, "\(type(of: e)): \(text)", file: file, line: line)
            for w in words { XCTAssertTrue(text.contains(w), "'\(w)' missing from: \(text)", file: file, line: line) }
        }
    }

    func testClassNameSelectsTheType() throws {
        XCTAssertTrue(try sampler(#"{"_class_name": "DDIMScheduler"}"#) is DDIMSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "DPMSolverMultistepScheduler"}"#) is DPMSolverMultistepSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "EulerDiscreteScheduler"}"#) is EulerDiscreteSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#) is EulerAncestralDiscreteSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "DDPMScheduler"}"#) is DDPMSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "LCMScheduler"}"#) is LCMSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "TCDScheduler"}"#) is TCDSampler)
        XCTAssertTrue(try sampler(#"{"_class_name": "CMStochasticIterativeScheduler"}"#) is ConsistencySampler)
        // Onestep's first students wrote no class name.
        XCTAssertTrue(try sampler(#"{"num_train_timesteps": 40}"#) is ConsistencySampler)
        // model_index.json's class wins over the file's, as in diffusers.
        XCTAssertTrue(try sampler(#"{"_class_name": "DDPMScheduler"}"#, className: "DDIMScheduler") is DDIMSampler)
        for t in SamplerRegistry.types { XCTAssertTrue(SamplerRegistry.type(named: t.className) == t) }
    }

    func testLegacyNames() throws {
        // Older diffusers DDPM configs (google/ddpm-cifar10-32 as first published).
        let ddpm = try XCTUnwrap(try sampler(#"{"_class_name": "GaussianDDPMScheduler", "timesteps": 500, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": true, "tensor_format": "pt"}"#) as? DDPMSampler)
        XCTAssertEqual(ddpm.schedule.numTrainTimesteps, 500)
        XCTAssertEqual(ddpm.stepRange, 1...500)
        // Teachers written before the namespaced name.
        let edm = try XCTUnwrap(try sampler(#"{"_class_name": "EDMHeunScheduler", "sigma_max": 40, "num_inference_steps": 12}"#) as? EDMHeunSampler)
        XCTAssertEqual(edm.config.sigmaMax, 40)
        XCTAssertEqual(edm.defaultSteps, 12)
        // What Onestep writes now reads back the same.
        let written = String(decoding: try SamplerRegistry.json(for: edm), as: UTF8.self)
        XCTAssertTrue(written.contains("\"OnestepEDMHeunScheduler\""), written)
        XCTAssertEqual((try sampler(written) as? EDMHeunSampler)?.config, edm.config)
        let cm = ConsistencySampler(config: { var c = ConsistencySchedulerConfig(); c.numTrainTimesteps = 6; return c }())
        XCTAssertEqual((try sampler(String(decoding: try SamplerRegistry.json(for: cm), as: UTF8.self)) as? ConsistencySampler)?.config, cm.config)
    }

    func testRefusalsNameTheKeyOrClass() {
        assertRefused(#"{"_class_name": "PNDMScheduler"}"#, mentions: ["PNDMScheduler", "DDIMScheduler", "scheduler_config.json"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "prediction_type": "x0"}"#, mentions: ["prediction_type", "x0", "v_prediction"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "timestep_spacing": "uniform"}"#, mentions: ["timestep_spacing", "trailing"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#, mentions: ["beta_schedule", "scaled_linear"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "beta_start": "0.1"}"#, mentions: ["beta_start"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "beta_start": 0, "beta_end": 0}"#, mentions: ["betas", "(0, 1)"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}"#, mentions: ["trained_betas", "1000"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 1.5}"#, mentions: ["num_train_timesteps"])
        assertRefused(#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}"#, mentions: ["solver_order", "1...2"])
        assertRefused(#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#, mentions: ["algorithm_type", "dpmsolver++"])
        assertRefused(#"{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}"#, mentions: ["use_karras_sigmas", "DDIMScheduler"])
        assertRefused(#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1}"#, mentions: ["lambda_min_clipped"])
        assertRefused(#"{"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned_range"}"#, mentions: ["variance_type"])
        assertRefused(#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#, mentions: ["use_karras_sigmas"])
        assertRefused(#"{"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}"#, mentions: ["interpolation_type"])
        assertRefused(#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}"#, mentions: ["prediction_type"])
        assertRefused(#"{"_class_name": "DDPMScheduler", "variance_type": "learned"}"#, mentions: ["variance_type", "fixed_small"])
        assertRefused(#"{"_class_name": "LCMScheduler", "original_inference_steps": 0}"#, mentions: ["original_inference_steps"])
        assertRefused(#"{"_class_name": "CMStochasticIterativeScheduler", "sigma_min": 90}"#, mentions: ["sigma_min < sigma_max"])
        assertRefused(#"{"_class_name": "DDIMScheduler", "thresholding": "yes"}"#, mentions: ["thresholding", "true or false"])
        assertRefused(#"[1, 2]"#, mentions: ["not a JSON object"])
        // A stray comma: where it is, not "not a JSON object".
        assertRefused("{\n  \"_class_name\": \"DDIMScheduler\",,\n}", mentions: ["not valid JSON at line 2, column 34", "expected a key string"])
    }

    func testDiffusersJSONWithInfinityIsRead() throws {
        // DPMSolverMultistepScheduler.save_config writes a bare -Infinity; a string holding the word stays a string.
        let s = try XCTUnwrap(try sampler(#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "_note": "Infinity \"NaN\""}"#) as? DPMSolverMultistepSampler)
        XCTAssertEqual(s.stepRange, 1...1000)
        XCTAssertEqual(s.source.values["_note"] as? String, "Infinity \"NaN\"")
    }

    func testStepLimitsComeFromTheSampler() throws {
        XCTAssertEqual(try sampler(#"{"_class_name": "DDIMScheduler"}"#).stepRange, 1...1000)
        XCTAssertEqual(try sampler(#"{"_class_name": "DDIMScheduler"}"#).defaultSteps, 50)
        XCTAssertEqual(try sampler(#"{"_class_name": "LCMScheduler", "original_inference_steps": 8}"#).stepRange, 1...8)
        XCTAssertEqual(try sampler(#"{"_class_name": "CMStochasticIterativeScheduler", "num_train_timesteps": 2}"#).stepRange, 1...2)
        XCTAssertEqual(try sampler(#"{"_class_name": "OnestepEDMHeunScheduler"}"#).stepRange, 1...64)
        XCTAssertEqual(try sampler(#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 100}"#).defaultSteps, 100)
    }

    /// Each step count in a sampler's range gives as many model calls as diffusers' timesteps (Heun: 2N - 1).
    func testRunsHaveOneTimestepPerModelCall() throws {
        XCTAssertEqual(EDMHeunSampler().start(steps: 18).timesteps.count, 35)
        XCTAssertEqual(EDMHeunSampler().start(steps: 1).timesteps.count, 1)
        let dpm = try sampler(#"{"_class_name": "DPMSolverMultistepScheduler"}"#)
        XCTAssertEqual(dpm.start(steps: 20).timesteps, [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50])
        let turbo = try sampler(#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#)
        XCTAssertEqual(turbo.start(steps: 1).timesteps, [999])
        XCTAssertEqual(try sampler(#"{"_class_name": "LCMScheduler"}"#).start(steps: 4).timesteps, [999, 759, 499, 259])
    }

    // MARK: model folders

    func write(_ text: String, _ path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    func copyUNet(to dir: String) throws {
        let src = Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden/ddpm_cifar_tiny/unet"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try FileManager.default.copyItem(atPath: src + "/" + f, toPath: dir + "/" + f)
        }
    }

    func testBareUNetWithoutSchedulerSaysWhatWasAssumed() throws {
        let dir = Fixtures.tempDir()
        try copyUNet(to: dir)
        let p = try ImagePipeline.load(path: dir)
        XCTAssertTrue(p.sampler is ConsistencySampler)
        let note = try XCTUnwrap(p.samplerAssumption)
        for w in ["CMStochasticIterativeScheduler", "scheduler_config.json", "DDIMScheduler", "ddpm-cifar10"] {
            XCTAssertTrue(note.contains(w), "'\(w)' missing from: \(note)")
        }
        try write(#"{"_class_name": "DDIMScheduler", "clip_sample": true}"#, dir + "/scheduler_config.json")
        let ddim = try ImagePipeline.load(path: dir)
        XCTAssertTrue(ddim.sampler is DDIMSampler)
        XCTAssertNil(ddim.samplerAssumption)
    }

    func testModelIndexRefusesUnknownComponents() throws {
        let dir = Fixtures.tempDir()
        try copyUNet(to: dir + "/unet")
        try write(#"{"_class_name": "DDIMScheduler"}"#, dir + "/scheduler/scheduler_config.json")
        try write(#"{"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"], "vqvae": ["diffusers", "VQModel"]}"#, dir + "/model_index.json")
        XCTAssertThrowsError(try ImagePipeline.load(path: dir)) { e in
            for w in ["VQModel", "'vqvae'", "model_index.json"] { XCTAssertTrue("\(e)".contains(w), "'\(w)' missing from: \(e)") }
        }
        // Optional components saved as [null, null] are skipped; the folder names come from the table.
        try FileManager.default.moveItem(atPath: dir + "/unet", toPath: dir + "/denoiser")
        try write(#"{"_class_name": "DDIMPipeline", "denoiser": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [null, null], "requires_safety_checker": false}"#, dir + "/model_index.json")
        let p = try ImagePipeline.load(path: dir)
        XCTAssertTrue(p.sampler is DDIMSampler)
        // A scheduler class model_index.json lists must have its config.
        try FileManager.default.removeItem(atPath: dir + "/scheduler/scheduler_config.json")
        XCTAssertThrowsError(try ImagePipeline.load(path: dir)) { e in XCTAssertTrue("\(e)".contains("scheduler_config.json"), "\(e)") }
        try write(#"{"_class_name": "DDIMPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}"#, dir + "/model_index.json")
        XCTAssertThrowsError(try ImagePipeline.load(path: dir)) { e in XCTAssertTrue("\(e)".contains("UNet2DModel"), "\(e)") }
    }
}

// DiscreteDDPMTeacher against diffusers: the golden files (scripts/golden/make_ddpm_teacher_golden.py) hold
// diffusers' UNet2DModel output wrapped with k-diffusion's DiscreteEps/VDDPMDenoiser maths, for an unconditional
// v_prediction model (in the repo) and a class-conditional epsilon model (/work/shared/golden/ddpm_tiny).
// The teachers are loaded through TeacherLoader from folders in each layout a user has: bare with
// scheduler_config.json, pipeline (model_index.json), and the legacy GaussianDDPMScheduler config.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class DDPMTeacherTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let goldenDir = repoRoot + "/Tests/Golden/safetensors/ddpm_teacher"
    /// ONESTEP_GOLDEN, else shared/golden beside the repository (a checkout in /work/main) or beside its worktree
    /// folder (/work/wt/NAME), as the other golden tests look for it.
    static var shared: String {
        if let p = ProcessInfo.processInfo.environment["ONESTEP_GOLDEN"] { return p }
        let candidates = [repoRoot + "/../shared/golden", repoRoot + "/../../shared/golden"].map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/ddpm_tiny") } ?? candidates[0]
    }

    /// Float32 UNet forwards in another order than torch: ~1e-6 relative; the interpolated timestep enters the
    /// sinusoidal embedding at up to t = 999, where float32 rounding of t*freq is ~1e-4 rad.
    static let relativeTolerance: Float = 2e-3
    static let timestepTolerance = 2e-3

    func link(_ from: String, _ to: String) throws { try FileManager.default.createSymbolicLink(atPath: to, withDestinationPath: from) }

    func writeJSON(_ d: [String: Any], _ path: String) throws {
        try JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
    }

    /// Compares D(x; sigma), t(sigma) and alphas_cumprod with the golden file.
    func check(_ loaded: TeacherLoader.Loaded, golden name: String, output key: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try SafetensorsFile(path: Self.goldenDir + "/" + name + ".safetensors")
        let teacher = try XCTUnwrap(loaded.denoiser as? DiscreteDDPMTeacher, "not wrapped as a DDPM teacher", file: file, line: line)
        XCTAssertNil(loaded.edmSchedule)
        let x = try g.floats("x"), sigma = try g.floats("sigma").data.map(Double.init), tRef = try g.floats("t").data
        let labels = (try? g.integers("class_labels"))?.values.map(Int.init)
        for (i, s) in sigma.enumerated() {
            XCTAssertEqual(teacher.timestep(sigma: s), Double(tRef[i]), accuracy: Self.timestepTolerance, "t(\(s))", file: file, line: line)
        }
        let ref = try g.floats(key)
        var out = [Float](repeating: 0, count: ref.count)
        teacher.denoise(x.data, sigmas: sigma, labels: labels, into: &out)
        let per = ref.count / sigma.count
        var worst: Float = 0
        defer { print("DDPM teacher \(name) \(key): worst relative error \(worst)") }
        for i in 0..<sigma.count {
            let r = ref.data[(i * per)..<((i + 1) * per)], o = out[(i * per)..<((i + 1) * per)]
            let scale = r.map(abs).max()!, err = zip(r, o).map { abs($0 - $1) }.max()!
            worst = max(worst, err / scale)
            XCTAssertLessThanOrEqual(err / scale, Self.relativeTolerance, "image \(i) sigma \(sigma[i]): max error \(err) of \(scale)", file: file, line: line)
        }
    }

    /// Bare folder, DDIMScheduler squaredcos_cap_v2, v_prediction, unconditional.
    func testUnconditionalVPredictionTeacherMatchesDiffusers() throws {
        let dir = makeTempDir()
        let src = Self.repoRoot + "/Tests/Golden/safetensors/ddpm_gray_fp16"
        try link(src + "/config.json", dir + "/config.json")
        try link(src + "/diffusion_pytorch_model.fp16.safetensors", dir + "/diffusion_pytorch_model.fp16.safetensors")
        try writeJSON(["_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                       "prediction_type": "v_prediction"], dir + "/scheduler_config.json")
        let loaded = try TeacherLoader.load(path: dir)
        XCTAssertEqual((loaded.denoiser as? DiscreteDDPMTeacher)?.prediction, .vPrediction)
        try check(loaded, golden: "gray", output: "d_v")
    }

    /// Pipeline layout (model_index.json, unet/, scheduler/), DDPMScheduler linear betas, epsilon, 10 classes.
    func testClassConditionalEpsilonTeacherInPipelineLayoutMatchesDiffusers() throws {
        let src = Self.shared + "/ddpm_tiny", dir = makeTempDir()
        guard FileManager.default.fileExists(atPath: src + "/config.json") else {
            return XCTFail("\(src) not found; set ONESTEP_GOLDEN to the shared golden folder")
        }
        try FileManager.default.createDirectory(atPath: dir + "/unet", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/scheduler", withIntermediateDirectories: true)
        try link(src + "/config.json", dir + "/unet/config.json")
        try link(src + "/diffusion_pytorch_model.safetensors", dir + "/unet/diffusion_pytorch_model.safetensors")
        try writeJSON(["_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]],
                      dir + "/model_index.json")
        try writeJSON(["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                       "beta_schedule": "linear", "clip_sample": true], dir + "/scheduler/scheduler_config.json")
        let loaded = try TeacherLoader.load(path: dir)
        try check(loaded, golden: "tiny", output: "d_eps")
        // The google/ddpm-cifar10-32 schedule: sigma 0.0100..157; the student's EDM range 0.002..80 clamps to 0.0100..80.
        let r = loaded.denoiser.sigmaRange
        XCTAssertEqual(r.lowerBound, 0.0100005, accuracy: 1e-6)
        XCTAssertEqual(r.upperBound, 157.4, accuracy: 0.5)
        let s = loaded.denoiser.clamped(EDMSchedulerConfig())
        XCTAssertEqual(s.sigmaMin, r.lowerBound)
        XCTAssertEqual(s.sigmaMax, 80)
    }

    /// The oldest diffusers configs: GaussianDDPMScheduler with "timesteps" (google/ddpm-cifar10-32 before 0.1),
    /// the same schedule as the DDPMScheduler above, so the same golden.
    func testLegacyGaussianDDPMSchedulerConfigIsTheSameTeacher() throws {
        let src = Self.shared + "/ddpm_tiny", dir = makeTempDir()
        guard FileManager.default.fileExists(atPath: src + "/config.json") else {
            return XCTFail("\(src) not found; set ONESTEP_GOLDEN to the shared golden folder")
        }
        try link(src + "/config.json", dir + "/config.json")
        try link(src + "/diffusion_pytorch_model.safetensors", dir + "/diffusion_pytorch_model.safetensors")
        try writeJSON(["_class_name": "GaussianDDPMScheduler", "timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                       "beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": true], dir + "/scheduler_config.json")
        try check(try TeacherLoader.load(path: dir), golden: "tiny", output: "d_eps")
    }

    func testNonDDPMSchedulerIsRefusedNamingIt() throws {
        let dir = makeTempDir()
        let src = Self.repoRoot + "/Tests/Golden/safetensors/ddpm_gray_fp16"
        try link(src + "/config.json", dir + "/config.json")
        try link(src + "/diffusion_pytorch_model.fp16.safetensors", dir + "/diffusion_pytorch_model.fp16.safetensors")
        try writeJSON(["_class_name": "CMStochasticIterativeScheduler"], dir + "/scheduler_config.json")
        XCTAssertThrowsError(try TeacherLoader.load(path: dir)) { e in
            XCTAssertTrue("\(e)".contains("CMStochasticIterativeScheduler"), "\(e)")
            XCTAssertTrue("\(e)".contains("DDPMScheduler"), "\(e)")
        }
    }

    /// `onestep-distill student --teacher DIR` on a DDPM-family folder (a tiny 8-class UNet with DDPMScheduler):
    /// runs, says the student takes the LCM form of the teacher's network over the teacher's first 700 timesteps,
    /// and its folder loads as an LCMScheduler model (the teacher's betas) sampled at 1 and 2 steps.
    func testStudentCommandDistilsADDPMTeacher() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: dir + "/teacher")
        try writeJSON(["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"],
                      dir + "/teacher/scheduler_config.json")
        let start = Date()
        let r = try DistillProcess.run(["student", "--teacher", dir + "/teacher", "--data", dir + "/data", "--out", dir + "/student",
                                        "--steps", "3", "--batch", "4", "--sigmas", "6", "--log-every", "1", "--checkpoint-every", "2",
                                        "--sample-every", "100000"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("DDPMScheduler epsilon, 1000 timesteps"), r.output)
        XCTAssertTrue(r.output.contains("student: LCM form of the teacher's epsilon network (LCMScheduler, num_train_timesteps 700 of the teacher's 1000, original_inference_steps 50), sigma 0.01..11.94 (t 0..699)"), r.output)
        print("DDPM teacher -> student, 3 steps: \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        let student = try ImagePipeline.load(path: dir + "/student")
        let lcm = try XCTUnwrap(student.sampler as? LCMSampler, "\(type(of: student.sampler))")
        let teacherSampler = try XCTUnwrap(try ImagePipeline.load(path: dir + "/teacher").sampler as? DDPMSampler)
        XCTAssertEqual(lcm.schedule.alphasCumprod.count, 700)  // the default terminal timestep (LCMStudentTests)
        XCTAssertTrue(lcm.schedule.alphasCumprod == Array(teacherSampler.schedule.alphasCumprod.prefix(700)), "not the teacher's first 700 alphas_cumprod")
        XCTAssertEqual(lcm.prediction, .epsilon)
        for steps in [1, 2] {
            XCTAssertTrue(student.generate([GenerationRequest(seed: 1, label: 3)], steps: steps).data.allSatisfy(\.isFinite))
        }
        XCTAssertEqual(DistillProcess.lastStep(in: r.output), 3)
    }

    /// `--method regression` of a DDPM-family teacher: the cached pairs are the teacher's DDIM samples (eta 0, from
    /// its DDPMScheduler config) of the seeds' noise, exactly what the pipeline sampled with DDIMScheduler gives,
    /// the cache records the sampler, and the small student loads as a consistency model.
    func testRegressionStudentOfADDPMTeacherUsesDDIMPairs() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let model = TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3)
        try ModelExport.writeEDMTeacher(model, to: dir + "/teacher")
        try writeJSON(["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"],
                      dir + "/teacher/scheduler_config.json")
        let r = try DistillProcess.run(["student", "--method", "regression", "--teacher", dir + "/teacher", "--data", dir + "/data",
                                        "--out", dir + "/small", "--student-channels", "8,16", "--pairs", "6", "--heun-steps", "3",
                                        "--steps", "2", "--batch", "4", "--log-every", "1", "--checkpoint-every", "2", "--sample-every", "100000"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("(DDIMScheduler, 3 steps)"), r.output)
        let cache = try SafetensorsFile(path: dir + "/small/pairs.safetensors")
        XCTAssertEqual(cache.metadata["sampler"], "DDIMScheduler")
        let ddim = try ImagePipeline.load(path: dir + "/teacher").withScheduler("DDIMScheduler")
        let expected = ddim.generate((0..<6).map { GenerationRequest(seed: 1_000_000 + UInt64($0), label: $0 % 8) }, steps: 3)
        XCTAssertEqual(try cache.floats("samples").data, expected.data)
        let student = try ImagePipeline.load(path: dir + "/small")
        XCTAssertTrue(student.sampler is ConsistencySampler, "\(type(of: student.sampler))")
        XCTAssertEqual(student.config.blockOutChannels, [8, 16])
    }

    /// An unconditional v_prediction DDPM teacher (DDIMScheduler) on class-folder data: every method runs (the
    /// folders' labels are not passed to the unconditional networks) and exports an unconditional LCMScheduler model
    /// with the teacher's v_prediction.
    func testEveryMethodDistilsAnUnconditionalVPredictionTeacher() throws {
        let dir = makeTempDir()
        _ = try ShapesGenerator.write(count: 32, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let cfg = try UNetConfig.load(path: dir + "/tiny.json")
        XCTAssertNil(cfg.numClassEmbeds)
        try ModelExport.writeEDMTeacher(TrainableUNet(config: cfg, seed: 3), to: dir + "/teacher")
        try writeJSON(["_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                       "prediction_type": "v_prediction"], dir + "/teacher/scheduler_config.json")
        for method in ["cd", "ect", "dmd"] {
            let start = Date()
            let r = try DistillProcess.run(["student", "--method", method, "--teacher", dir + "/teacher", "--data", dir + "/data",
                                            "--out", dir + "/" + method, "--steps", "3", "--batch", "4", "--sigmas", "6", "--log-every", "1",
                                            "--checkpoint-every", "2", "--sample-every", "100000", "--dmd-grid", "50", "--dmd-ratio", "1"])
            XCTAssertEqual(r.status, 0, r.output)
            XCTAssertTrue(r.output.contains("DDIMScheduler v_prediction, 1000 timesteps"), r.output)
            print("unconditional DDPM teacher, --method \(method), 3 steps: \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
            let student = try ImagePipeline.load(path: dir + "/" + method)
            XCTAssertNil(student.numClasses)
            XCTAssertEqual((student.sampler as? LCMSampler)?.prediction, .vPrediction, "\(type(of: student.sampler))")
            // LCMScheduler with clip_sample false (as the student is trained): finite, clamped only when made uint8.
            XCTAssertTrue(student.generate([GenerationRequest(seed: 2, label: nil)], steps: 1).data.allSatisfy(\.isFinite))
        }
    }
}

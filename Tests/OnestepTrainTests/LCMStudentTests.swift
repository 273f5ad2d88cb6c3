// The LCM form of a DDPM-family teacher's students (StudentParameterization.swift): the initial student (the
// teacher's copy) is the teacher's one-step x0 prediction at sigma_max and the identity (times sqrt(abar_0)) at
// sigma_min, for every method that starts from the copy (cd, ect, dmd); the exported LCMScheduler folder samples
// exactly the function the methods train (1 and 2 steps); and the methods' gradients in this form match finite
// differences on a tiny UNet.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class LCMStudentTests: XCTestCase {
    /// Trainable and inference forwards of the same weights in another operation order, and the sigma -> t ->
    /// sinusoidal embedding at t ~ 999 in float32: relative to the images' largest value.
    static let forwardTolerance: Float = 2e-4

    /// A tiny class-conditional UNet as an epsilon DDPMScheduler teacher (linear betas, 1000 timesteps) and its
    /// LCM student form over the teacher's first `timesteps` (nil: the default terminal timestep).
    func makeTeacher(prediction: String = "epsilon", classes: Int = 3, timesteps: Int? = 1000) throws -> (data: ImageDataset, teacher: DiscreteDDPMTeacher, form: StudentParameterization) {
        let data = TinyData.shapes(count: 8, size: 8, classes: classes)
        let model = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        let config = SchedulerConfig(values: ["num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": prediction],
                                     path: "test", className: "DDPMScheduler")
        let sampler = try DDPMSampler(config: config)
        let teacher = try DiscreteDDPMTeacher(model: model, alphasCumprod: sampler.schedule.alphasCumprod, prediction: sampler.prediction)
        return (data, teacher, .latentConsistency(try LatentConsistencyForm(teacher: sampler, model: model, timesteps: timesteps)))
    }

    func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = b.map(abs).max()!
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    /// f(x; sigma_max) of the student of each method right after construction equals the teacher's D(x; sigma_max)
    /// (c_skip(999) ~ 2.5e-9), and f(x; sigma_min) = sqrt(abar_0) x (t = 0: c_skip 1, c_out 0).
    func testInitialStudentIsTheTeachersOneStepPredictionAndTheBoundaryIsTheIdentity() throws {
        for prediction in ["epsilon", "v_prediction"] {
            let (data, teacher, form) = try makeTeacher(prediction: prediction)
            guard case .latentConsistency(let l) = form else { return XCTFail("not the LCM form") }
            XCTAssertEqual(l.firstTimestep, 999)
            XCTAssertEqual(l.sigmaMax, Foundation.exp(teacher.logSigmas[999]), accuracy: 1e-9)
            XCTAssertEqual(teacher.timestep(sigma: l.sigmaMax), 999, accuracy: 1e-6)
            let top = form.scalings(sigma: l.sigmaMax), bottom = form.scalings(sigma: l.sigmaMin)
            XCTAssertEqual(bottom.timestep, 0, accuracy: 1e-9)
            XCTAssertEqual(bottom.cOut, 0, accuracy: 1e-12)
            XCTAssertEqual(bottom.cSkip, 1 / (l.sigmaMin * l.sigmaMin + 1).squareRoot(), accuracy: 1e-12)
            XCTAssertEqual(bottom.cSkip, Double(l.alphasCumprod[0]).squareRoot(), accuracy: 1e-7)
            // c_out(999) = 1 - 1.3e-9: eps: -sigma_max, v: -sigma_max / sqrt(sigma_max^2 + 1).
            let teacherOut = prediction == "epsilon" ? -l.sigmaMax : -l.sigmaMax / (l.sigmaMax * l.sigmaMax + 1).squareRoot()
            XCTAssertEqual(top.cOut, teacherOut, accuracy: 1e-6 * abs(teacherOut))

            var cd = DistillSettings(), ect = ECTSettings(), dmd = DMDSettings()
            (cd.workers, ect.workers, dmd.gridSize) = (1, 1, 40)
            cd.use(form); ect.use(form); dmd.use(form)
            XCTAssertEqual(cd.schedule.sigmaMax, l.sigmaMax)
            XCTAssertEqual(ect.schedule.sigmaMin, l.sigmaMin)
            let cdo = try ConsistencyDistillationObjective(denoiser: teacher, dataset: data, settings: cd)
            let ecto = try ConsistencyTuningObjective(teacher: teacher.model, dataset: data, settings: ect)
            let dmdo = try DistributionMatchingObjective(teacher: teacher, settings: dmd)

            let b = 3, per = data.imageFloats, labels = [0, 2, 1]
            var rng = TrainRandom(seed: 3)
            let z = (0..<(b * per)).map { _ in rng.normal() }
            let scale = Float(form.initialNoiseScale(sigmaMax: l.sigmaMax))
            let xTop = z.map { $0 * scale }
            var x0 = [Float](repeating: 0, count: b * per)
            data.gather([1, 4, 6], into: &x0)
            var expectTop = [Float](repeating: 0, count: b * per)
            teacher.denoise(xTop, sigmas: Array(repeating: l.sigmaMax, count: b), labels: labels, into: &expectTop)
            let cIn0 = Float(bottom.cSkip)
            let students: [(String, TrainableUNet)] = [("cd", cdo.model), ("ect", ecto.model), ("dmd", dmdo.generator.model)]
            for (name, net) in students {
                let scratch = Buffer()
                var top = [Float](repeating: 0, count: b * per), low = [Float](repeating: 0, count: b * per)
                studentOutput(net, xTop, sigmas: Array(repeating: l.sigmaMax, count: b), labels: labels, form: form, scratch: scratch, into: &top)
                studentOutput(net, x0, sigmas: Array(repeating: l.sigmaMin, count: b), labels: labels, form: form, scratch: scratch, into: &low)
                let e = relativeError(top, expectTop)
                print("\(prediction) \(name): initial f(x; sigma_max) vs the teacher's D: relative error \(e)")
                XCTAssertLessThan(e, Self.forwardTolerance, "\(prediction) \(name) at sigma_max")
                XCTAssertLessThan(relativeError(low, x0.map { $0 * cIn0 }), 1e-6, "\(prediction) \(name) at sigma_min")
                XCTAssertLessThan(relativeError(low, x0), 1e-4, "\(prediction) \(name): f(x, sigma_min) ~ x")
            }
            // DMD's generator samples from the exported 1-step run's start: the same teacher prediction.
            let g = Array(UnsafeBufferPointer(start: dmdo.generate(z: z, labels: labels, batch: b), count: b * per))
            XCTAssertLessThan(relativeError(g, expectTop), Self.forwardTolerance, "\(prediction) dmd generate")
        }
    }

    /// The exported folder (UNet2DModel + LCMScheduler with the teacher's betas) loads as LCMSampler and gives, at
    /// 1 and 2 steps, the training-side f of the same weights on the same torch noise: x = sqrt(sigma^2+1) z,
    /// d1 = f(x; sigma_999); 2 steps: x' = d1 + sigma_499 z' (= LCMScheduler's sqrt(abar) d1 + sqrt(1-abar) z' in
    /// VE), d2 = f(x'; sigma_499).
    func testExportedLCMFolderSamplesTheTrainedFunction() throws {
        for k in [1000, 700] { try checkExportedFolder(timesteps: k) }
    }

    func checkExportedFolder(timesteps k: Int) throws {
        let (_, teacher, form) = try makeTeacher(timesteps: k)
        guard case .latentConsistency(let l) = form else { return XCTFail("not the LCM form") }
        // Weights moved off the teacher's, so the check is not of the teacher copy only.
        let net = try TrainableUNet(config: teacher.model.config, weights: TensorDictionary(teacher.model.parameters))
        for j in 0..<net.store.count where j % 3 == 0 { net.store.values[j] *= 1.05 }
        let dir = makeTempDir()
        try StudentExport.write(net, timesteps: 18, form: form, to: dir)
        let pipeline = try ImagePipeline.load(path: dir)
        let lcm = try XCTUnwrap(pipeline.sampler as? LCMSampler, "\(type(of: pipeline.sampler))")
        XCTAssertEqual(lcm.schedule.alphasCumprod, l.alphasCumprod)
        XCTAssertEqual(Array(teacher.logSigmas.prefix(k)), l.ddpm.logSigmas)
        XCTAssertEqual(lcm.prediction, .epsilon)
        let top = k - 1, middle = k / 2 - 1
        XCTAssertEqual(lcm.start(steps: 2).timesteps, [Float(top), Float(middle)])
        let per = 3 * 8 * 8, seeds: [UInt64] = [5, 6], labels = [2, 0]
        let reqs = zip(seeds, labels).map { GenerationRequest(seed: $0, label: $1) }
        let s999 = Foundation.exp(teacher.logSigmas[top]), s499 = Foundation.exp(teacher.logSigmas[middle])
        var z1: [Float] = [], z2: [Float] = []
        for s in seeds {
            var g = TorchGenerator(seed: s)
            z1 += g.randn(count: per)
            z2 += g.randn(count: per)
        }
        let scratch = Buffer()
        var d1 = [Float](repeating: 0, count: 2 * per), d2 = d1
        let x1 = z1.map { $0 * Float((s999 * s999 + 1).squareRoot()) }
        studentOutput(net, x1, sigmas: [s999, s999], labels: labels, form: form, scratch: scratch, into: &d1)
        let x2 = zip(d1, z2).map { $0 + Float(s499) * $1 }
        studentOutput(net, x2, sigmas: [s499, s499], labels: labels, form: form, scratch: scratch, into: &d2)
        let one = pipeline.generate(reqs, steps: 1).data, two = pipeline.generate(reqs, steps: 2).data
        let e1 = relativeError(one, d1), e2 = relativeError(two, d2)
        print("LCM folder (K = \(k)) vs training-side f: 1 step relative error \(e1), 2 steps \(e2)")
        XCTAssertLessThan(e1, Self.forwardTolerance)
        XCTAssertLessThan(e2, Self.forwardTolerance)
    }

    /// The default K for linear 1e-4..0.02 betas: 700 (sigma_699 = 11.94 <= 15 < sigma_749 = 17.4), exported as the
    /// teacher's first 700 betas; for a schedule whose sigma_{T-1} is already below 15 (Stable Diffusion's
    /// scaled_linear 0.00085..0.012, T = 1000: 14.6) K = T and the config keeps the teacher's beta keys. K out of range is refused.
    func testDefaultTerminalTimestepBoundsTheOneStepAmplification() throws {
        let (_, teacher, form) = try makeTeacher(timesteps: nil)
        guard case .latentConsistency(let l) = form else { return XCTFail("not the LCM form") }
        XCTAssertEqual(l.alphasCumprod.count, 700)
        XCTAssertEqual(l.firstTimestep, 699)
        XCTAssertEqual(l.sigmaMax, 11.94, accuracy: 0.01)
        XCTAssertGreaterThan(Foundation.exp(teacher.logSigmas[749]), LatentConsistencyForm.defaultTerminalSigma)
        let d = try l.schedulerDictionary()
        XCTAssertEqual(d["num_train_timesteps"] as? Int, 700)
        XCTAssertEqual((d["trained_betas"] as? [Double])?.count, 700)
        let sd = SchedulerConfig(values: ["num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012],
                                 path: "test", className: "DDIMScheduler")
        let sdForm = try LatentConsistencyForm(teacher: try DDIMSampler(config: sd), model: teacher.model)
        XCTAssertEqual(sdForm.alphasCumprod.count, 1000)
        XCTAssertTrue(try sdForm.schedulerDictionary()["trained_betas"] is NSNull)
        XCTAssertEqual(try sdForm.schedulerDictionary()["beta_schedule"] as? String, "scaled_linear")
        XCTAssertThrowsError(try makeTeacher(timesteps: 1001)) { e in XCTAssertTrue("\(e)".contains("--lcm-timesteps"), "\(e)") }
    }

    /// objectiveGradientError's relative error (its denominator asserted non-zero).
    func gradientError(_ store: ParameterStore, loss: (_ backward: Bool) -> Double) -> Double {
        let (relative, _, den) = objectiveGradientError(store, loss: loss)
        XCTAssertGreaterThan(den, 0)
        return relative
    }

    /// CD (teacher Heun step and target held fixed: neither depends on the student's weights), ECT (targets held
    /// fixed, as the stop-gradient holds them) and DMD's generator surrogate loss, each in the LCM form.
    func testMethodGradientsInTheLCMFormMatchFiniteDifferences() throws {
        let (data, teacher, form) = try makeTeacher()
        let b = 3, per = data.imageFloats, labels = [0, 2, 1]
        var x0 = [Float](repeating: 0, count: b * per)
        data.gather([0, 3, 5], into: &x0)
        var rng = TrainRandom(seed: 11)
        let z = (0..<(b * per)).map { _ in rng.normal() }

        var cd = DistillSettings()
        (cd.workers, cd.sigmas) = (1, 6)
        cd.use(form)
        let cdo = try ConsistencyDistillationObjective(denoiser: teacher, dataset: data, settings: cd)
        let n = [0, 2, 4]  // sigma_max -> next, a middle pair, the pair ending at sigma_min
        let noisy = (0..<(b * per)).map { x0[$0] + Float(cdo.loss.karras[n[$0 / per]]) * z[$0] }
        let c = PseudoHuber.constant(dimension: per)
        let cdError = gradientError(cdo.model.store) { back in
            noisy.withUnsafeBufferPointer { p in
                let w = cdo.loss.workers[0]
                guard back else {
                    // The same loss without leaving a backward: run the chunk and discard its gradients.
                    let keep = Array(UnsafeBufferPointer(start: cdo.model.store.grads, count: cdo.model.store.count))
                    let v = cdo.loss.runChunk(w, lo: 0, hi: b, n: n, noisy: p.baseAddress!, labels: labels, per: per, c: c, scale: 1)
                    cdo.model.store.grads.update(from: keep, count: keep.count)
                    return v
                }
                return cdo.loss.runChunk(w, lo: 0, hi: b, n: n, noisy: p.baseAddress!, labels: labels, per: per, c: c, scale: 1)
            }
        }
        print("CD objective gradient (LCM form): relative error \(cdError)")
        XCTAssertLessThan(cdError, GradientTolerance.maxRelativeError)

        var ect = ECTSettings()
        ect.workers = 1
        ect.use(form)
        let o = try ConsistencyTuningObjective(teacher: teacher.model, dataset: data, settings: ect)
        let t = [0.3, 1.7, 12.0], r = t.map { ect.r(t: $0, stage: 1) }
        let target = o.targets(x0: x0, z: z, t: t, r: r, labels: labels)
        let ectError = gradientError(o.model.store) { back in
            target.withUnsafeBufferPointer { tp in
                o.chunkLoss(o.firstWorker, lo: 0, hi: b, x0: x0, z: z, t: t, r: r, labels: labels, scale: 1, backward: back, fixedTarget: tp.baseAddress!)
            }
        }
        print("ECT objective gradient (LCM form): relative error \(ectError)")
        XCTAssertLessThan(ectError, GradientTolerance.maxRelativeError)

        var dmd = DMDSettings()
        dmd.gridSize = 40
        dmd.use(form)
        let d = try DistributionMatchingObjective(teacher: teacher, settings: dmd)
        let x = Array(UnsafeBufferPointer(start: d.generate(z: z, labels: labels, batch: b), count: b * per))
        let goal = x.enumerated().map { $1 - 0.3 * Float(($0 % 7) - 3) / 3 }
        let dmdError = gradientError(d.generator.model.store) { back in d.generatorLoss(z: z, target: goal, labels: labels, batch: b, backward: back) }
        print("DMD generator gradient (LCM form): relative error \(dmdError)")
        XCTAssertLessThan(dmdError, GradientTolerance.maxRelativeError)
    }
}

/// kill -9 / resume of an LCM-form student (cd of a DDPMScheduler teacher) through the real binary: resumed within
/// one checkpoint interval and ending on the straight run's tensors, weights and LCMScheduler config, byte for byte.
/// (KillResumeTests covers the consistency form with EDM teachers.)
final class LCMStudentKillResumeTests: XCTestCase {
    func testLCMStudentKilledMidRunResumesToTheStraightRunsWeights() throws {
        let dir = makeTempDir("lcmkillresume")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try ShapesGenerator.write(count: 64, size: 16, seed: 0, to: dir + "/data")
        try writeTinyConfig(to: dir + "/tiny.json")
        let teacher = dir + "/teacher"
        try ModelExport.writeEDMTeacher(TrainableUNet(config: try UNetConfig.load(path: dir + "/tiny.json").withClasses(8), seed: 3), to: teacher)
        try JSONSerialization.data(withJSONObject: ["_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"])
            .write(to: URL(fileURLWithPath: teacher + "/scheduler_config.json"))
        let interval = KillResumeTests.interval
        func args(_ out: String) -> [String] {
            ["student", "--teacher", teacher, "--data", dir + "/data", "--out", out, "--steps", String(KillResumeTests.steps), "--batch", "4",
             "--sigmas", "6", "--log-every", "1", "--checkpoint-every", String(interval), "--sample-every", "100000"]
        }
        let straight = dir + "/straight", killed = dir + "/killed"
        let reference = try DistillProcess.run(args(straight))
        XCTAssertEqual(reference.status, 0, reference.output)
        XCTAssertTrue(reference.output.contains("student: LCM form"), reference.output)

        let run = try DistillProcess(args(killed))
        let killedAt = try run.kill9(atStep: KillResumeTests.killAfter)
        let resumed = try DistillProcess.run(args(killed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        let from = try XCTUnwrap(DistillProcess.resumedStep(in: resumed.output), resumed.output)
        XCTAssertGreaterThan(from, 0)
        XCTAssertLessThanOrEqual(from, killedAt)
        XCTAssertLessThanOrEqual(killedAt - from, interval)

        let a = try checkpointTensors(straight), b = try checkpointTensors(killed)
        for key in ["student/values", "student/target", "student/ema", "student/adam.m", "student/adam.v", "losses"] {
            XCTAssertNotNil(a[key], key)
            XCTAssertEqual(a[key], b[key], key)
        }
        for file in [ModelExport.weightsFile, "scheduler_config.json"] {
            XCTAssertEqual(FileManager.default.contents(atPath: straight + "/" + file), FileManager.default.contents(atPath: killed + "/" + file), file)
        }
        XCTAssertTrue(try ImagePipeline.load(path: killed).sampler is LCMSampler)
    }
}

// Distribution matching distillation in the DMD2 form without its GAN term (Yin et al. 2024, "Improved
// Distribution Matching Distillation"): a one-step generator G and a fake score network mu_fake, both copies of
// the teacher's network; the teacher mu_real is frozen. No data images are used (only class labels, drawn
// uniformly). Per step `number`, for a batch of noise z and labels c:
//   x = G(sigma_max z, c)                                       one-step sample (consistency parameterisation)
//   generator turn (number % fakeUpdatesPerGenerator == 0):
//     sigma ~ Karras grid index U{min_step .. max_step},  x_s = x + sigma n
//     p_real = x - mu_real(x_s; sigma),  p_fake = x - mu_fake(x_s; sigma)          (no gradient through either)
//     g = (p_real - p_fake) / mean|p_real| (per image),  L_G = 0.5 mean((x - sg(x - g))^2), i.e. dL_G/dx = g / (B P)
//   every step, the fake score on the same x (detached):
//     sigma ~ U over the whole Karras grid, x_s = x + sigma n,  L_fake = mean(w (mu_fake(x_s; sigma) - x)^2),
//     w = 1/sigma^2 + 1/sigma_data^2
// Matches tianweiy/DMD2 main/edm/edm_guidance.py (compute_distribution_matching_loss, compute_loss_fake) with
// gan_classifier off; the fake score runs in the teacher's own parameterisation (TeacherDenoiser.preconditioning),
// so it starts equal to the teacher and the first generator gradients are ~0.
// Not data parallel yet: one thread per step (`workers` is ignored and the run says so).
//
// Legend: B batch, P = C*S*S values per image.
import Foundation
import OnestepCore

public struct DMDSettings: Sendable {
    public var steps = 2000
    public var batch = 16
    public var generatorOptimizer = OptimizerConfig()
    public var fakeOptimizer = OptimizerConfig()
    /// Fake-score updates per generator update (DMD2's dfake_gen_update_ratio).
    public var fakeUpdatesPerGenerator = 5
    /// Karras grid of the score noise levels (DMD2 num_train_timesteps) and the generator's range of it.
    public var gridSize = 1000
    public var minStepPercent = 0.02, maxStepPercent = 0.98
    public var saveEMA: Float = 0.999
    /// num_train_timesteps of the exported scheduler config.
    public var sigmas = 18
    public var seed: UInt64 = 0
    public var logEvery = 50
    public var checkpointEvery = 250
    public var sampleEvery = 500
    public var schedule = EDMSchedulerConfig()
    public init() {
        for k in [\DMDSettings.generatorOptimizer, \DMDSettings.fakeOptimizer] {
            self[keyPath: k].learningRate = 2e-5
            self[keyPath: k].warmupSteps = 0
            self[keyPath: k].gradientClip = 1
        }
    }

    public var loop: LoopSettings {
        LoopSettings(steps: steps, logEvery: logEvery, checkpointEvery: checkpointEvery, sampleEvery: sampleEvery, seed: seed ^ 0xD3D)
    }

    public func isGeneratorTurn(step number: Int) -> Bool { number % max(1, fakeUpdatesPerGenerator) == 0 }
}

/// Runs `m` on x (B, P) at per-image scalings and writes cSkip x + cOut F into out; the forward's caches stay
/// for a backward.
func preconditionedOutput(_ m: TrainableUNet, _ x: UnsafePointer<Float>, scalings sc: [TeacherScalings], labels: [Int]?,
                          scratch: Buffer, into out: UnsafeMutablePointer<Float>) {
    let b = sc.count, per = m.config.inChannels * m.config.sampleSize * m.config.sampleSize
    let input = scratch.ensure(b * per)
    for i in 0..<b { let c = Float(sc[i].cIn); for j in (i * per)..<((i + 1) * per) { input[j] = c * x[j] } }
    let f = m.forward(input, batch: b, timesteps: sc.map { Float($0.timestep) }, classLabels: labels)
    for i in 0..<b {
        let cs = Float(sc[i].cSkip), co = Float(sc[i].cOut)
        for j in (i * per)..<((i + 1) * per) { out[j] = cs * x[j] + co * f[j] }
    }
}

public final class DistributionMatchingObjective: TrainingObjective {
    public let kind = "distribution-matching"
    public let label = "dmd"
    public var plotTitle: String { "student: distribution matching (dmd), \(TrainingPlots.describe(generator.model))" }
    public let lossName = "fake-score denoising loss"
    public let generator: TrainingGroup
    public let fake: TrainingGroup
    public let teacher: any TeacherDenoiser
    public let settings: DMDSettings
    /// (gridSize) ascending Karras sigmas, as DMD2 flips them (small sigma first).
    public let grid: [Double]
    let x = Buffer(), noisy = Buffer(), real = Buffer(), fakeOut = Buffer(), grad = Buffer(), scratch = Buffer(), gen = Buffer()
    /// The last step's two losses (generator, fake score), for tests and logs.
    public private(set) var lastLosses: (generator: Double?, fake: Double) = (nil, 0)

    public var groups: [TrainingGroup] { [generator, fake] }
    public var imagesPerStep: Int { settings.batch }
    public var per: Int { let c = generator.model.config; return c.inChannels * c.sampleSize * c.sampleSize }
    public var summary: String {
        "generator and fake score of \(generator.model.parameterCount) parameters each from the teacher, \(settings.fakeUpdatesPerGenerator) fake updates per generator update, batch \(settings.batch)"
    }

    public init(teacher: any TeacherDenoiser, settings: DMDSettings) throws {
        let w = try TensorDictionary(teacher.model.parameters)
        let g = try TrainableUNet(config: teacher.model.config, weights: w), f = try TrainableUNet(config: teacher.model.config, weights: w)
        generator = TrainingGroup(name: "generator", model: g, optimizer: settings.generatorOptimizer,
                                  averages: [("ema", WeightAverage(decay: settings.saveEMA, of: g.store))])
        fake = TrainingGroup(name: "fake-score", model: f, optimizer: settings.fakeOptimizer, averages: [])
        (self.teacher, self.settings) = (teacher, settings)
        grid = Array(settings.schedule.karrasSigmas(settings.gridSize).prefix(settings.gridSize).reversed())
    }

    /// x = G(sigma_max z) for z (B, P): the generator's forward (caches kept for its backward), into `x`.
    func generate(z: UnsafePointer<Float>, labels: [Int]?, batch b: Int) -> UnsafeMutablePointer<Float> {
        let s = settings.schedule, out = x.ensure(b * per), input = gen.ensure(b * per)
        for j in 0..<(b * per) { input[j] = Float(s.sigmaMax) * z[j] }
        consistencyOutput(generator.model, input, sigmas: Array(repeating: s.sigmaMax, count: b), labels: labels,
                          sigmaMin: s.sigmaMin, sigmaData: s.sigmaData, scratch: scratch, into: out)
        return out
    }

    /// DMD2's gradient g = (p_real - p_fake) / mean|p_real| (B, P) for samples x at sigma indices `idx` with noise n.
    func matchingGradient(x: UnsafePointer<Float>, n: UnsafePointer<Float>, idx: [Int], labels: [Int]?) -> [Float] {
        let b = idx.count, p = per, xs = noisy.ensure(b * p), dr = real.ensure(b * p), df = fakeOut.ensure(b * p)
        let sig = idx.map { grid[$0] }
        for i in 0..<b { for j in (i * p)..<((i + 1) * p) { xs[j] = x[j] + Float(sig[i]) * n[j] } }
        teacher.denoise(xs, sigmas: sig, labels: labels, into: dr)
        preconditionedOutput(fake.model, xs, scalings: sig.map(teacher.preconditioning), labels: labels, scratch: scratch, into: df)
        var g = [Float](repeating: 0, count: b * p)
        for i in 0..<b {
            var meanAbs = 0.0
            for j in (i * p)..<((i + 1) * p) { meanAbs += Double(abs(x[j] - dr[j])) }
            meanAbs /= Double(p)
            for j in (i * p)..<((i + 1) * p) {
                let v = Float(Double((x[j] - dr[j]) - (x[j] - df[j])) / meanAbs)
                g[j] = v.isFinite ? v : 0  // torch.nan_to_num
            }
        }
        return g
    }

    /// Generator loss 0.5 mean((x - target)^2) for x = G(sigma_max z); with `backward`, adds its gradient (scaled
    /// by `scale`) into the generator's grads. `target` (B, P) = sg(x - g).
    func generatorLoss(z: UnsafePointer<Float>, target: UnsafePointer<Float>, labels: [Int]?, batch b: Int, backward: Bool, scale: Float = 1) -> Double {
        let xg = generate(z: z, labels: labels, batch: b), p = per, n = Double(b * p)
        let s = settings.schedule
        let cOut = Float(ConsistencyParameterization.scalings(sigma: s.sigmaMax, sigmaMin: s.sigmaMin, sigmaData: s.sigmaData).cOut)
        let g = grad.ensure(b * p)
        var loss = 0.0
        for j in 0..<(b * p) {
            let d = xg[j] - target[j]
            loss += 0.5 * Double(d * d) / n
            g[j] = scale * cOut * d / Float(n)
        }
        if backward { generator.model.backward(g) }
        return loss
    }

    /// Fake-score loss mean(w (mu_fake(x + sigma n; sigma) - x)^2) on samples x (detached); with `backward`, its
    /// gradient into the fake score's grads.
    func fakeLoss(x: UnsafePointer<Float>, n: UnsafePointer<Float>, idx: [Int], labels: [Int]?, backward: Bool) -> Double {
        let b = idx.count, p = per, xs = noisy.ensure(b * p), df = fakeOut.ensure(b * p), g = grad.ensure(b * p)
        let sig = idx.map { grid[$0] }, sc = sig.map(teacher.preconditioning), sd = settings.schedule.sigmaData
        for i in 0..<b { for j in (i * p)..<((i + 1) * p) { xs[j] = x[j] + Float(sig[i]) * n[j] } }
        preconditionedOutput(fake.model, xs, scalings: sc, labels: labels, scratch: scratch, into: df)
        let count = Double(b * p)
        var loss = 0.0
        for i in 0..<b {
            let w = 1 / (sig[i] * sig[i]) + 1 / (sd * sd)
            for j in (i * p)..<((i + 1) * p) {
                let d = Double(df[j] - x[j])
                loss += w * d * d / count
                g[j] = Float(2 * w * d / count * sc[i].cOut)  // dL/dF = dL/dD * c_out
            }
        }
        if backward { fake.model.backward(g) }
        return loss
    }

    public func step(number: Int, rng: inout TrainRandom) -> Double {
        let b = settings.batch, p = per
        // Every random number first, in a fixed order: z, labels, then the fake turn's sigmas and noise, then the
        // generator turn's (drawn only on its steps, decided from `number`).
        let z = (0..<(b * p)).map { _ in rng.normal() }
        let labels = generator.model.config.numClasses.map { k in (0..<b).map { _ in rng.int(k) } }  // real classes, never the null label
        let fakeIdx = (0..<b).map { _ in rng.int(grid.count) }
        let fakeNoise = (0..<(b * p)).map { _ in rng.normal() }
        let turn = settings.isGeneratorTurn(step: number)
        let lo = Int(settings.minStepPercent * Double(grid.count)), hi = min(Int(settings.maxStepPercent * Double(grid.count)) + 1, grid.count)
        let genIdx = turn ? (0..<b).map { _ in lo + rng.int(max(1, hi - lo)) } : []
        let genNoise = turn ? (0..<(b * p)).map { _ in rng.normal() } : []

        let xg = generate(z: z, labels: labels, batch: b)
        let sample = Array(UnsafeBufferPointer(start: xg, count: b * p))  // detached copy for the fake turn
        var genLoss: Double? = nil
        if turn {
            let g = matchingGradient(x: sample, n: genNoise, idx: genIdx, labels: labels)
            let target = zip(sample, g).map { $0 - $1 }
            generator.zeroGradients()
            genLoss = generatorLoss(z: z, target: target, labels: labels, batch: b, backward: true)
            generator.applyUpdate()
        }
        fake.zeroGradients()
        let fl = fakeLoss(x: sample, n: fakeNoise, idx: fakeIdx, labels: labels, backward: true)
        fake.applyUpdate()
        lastLosses = (genLoss, fl)
        return fl
    }

    public func export(to dir: String, step: Int) throws {
        try StudentExport.write(generator.model, weights: generator.ema.shadow, timesteps: settings.sigmas, schedule: settings.schedule, to: dir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(generator.ema.decay)", "onestep.kind": kind])
    }

    public func writeSamples(to dir: String) throws {
        try StudentExport.writeSamples(generator.model, weights: generator.ema.shadow, timesteps: settings.sigmas, to: dir + "/samples.png",
                                       title: "dmd generator (EMA weights), 1 step")
    }
}

/// TrainingLoop of a DMD generator.
public typealias DMDStudentTrainer = TrainingLoop<DistributionMatchingObjective>

extension TrainingLoop where Objective == DistributionMatchingObjective {
    public convenience init(teacher: any TeacherDenoiser, settings: DMDSettings, runDir: String, resume: Bool) throws {
        try self.init(objective: DistributionMatchingObjective(teacher: teacher, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume)
    }
}

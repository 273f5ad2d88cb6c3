// Distribution matching distillation in the DMD2 form without its GAN term (Yin et al. 2024, "Improved
// Distribution Matching Distillation"): a one-step generator G and a fake score network mu_fake, both copies of
// the teacher's network; the teacher mu_real is frozen. No data images are used (only class labels, drawn
// uniformly). Per step `number`, for a batch of noise z and labels c:
//   x = G(sigma_max z, c)                  one-step sample (the teacher's student form: StudentParameterization.swift)
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
// Data parallel like the other methods (DataParallel.swift): every random number of the step is drawn first, in
// image order; each worker takes a contiguous chunk of the batch on its own replicas of both networks (worker 0 on
// the networks themselves) and runs the whole chain for its images (generator forward, matching gradient and
// generator backward on a generator turn, fake-score forward and backward); the replicas' gradients are added
// into each network's in worker order, then the optimizers step. A step's bytes are fixed for a worker count;
// across counts only the grouping of the batch sums changes (as for the other methods; DistributionMatchingTests).
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
    /// Threads that split each batch (data parallel, one replica of each network per extra thread).
    public var workers = 2
    public var schedule = EDMSchedulerConfig()
    /// The LCM form of a DDPM-family teacher (StudentParameterization.swift); nil: the consistency form of `schedule`.
    public var lcmForm: LatentConsistencyForm? = nil
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
/// for a backward (and keep pointing at `scratch`, which must not be reused before it).
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
    private var workers: [Worker] = []
    /// The last step's two losses (generator, fake score), for tests and logs.
    public private(set) var lastLosses: (generator: Double?, fake: Double) = (nil, 0)

    /// One data-parallel lane: a generator and a fake score (worker 0: the groups' own networks, else replicas) and
    /// its buffers. Each network's forward keeps pointing at its own input buffer (genInput, fakeInput) until its
    /// backward, so the two networks never share one.
    final class Worker {
        let generator: TrainableUNet, fake: TrainableUNet
        let x = Buffer(), genInput = Buffer(), fakeInput = Buffer(), noisy = Buffer(), real = Buffer(), fakeOut = Buffer()
        let target = Buffer(), grad = Buffer()
        init(generator: TrainableUNet, fake: TrainableUNet) { (self.generator, self.fake) = (generator, fake) }
    }

    public var groups: [TrainingGroup] { [generator, fake] }
    public var imagesPerStep: Int { settings.batch }
    public var per: Int { let c = generator.model.config; return c.inChannels * c.sampleSize * c.sampleSize }
    public var summary: String {
        "generator and fake score of \(generator.model.parameterCount) parameters each from the teacher, \(settings.fakeUpdatesPerGenerator) fake updates per generator update, batch \(settings.batch)"
    }
    /// The generator's optimizer under the flag names (lr, warmup, ...), the fake score's under "fake-score-".
    public var runSettings: RunSettings {
        let s = settings
        return s.sharedRunSettings.merging(s.generatorOptimizer.runSettings()).merging(s.fakeOptimizer.runSettings(prefix: "fake-score-"))
            .merging(RunSettings(["method": "dmd", "sigmas": String(s.sigmas), "dmd-ratio": String(s.fakeUpdatesPerGenerator),
                                  "dmd-grid": String(s.gridSize), "dmd-generator-range": "\(s.minStepPercent)..\(s.maxStepPercent)"]))
    }

    public init(teacher: any TeacherDenoiser, settings: DMDSettings) throws {
        let w = try TensorDictionary(teacher.model.parameters)
        let g = try TrainableUNet(config: teacher.model.config, weights: w), f = try TrainableUNet(config: teacher.model.config, weights: w)
        generator = TrainingGroup(name: "generator", model: g, optimizer: settings.generatorOptimizer,
                                  averages: [("ema", WeightAverage(decay: settings.saveEMA, of: g.store))])
        fake = TrainingGroup(name: "fake-score", model: f, optimizer: settings.fakeOptimizer, averages: [])
        (self.teacher, self.settings) = (teacher, settings)
        grid = Array(settings.schedule.karrasSigmas(settings.gridSize).prefix(settings.gridSize).reversed())
        for k in 0..<max(1, settings.workers) {
            workers.append(Worker(generator: k == 0 ? g : g.clone(), fake: k == 0 ? f : f.clone()))
        }
    }

    // MARK: the pieces of a step, on one worker's chunk of m images (pointers at the chunk's first image)

    /// x = G(scale z) at sigma_max for z (m, P), as the exported scheduler's 1-step run starts (scale: sigma_max for
    /// the consistency form, sqrt(sigma_max^2 + 1) for the LCM form): the worker's generator forward (caches kept for
    /// its backward), into w.x.
    func generate(_ w: Worker, z: UnsafePointer<Float>, labels: [Int]?, count m: Int) -> UnsafeMutablePointer<Float> {
        let s = settings.schedule, form = settings.parameterization, p = per, out = w.x.ensure(m * p), input = w.noisy.ensure(m * p)
        let scale = Float(form.initialNoiseScale(sigmaMax: s.sigmaMax))
        for j in 0..<(m * p) { input[j] = scale * z[j] }
        studentOutput(w.generator, input, sigmas: Array(repeating: s.sigmaMax, count: m), labels: labels, form: form,
                      scratch: w.genInput, into: out)
        return out
    }

    /// DMD2's gradient g = (p_real - p_fake) / mean|p_real| (m, P) for samples x at grid sigmas `sig` with noise n,
    /// into w.grad (the worker's fake score runs without a backward).
    func matchingGradient(_ w: Worker, x: UnsafePointer<Float>, n: UnsafePointer<Float>, sigmas sig: [Double], labels: [Int]?) -> UnsafeMutablePointer<Float> {
        let m = sig.count, p = per, xs = w.noisy.ensure(m * p), dr = w.real.ensure(m * p), df = w.fakeOut.ensure(m * p)
        for i in 0..<m { for j in (i * p)..<((i + 1) * p) { xs[j] = x[j] + Float(sig[i]) * n[j] } }
        teacher.denoise(xs, sigmas: sig, labels: labels, into: dr)
        preconditionedOutput(w.fake, xs, scalings: sig.map(teacher.preconditioning), labels: labels, scratch: w.fakeInput, into: df)
        let g = w.grad.ensure(m * p)
        for i in 0..<m {
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

    /// The generator's part of L_G = 0.5 mean((x - target)^2) over a batch of `total` values, for its chunk x (m, P),
    /// the output of the worker's last generator forward; with `backward`, adds the gradient into that generator's
    /// grads. Returns the chunk's sum.
    func generatorLoss(_ w: Worker, x: UnsafePointer<Float>, target: UnsafePointer<Float>, count m: Int, total: Int, backward: Bool) -> Double {
        let s = settings.schedule, p = per, n = Double(total)
        let cOut = Float(settings.parameterization.scalings(sigma: s.sigmaMax).cOut)
        let g = w.grad.ensure(m * p)
        var loss = 0.0
        for j in 0..<(m * p) {
            let d = x[j] - target[j]
            loss += 0.5 * Double(d * d) / n
            g[j] = cOut * d / Float(n)
        }
        if backward { w.generator.backward(g) }
        return loss
    }

    /// The fake score's part of mean(w (mu_fake(x + sigma n; sigma) - x)^2) over a batch of `total` values, for
    /// its chunk of samples x (m, P; detached); with `backward`, its gradient into the worker's fake-score grads.
    func fakeLoss(_ w: Worker, x: UnsafePointer<Float>, n: UnsafePointer<Float>, sigmas sig: [Double], labels: [Int]?, total: Int, backward: Bool) -> Double {
        let m = sig.count, p = per, xs = w.noisy.ensure(m * p), df = w.fakeOut.ensure(m * p), g = w.grad.ensure(m * p)
        let sc = sig.map(teacher.preconditioning), sd = settings.schedule.sigmaData
        for i in 0..<m { for j in (i * p)..<((i + 1) * p) { xs[j] = x[j] + Float(sig[i]) * n[j] } }
        preconditionedOutput(w.fake, xs, scalings: sc, labels: labels, scratch: w.fakeInput, into: df)
        let count = Double(total)
        var loss = 0.0
        for i in 0..<m {
            let wt = 1 / (sig[i] * sig[i]) + 1 / (sd * sd)
            for j in (i * p)..<((i + 1) * p) {
                let d = Double(df[j] - x[j])
                loss += wt * d * d / count
                g[j] = Float(2 * wt * d / count * sc[i].cOut)  // dL/dF = dL/dD * c_out
            }
        }
        if backward { w.fake.backward(g) }
        return loss
    }

    /// One worker's share of step: images lo..<hi of the batch. Returns its (generator, fake-score) loss sums.
    func runChunk(_ w: Worker, lo: Int, hi: Int, draws d: StepDraws, turn: Bool) -> (generator: Double, fake: Double) {
        let m = hi - lo, p = per, total = d.batch * p
        guard m > 0 else { return (0, 0) }
        let lab = d.labels.map { Array($0[lo..<hi]) }
        return d.z.withUnsafeBufferPointer { z in
            d.fakeNoise.withUnsafeBufferPointer { fakeNoise in
                d.genNoise.withUnsafeBufferPointer { genNoise in
                    let xg = generate(w, z: z.baseAddress! + lo * p, labels: lab, count: m)
                    var genLoss = 0.0
                    if turn {
                        let g = matchingGradient(w, x: xg, n: genNoise.baseAddress! + lo * p, sigmas: d.genIdx[lo..<hi].map { grid[$0] }, labels: lab)
                        let target = w.target.ensure(m * p)
                        for j in 0..<(m * p) { target[j] = xg[j] - g[j] }  // sg(x - g)
                        genLoss = generatorLoss(w, x: xg, target: target, count: m, total: total, backward: true)
                    }
                    let fl = fakeLoss(w, x: xg, n: fakeNoise.baseAddress! + lo * p, sigmas: d.fakeIdx[lo..<hi].map { grid[$0] }, labels: lab,
                                      total: total, backward: true)
                    return (genLoss, fl)
                }
            }
        }
    }

    /// Every random number of a step, drawn before the batch is split (so the stream is the same for any worker count).
    struct StepDraws {
        let batch: Int
        let z: [Float]               // (B, P)
        let labels: [Int]?           // (B)
        let fakeIdx: [Int]           // (B) grid indices of the fake score's sigmas
        let fakeNoise: [Float]       // (B, P)
        let genIdx: [Int]            // (B) on a generator turn, else empty
        let genNoise: [Float]        // (B, P) on a generator turn, else empty
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
        let draws = StepDraws(batch: b, z: z, labels: labels, fakeIdx: fakeIdx, fakeNoise: fakeNoise, genIdx: genIdx, genNoise: genNoise)

        let active = Array(workers.prefix(DataParallel.activeWorkers(count: b, available: workers.count)))
        DataParallel.broadcast(generator.model.store, to: active.dropFirst().map(\.generator.store))
        DataParallel.broadcast(fake.model.store, to: active.dropFirst().map(\.fake.store))
        generator.zeroGradients()
        fake.zeroGradients()
        let job = DMDJob(objective: self, workers: active, draws: draws, turn: turn)
        let losses = DataParallel.map(count: b, workers: active.count) { k, chunk in job.run(k, chunk) }
        if turn {
            DataParallel.reduceGradients(active.dropFirst().map(\.generator.store), into: generator.model.store)
            generator.applyUpdate()
        }
        DataParallel.reduceGradients(active.dropFirst().map(\.fake.store), into: fake.model.store)
        fake.applyUpdate()
        let fl = losses.reduce(0) { $0 + $1.fake }
        lastLosses = (turn ? losses.reduce(0) { $0 + $1.generator } : nil, fl)
        return fl
    }

    // MARK: whole-batch forms on worker 0 (the groups' own networks), for the gradient checks

    var firstWorker: Worker { workers[0] }

    /// x = G(sigma_max z) for z (B, P), into worker 0's buffer.
    func generate(z: UnsafePointer<Float>, labels: [Int]?, batch b: Int) -> UnsafeMutablePointer<Float> {
        generate(workers[0], z: z, labels: labels, count: b)
    }

    /// DMD2's gradient g (B, P) for samples x at sigma indices `idx` with noise n.
    func matchingGradient(x: UnsafePointer<Float>, n: UnsafePointer<Float>, idx: [Int], labels: [Int]?) -> [Float] {
        let g = matchingGradient(workers[0], x: x, n: n, sigmas: idx.map { grid[$0] }, labels: labels)
        return Array(UnsafeBufferPointer(start: g, count: idx.count * per))
    }

    /// Generator loss 0.5 mean((G(sigma_max z) - target)^2); with `backward`, its gradient into the generator's grads.
    func generatorLoss(z: UnsafePointer<Float>, target: UnsafePointer<Float>, labels: [Int]?, batch b: Int, backward: Bool) -> Double {
        let x = generate(workers[0], z: z, labels: labels, count: b)
        return generatorLoss(workers[0], x: x, target: target, count: b, total: b * per, backward: backward)
    }

    /// Fake-score loss on samples x (B, P; detached); with `backward`, its gradient into the fake score's grads.
    func fakeLoss(x: UnsafePointer<Float>, n: UnsafePointer<Float>, idx: [Int], labels: [Int]?, backward: Bool) -> Double {
        fakeLoss(workers[0], x: x, n: n, sigmas: idx.map { grid[$0] }, labels: labels, total: idx.count * per, backward: backward)
    }

    public func export(to dir: String, step: Int) throws {
        try StudentExport.write(generator.model, weights: generator.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(generator.ema.decay)", "onestep.kind": kind])
    }

    public func writeSamples(to dir: String) throws {
        try StudentExport.writeSamples(generator.model, weights: generator.ema.shadow, timesteps: settings.sigmas, form: settings.parameterization, to: dir + "/samples.png",
                                       title: "dmd generator (EMA weights), 1 step")
    }
}

/// Workers touch disjoint networks and buffers; the draws are read-only while they run.
private struct DMDJob {
    let objective: DistributionMatchingObjective
    let workers: [DistributionMatchingObjective.Worker]
    let draws: DistributionMatchingObjective.StepDraws
    let turn: Bool
    func run(_ k: Int, _ chunk: Range<Int>) -> (generator: Double, fake: Double) {
        objective.runChunk(workers[k], lo: chunk.lowerBound, hi: chunk.upperBound, draws: draws, turn: turn)
    }
}

/// TrainingLoop of a DMD generator.
public typealias DMDStudentTrainer = TrainingLoop<DistributionMatchingObjective>

extension TrainingLoop where Objective == DistributionMatchingObjective {
    public convenience init(teacher: any TeacherDenoiser, settings: DMDSettings, runDir: String, resume: Bool,
                            force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: DistributionMatchingObjective(teacher: teacher, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }
}

// A student smaller than its teacher, trained by plain regression (Luhman & Luhman 2021; SlimFlow, Zhu et al.
// 2024, shows the one-step student may be much smaller than the teacher):
//   pairs   (z_i, y_i): z_i ~ N(0, I) from seed i (TorchGenerator, as the server draws it), y_i = the teacher's
//           Heun sample from sigma_max z_i at `heunSteps` Karras sigmas (a DDPM-family teacher: its DDIM sample,
//           eta 0, from z_i in `heunSteps` steps; the caller passes the pipeline with DDIMScheduler), for label
//           i mod K. Generated once and cached on disk as safetensors: noise (M, P), samples (M, P), labels (M);
//           __metadata__ names the sampler, and a cache made with another sampler, count or step count is remade.
//   loss    pseudo-Huber(f_theta(sigma_max z, sigma_max), y) with the consistency parameterization, so the
//           student is a one-step consistency model to the server (the same scheduler config as CD's).
// Only sigma_max is trained: the small student is a one-step model; its 2-4-step samples are not meaningful.
//
// Legend: M pairs, P = C*S*S values per image.
import Dispatch
import Foundation
import OnestepCore

public struct TeacherPairs: Sendable {
    public var noise: [Float]    // (M, P) standard normal
    public var samples: [Float]  // (M, P) in [-1, 1]
    public var labels: [Int]?    // (M)
    public var count: Int
    public var per: Int

    /// Loads the cache at `path` when it matches (count, steps, the teacher's sampler class), else generates the
    /// pairs with `teacher` (its own sampler: it must be deterministic given the initial noise) and writes it.
    public static func loadOrGenerate(path: String, teacher: ImagePipeline, count: Int, heunSteps: Int, seedBase: UInt64 = 1_000_000,
                                      workers: Int, log: (String) -> Void) throws -> TeacherPairs {
        let per = teacher.channels * teacher.imageSize * teacher.imageSize
        // A guided teacher's pairs are other pairs: the guidance scale is part of the cached sampler's name.
        let samplerName = type(of: teacher.sampler).className + (teacher.classGuidance.map { " guidance \($0)" } ?? "")
        if FileManager.default.fileExists(atPath: path), let f = try? SafetensorsFile(path: path),
           f.metadata["count"] == String(count), f.metadata["heun_steps"] == String(heunSteps),
           (f.metadata["sampler"] ?? EDMHeunSampler.className) == samplerName {
            let noise = try f.floats("noise"), samples = try f.floats("samples")
            let labels = f.entries["labels"] != nil ? try f.floats("labels").data.map { Int($0) } : nil
            guard noise.count == count * per, samples.count == count * per else { throw DataError("\(path): pair tensors have the wrong size") }
            log("pairs: \(count) cached in \(path)")
            return TeacherPairs(noise: noise.data, samples: samples.data, labels: labels, count: count, per: per)
        }
        let start = Date()
        let reqs = (0..<count).map { i in GenerationRequest(seed: seedBase + UInt64(i), label: teacher.numClasses.map { i % $0 }) }
        let chunk = 64
        let chunks = (count + chunk - 1) / chunk
        let out = UnsafeMutableBufferPointer<Float>.allocate(capacity: count * per)
        defer { out.deallocate() }
        let job = PairJob(teacher: teacher, reqs: reqs, chunk: chunk, steps: heunSteps, per: per, out: out)
        let lanes = max(1, workers)
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var c = lane
            while c < chunks { job.run(c); c += lanes }
        }
        var noise = [Float](repeating: 0, count: count * per)
        for i in 0..<count {
            var g = TorchGenerator(seed: reqs[i].seed)
            let z = g.randn(count: per)
            for j in 0..<per { noise[i * per + j] = z[j] }
        }
        let pairs = TeacherPairs(noise: noise, samples: Array(out), labels: teacher.numClasses.map { k in (0..<count).map { $0 % k } },
                                 count: count, per: per)
        var w = SafetensorsWriter()
        w.add("noise", Tensor(shape: [count, per], data: pairs.noise))
        w.add("samples", Tensor(shape: [count, per], data: pairs.samples))
        if let l = pairs.labels { w.add("labels", Tensor(shape: [count], data: l.map { Float($0) })) }
        w.metadata = ["count": String(count), "heun_steps": String(heunSteps), "seed_base": String(seedBase), "teacher": teacher.name,
                      "sampler": samplerName]
        try w.write(to: path)
        log(String(format: "pairs: generated %d teacher samples (%@, %d %@) in %.0fs -> %@", count, samplerName, heunSteps,
                   teacher.sampler is EDMHeunSampler ? "sigmas" : "steps", Date().timeIntervalSince(start), path))
        return pairs
    }
}

private struct PairJob: @unchecked Sendable {
    let teacher: ImagePipeline, reqs: [GenerationRequest], chunk: Int, steps: Int, per: Int
    let out: UnsafeMutableBufferPointer<Float>  // each chunk writes its own rows
    func run(_ c: Int) {
        let lo = c * chunk, hi = min(reqs.count, lo + chunk)
        let x = teacher.generate(Array(reqs[lo..<hi]), steps: steps)
        for j in 0..<x.count { out[lo * per + j] = x.data[j] }
    }
}

public struct RegressionSettings: Sendable {
    public var steps = 3000
    public var batch = 32
    public var pairs = 4096
    public var heunSteps = 18
    public var optimizer = OptimizerConfig()
    public var saveEMA: Float = 0.999
    public var seed: UInt64 = 0
    public var logEvery = 50
    public var checkpointEvery = 500
    public var sampleEvery = 1000
    public var workers = 2
    public var schedule = EDMSchedulerConfig()
    /// num_train_timesteps written to the scheduler config (only the 1-step schedule matters).
    public var timesteps = 18
    public init() {
        optimizer.learningRate = 1e-3
        optimizer.warmupSteps = 100
    }

    /// The loop's part (the pair-index stream, seeded apart from the initialisation's seed).
    public var loop: LoopSettings {
        LoopSettings(steps: steps, logEvery: logEvery, checkpointEvery: checkpointEvery, sampleEvery: sampleEvery, seed: seed ^ 0xD157_111)
    }
}

/// Regression onto teacher pairs as a TrainingObjective: one network ("student", a fresh init of `config`) with
/// Adam and the saved EMA; data parallel over `settings.workers` (worker 0 is the student itself).
public final class RegressionObjective: TrainingObjective {
    public let kind = "regression"
    public let label = "regression"
    public var plotTitle: String { "small student: regression onto teacher samples, \(TrainingPlots.describe(model))" }
    public let lossName = "pseudo-Huber loss to the teacher's sample"
    public let student: TrainingGroup
    public let pairs: TeacherPairs
    public let settings: RegressionSettings
    private let replicas: [TrainableUNet]
    private let buffers: [(x: Buffer, out: Buffer, grad: Buffer, scratch: Buffer)]

    public var groups: [TrainingGroup] { [student] }
    public var model: TrainableUNet { student.model }
    public var imagesPerStep: Int { settings.batch }
    public var summary: String {
        "\(model.parameterCount) parameters, channels \(model.config.blockOutChannels), regression on \(pairs.count) pairs, batch \(settings.batch)"
    }
    public var runSettings: RunSettings {
        let s = settings
        return s.sharedRunSettings.merging(s.optimizer.runSettings()).merging(RunSettings([
            "method": "regression", "sigmas": String(s.timesteps), "pairs": String(pairs.count), "heun-steps": String(s.heunSteps),
            "student-channels": RunSettings.text(model.config.blockOutChannels)]))
    }

    public init(config: UNetConfig, pairs: TeacherPairs, settings: RegressionSettings) throws {
        guard config.inChannels * config.sampleSize * config.sampleSize == pairs.per else {
            throw DataError("the student config makes \(config.inChannels)x\(config.sampleSize)x\(config.sampleSize) images, the pairs have \(pairs.per) values each")
        }
        (self.pairs, self.settings) = (pairs, settings)
        let model = TrainableUNet(config: config, seed: settings.seed)
        student = TrainingGroup(name: "student", model: model, optimizer: settings.optimizer,
                                averages: [("ema", WeightAverage(decay: settings.saveEMA, of: model.store))])
        let workers = max(1, settings.workers)
        replicas = (1..<workers).map { _ in model.clone() }
        buffers = (0..<workers).map { _ in (Buffer(), Buffer(), Buffer(), Buffer()) }
    }

    public func step(number: Int, rng: inout TrainRandom) -> Double {
        let b = settings.batch, per = pairs.per
        let idx = (0..<b).map { _ in rng.int(pairs.count) }
        student.zeroGradients()
        let models = [model] + replicas.prefix(DataParallel.activeWorkers(count: b, available: 1 + replicas.count) - 1)
        DataParallel.broadcast(model.store, to: models.dropFirst().map(\.store))
        let sigma = settings.schedule.sigmaMax, sm = settings.schedule.sigmaMin, sd = settings.schedule.sigmaData
        let job = RegressionJob(objective: self, models: models, idx: idx, sigma: sigma, sm: sm, sd: sd,
                                c: PseudoHuber.constant(dimension: per), scale: 1 / Float(b))
        let losses = DataParallel.map(count: b, workers: models.count) { k, chunk in job.run(k, chunk) }
        DataParallel.reduceGradients(models.dropFirst().map(\.store), into: model.store)
        student.applyUpdate()
        return losses.reduce(0, +) / Double(b)
    }

    /// Pairs `idx` on worker k's network m: forward at sigma_max, pseudo-Huber against the teacher samples, backward.
    func runChunk(_ k: Int, _ m: TrainableUNet, idx: ArraySlice<Int>, sigma: Double, sm: Double, sd: Double, c: Double, scale: Float) -> Double {
        let per = pairs.per, n = idx.count
        guard n > 0 else { return 0 }
        let (xb, outb, gb, scratch) = buffers[k]
        let x = xb.ensure(n * per), out = outb.ensure(n * per), g = gb.ensure(n * per)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: n * per)
        defer { y.deallocate() }
        for (r, i) in idx.enumerated() {
            for j in 0..<per { x[r * per + j] = Float(sigma) * pairs.noise[i * per + j]; y[r * per + j] = pairs.samples[i * per + j] }
        }
        let labels = pairs.labels.map { l in idx.map { l[$0] } }
        consistencyOutput(m, x, sigmas: Array(repeating: sigma, count: n), labels: labels, sigmaMin: sm, sigmaData: sd, scratch: scratch, into: out)
        let cOut = Float(ConsistencyParameterization.scalings(sigma: sigma, sigmaMin: sm, sigmaData: sd).cOut)
        var loss = 0.0
        for r in 0..<n { loss += PseudoHuber.lossAndGradient(out + r * per, y + r * per, count: per, c: c, gradScale: scale * cOut, grad: g + r * per) }
        m.backward(g)
        return loss
    }

    public func export(to dir: String, step: Int) throws {
        try StudentExport.write(model, weights: student.ema.shadow, timesteps: settings.timesteps, schedule: settings.schedule, to: dir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(student.ema.decay)", "onestep.kind": kind])
    }

    public func writeSamples(to dir: String) throws {
        try StudentExport.writeSamples(model, weights: student.ema.shadow, timesteps: settings.timesteps, to: dir + "/samples.png",
                                       title: "small student (EMA weights), 1 step")
    }
}

private struct RegressionJob {
    let objective: RegressionObjective, models: [TrainableUNet], idx: [Int]
    let sigma: Double, sm: Double, sd: Double, c: Double, scale: Float
    func run(_ k: Int, _ chunk: Range<Int>) -> Double {
        objective.runChunk(k, models[k], idx: idx[chunk], sigma: sigma, sm: sm, sd: sd, c: c, scale: scale)
    }
}

/// TrainingLoop of a student regressed onto teacher pairs.
public typealias RegressionStudentTrainer = TrainingLoop<RegressionObjective>

extension TrainingLoop where Objective == RegressionObjective {
    public convenience init(config: UNetConfig, pairs: TeacherPairs, settings: RegressionSettings, runDir: String, resume: Bool,
                            force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: RegressionObjective(config: config, pairs: pairs, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }
}

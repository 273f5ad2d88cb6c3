// A student smaller than its teacher, trained by plain regression (Luhman & Luhman 2021; SlimFlow, Zhu et al.
// 2024, shows the one-step student may be much smaller than the teacher):
//   pairs   (z_i, y_i): z_i ~ N(0, I) from seed i (TorchGenerator, as the server draws it), y_i = the teacher's
//           Heun sample from sigma_max z_i at `heunSteps` Karras sigmas, for label i mod K. Generated once and
//           cached on disk as safetensors: noise (M, P), samples (M, P), labels (M).
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

    /// Loads the cache at `path` when it matches (count, steps), else generates the pairs with `teacher` and writes it.
    public static func loadOrGenerate(path: String, teacher: ImagePipeline, count: Int, heunSteps: Int, seedBase: UInt64 = 1_000_000,
                                      workers: Int, log: (String) -> Void) throws -> TeacherPairs {
        let per = teacher.channels * teacher.imageSize * teacher.imageSize
        if FileManager.default.fileExists(atPath: path), let f = try? SafetensorsFile(path: path),
           f.metadata["count"] == String(count), f.metadata["heun_steps"] == String(heunSteps) {
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
        w.metadata = ["count": String(count), "heun_steps": String(heunSteps), "seed_base": String(seedBase), "teacher": teacher.name]
        try w.write(to: path)
        log(String(format: "pairs: generated %d teacher samples (Heun, %d sigmas) in %.0fs -> %@", count, heunSteps, Date().timeIntervalSince(start), path))
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
}

public final class RegressionStudentTrainer: StudentLoop {
    public let pairs: TeacherPairs
    public let settings: RegressionSettings
    private var replicas: [TrainableUNet] = []
    private let buffers = (0..<2).map { _ in (Buffer(), Buffer(), Buffer(), Buffer()) }

    public init(config: UNetConfig, pairs: TeacherPairs, settings: RegressionSettings, runDir: String, resume: Bool) throws {
        guard config.inChannels * config.sampleSize * config.sampleSize == pairs.per else {
            throw DataError("the student config makes \(config.inChannels)x\(config.sampleSize)x\(config.sampleSize) images, the pairs have \(pairs.per) values each")
        }
        self.pairs = pairs
        self.settings = settings
        let model = TrainableUNet(config: config, seed: settings.seed)
        try super.init(model: model, runDir: runDir, optimizer: settings.optimizer, saveEMA: settings.saveEMA, targetRate: 0,
                       timesteps: settings.timesteps, kind: "regression", seed: settings.seed, steps: settings.steps,
                       logEvery: settings.logEvery, checkpointEvery: settings.checkpointEvery, sampleEvery: settings.sampleEvery,
                       resume: resume)
        replicas = (0..<max(1, min(2, settings.workers))).map { _ in model.clone() }
    }

    override func lossAndGradient() -> Double {
        let b = settings.batch, per = pairs.per
        let idx = (0..<b).map { _ in rng.int(pairs.count) }
        let active = Array(replicas.prefix(max(1, min(replicas.count, b))))
        for r in active { r.store.copyValues(from: model.store); r.store.zeroGrads() }
        let bounds = (0...active.count).map { $0 * b / active.count }
        let sigma = settings.schedule.sigmaMax, sm = settings.schedule.sigmaMin, sd = settings.schedule.sigmaData
        let c = PseudoHuber.constant(dimension: per)
        let losses = UnsafeMutableBufferPointer<Double>.allocate(capacity: active.count)
        defer { losses.deallocate() }
        let job = RegressionJob(trainer: self, active: active, bounds: bounds, idx: idx, sigma: sigma, sm: sm, sd: sd, c: c, scale: 1 / Float(b), losses: losses)
        if active.count == 1 { job.run(0) } else { DispatchQueue.concurrentPerform(iterations: active.count) { job.run($0) } }
        for r in active { addInPlace(model.store.grads, r.store.grads, count: model.store.count) }
        return losses.reduce(0, +) / Double(b)
    }

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
}

private struct RegressionJob: @unchecked Sendable {
    let trainer: RegressionStudentTrainer, active: [TrainableUNet], bounds: [Int], idx: [Int]
    let sigma: Double, sm: Double, sd: Double, c: Double, scale: Float
    let losses: UnsafeMutableBufferPointer<Double>
    func run(_ k: Int) {
        losses[k] = trainer.runChunk(k, active[k], idx: idx[bounds[k]..<bounds[k + 1]], sigma: sigma, sm: sm, sd: sd, c: c, scale: scale)
    }
}

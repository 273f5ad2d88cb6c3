// The training loops of the two students, sharing a run-folder layout with the teacher's:
//   config.json, diffusion_pytorch_model.safetensors (saved-EMA weights), scheduler_config.json (consistency)
//   checkpoint.safetensors  values, target, ema, adam.m, adam.v (P), losses + step, RNG state, elapsed, config
//                           (Checkpoint.swift), with checkpoint.prev.safetensors the one before it
//   losses.csv, loss.png, samples.png (1-step samples, one row per class)
//
//  - ConsistencyStudentTrainer: consistency distillation from an EDM teacher, student initialised from it.
//  - RegressionStudentTrainer: a (possibly smaller) student regressed onto cached (noise, teacher Heun sample)
//    pairs at sigma_max only (SlimFlow's observation that a one-step student may be smaller than its teacher).
import Foundation
import OnestepCore

public enum StudentExport {
    /// Writes config, weights (from `values`, default the model's own) and a CMStochasticIterativeScheduler
    /// config with num_train_timesteps = `timesteps`, so ImagePipeline samples it in 1 (or 2-4) steps.
    public static func write(_ model: TrainableUNet, weights values: UnsafePointer<Float>? = nil, timesteps: Int,
                             schedule: EDMSchedulerConfig = .init(), to dir: String, metadata: [String: String] = [:]) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFile.write(model.config.jsonString(), to: dir + "/config.json")
        var w = SafetensorsWriter()
        w.metadata = metadata.merging(["format": "pt"], uniquingKeysWith: { a, _ in a })
        for (name, t) in model.store.tensors(from: values) { w.add(name, t) }
        try w.write(to: dir + "/" + ModelExport.weightsFile)
        var c = ConsistencySchedulerConfig()
        (c.numTrainTimesteps, c.sigmaMin, c.sigmaMax, c.sigmaData, c.rho) = (timesteps, schedule.sigmaMin, schedule.sigmaMax, schedule.sigmaData, schedule.rho)
        try AtomicFile.write(try SamplerRegistry.json(for: ConsistencySampler(config: c)), to: dir + "/scheduler_config.json")
    }

    /// One-step samples of `weights` (one row per class, seeds 0..<columns) as a PNG grid.
    public static func writeSamples(_ model: TrainableUNet, weights: UnsafePointer<Float>, timesteps: Int, to path: String, columns: Int = 8) throws {
        let inference = try UNet2DModel(config: model.config, weights: TensorDictionary(model.store.tensors(from: weights)))
        var c = ConsistencySchedulerConfig()
        c.numTrainTimesteps = timesteps
        let rows = model.config.numClassEmbeds ?? columns
        let reqs = (0..<rows).flatMap { r in (0..<columns).map { GenerationRequest(seed: UInt64($0), label: model.config.numClassEmbeds == nil ? nil : r) } }
        let images = ConsistencySampler(config: c).sample(reqs, steps: 1, channels: model.config.inChannels, size: model.config.sampleSize) { x, t, l in
            inference.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: l, pool: .forCurrentThread)
        }
        try TrainingPlots.write(TrainingPlots.grid(images, columns: columns), to: path)
    }
}

/// Shared loop: batches, optimizer, both EMAs, progress lines, checkpoints, samples, clean stop.
public class StudentLoop {
    public let model: TrainableUNet
    public let runDir: String
    public let optimizer: Optimizer
    public let ema: WeightAverage
    /// theta^- (consistency distillation's target network); unused by regression.
    let target: UnsafeMutablePointer<Float>
    let targetRate: Float
    let timesteps: Int
    let kind: String
    var rng: TrainRandom
    public private(set) var step = 0
    public private(set) var losses: [Float] = []
    /// Said once after init: stale temporary files removed, a checkpoint that predates checksums.
    public private(set) var resumeNotes: [String] = []
    var elapsed = 0.0
    var checkpointedStep: Int?
    public let totalSteps: Int, checkpointEvery: Int
    let logEvery: Int, sampleEvery: Int

    init(model: TrainableUNet, runDir: String, optimizer: OptimizerConfig, saveEMA: Float, targetRate: Float, timesteps: Int,
         kind: String, seed: UInt64, steps: Int, logEvery: Int, checkpointEvery: Int, sampleEvery: Int, resume: Bool) throws {
        self.model = model
        self.runDir = runDir
        self.optimizer = Optimizer(optimizer, for: model.store)
        ema = WeightAverage(decay: saveEMA, of: model.store)
        target = .allocate(capacity: max(model.store.count, 1))
        target.initialize(from: model.store.values, count: model.store.count)
        self.targetRate = targetRate
        self.timesteps = timesteps
        self.kind = kind
        rng = TrainRandom(seed: seed ^ 0xD157_111)
        (totalSteps, self.logEvery, self.checkpointEvery, self.sampleEvery) = (steps, logEvery, checkpointEvery, sampleEvery)
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        resumeNotes = Checkpoint.cleanUpAfterKilledRun(runDir)
        if resume {
            let state = try Checkpoint.read(kind: kind, from: runDir, model: model, optimizer: self.optimizer, ema: ema, extra: ["target": target])
            (step, rng.state, elapsed, losses) = (state.step, state.rngState, state.elapsedSeconds, state.losses)
            resumeNotes += state.notes
            checkpointedStep = step
        }
    }

    deinit { target.deallocate() }

    /// One batch's gradient into model.store.grads; returns the loss. Subclasses implement it.
    func lossAndGradient() -> Double { fatalError("subclass") }

    public func run(shouldStop: () -> Bool, log: (String) -> Void) throws -> TrainingSummary {
        var windowStart = Date(), windowSteps = 0, windowLoss = 0.0
        let startStep = step
        var interrupted = false
        while step < totalSteps {
            if shouldStop() { interrupted = true; break }
            model.store.zeroGrads()
            let loss = lossAndGradient()
            optimizer.update(model.store)
            ema.update(from: model.store)
            let mu = targetRate, v = model.store.values
            for i in 0..<model.store.count { target[i] = mu * target[i] + (1 - mu) * v[i] }
            step += 1
            losses.append(Float(loss))
            windowSteps += 1
            windowLoss += loss
            if step % logEvery == 0 || step == totalSteps {
                let now = Date(), dt = now.timeIntervalSince(windowStart)
                elapsed += dt
                let eta = Double(totalSteps - step) * dt / Double(max(windowSteps, 1))
                log(String(format: "%@ step %d/%d  loss %.5f  %.2f s/step  elapsed %@  ETA %@", kind, step, totalSteps,
                           windowLoss / Double(windowSteps), dt / Double(max(windowSteps, 1)),
                           TeacherTrainer.duration(elapsed), TeacherTrainer.duration(eta)))
                (windowStart, windowSteps, windowLoss) = (now, 0, 0)
            }
            if step % sampleEvery == 0 { try save(samples: true) } else if step % checkpointEvery == 0 { try save(samples: false) }
        }
        elapsed += Date().timeIntervalSince(windowStart)
        try save(samples: true)
        let trained = step - startStep
        let tail = losses.suffix(logEvery)
        return TrainingSummary(steps: step, finalLoss: tail.isEmpty ? 0 : tail.reduce(0) { $0 + Double($1) } / Double(tail.count),
                               seconds: elapsed, imagesPerSecond: elapsed > 0 ? Double(trained) / elapsed : 0, interrupted: interrupted)
    }

    public func save(samples: Bool) throws {
        // The same step twice (a checkpoint step that is also the last) would make checkpoint.prev a copy of it.
        if step != checkpointedStep {
            try Checkpoint.write(kind: kind, model: model, optimizer: optimizer, ema: ema, extra: ["target": UnsafePointer(target)],
                                 state: TrainingState(step: step, rngState: rng.state, elapsedSeconds: elapsed, losses: losses), to: runDir)
            checkpointedStep = step
        }
        try StudentExport.write(model, weights: ema.shadow, timesteps: timesteps, to: runDir,
                                metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(ema.decay)", "onestep.kind": kind])
        try TrainingPlots.write(TrainingPlots.lossCurve(losses), to: runDir + "/loss.png")
        if samples { try StudentExport.writeSamples(model, weights: ema.shadow, timesteps: timesteps, to: runDir + "/samples.png") }
    }
}

/// Consistency distillation; see ConsistencyDistillation.swift for the objective.
public final class ConsistencyStudentTrainer: StudentLoop {
    public let dataset: ImageDataset
    public let settings: DistillSettings
    let objective: ConsistencyDistillationLoss
    private let batchBuffer = Buffer()

    /// `teacher` is the teacher's model directory; the student is its copy (same config and weights).
    public init(teacher: UNet2DModel, dataset: ImageDataset, settings: DistillSettings, runDir: String, resume: Bool) throws {
        guard dataset.size == teacher.config.sampleSize, dataset.channels == teacher.config.inChannels else {
            throw DataError("the teacher makes \(teacher.config.inChannels)x\(teacher.config.sampleSize)x\(teacher.config.sampleSize) images, the data is \(dataset.channels)x\(dataset.size)x\(dataset.size)")
        }
        if let k = teacher.config.numClassEmbeds, dataset.classNames?.count != k {
            throw DataError("the teacher has \(k) classes but the data has \(dataset.classNames?.count ?? 0) class folders")
        }
        let student = try TrainableUNet(config: teacher.config, weights: TensorDictionary(teacher.parameters))
        self.dataset = dataset
        self.settings = settings
        objective = ConsistencyDistillationLoss(teacher: EDMTeacher(model: teacher, sigmaData: settings.schedule.sigmaData),
                                                student: student, settings: settings)
        try super.init(model: student, runDir: runDir, optimizer: settings.optimizer, saveEMA: settings.saveEMA,
                       targetRate: settings.targetEMA, timesteps: settings.sigmas, kind: "consistency-distillation",
                       seed: settings.seed, steps: settings.steps, logEvery: settings.logEvery,
                       checkpointEvery: settings.checkpointEvery, sampleEvery: settings.sampleEvery, resume: resume)
    }

    override func lossAndGradient() -> Double {
        let b = settings.batch
        let x = batchBuffer.ensure(b * dataset.imageFloats)
        let indices = (0..<b).map { _ in rng.int(dataset.count) }
        dataset.gather(indices, into: x)
        let labels = dataset.labels.map { l in indices.map { l[$0] } }
        return objective.step(student: model, target: target, clean: x, batch: b, labels: labels, rng: &rng)
    }
}


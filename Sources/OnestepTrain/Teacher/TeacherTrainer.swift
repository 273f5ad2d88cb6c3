// The teacher training loop: EDM denoiser loss on random batches, Adam/RAdam, EMA, and everything a long run
// needs — a progress line, a loss curve and a sample grid every K steps, atomic checkpoints, resume, and a
// clean stop (checkpoint + model) when `shouldStop` turns true (Ctrl-C).
//
// The run folder is itself a model directory (config.json, diffusion_pytorch_model.safetensors with the EMA
// weights, scheduler_config.json), plus checkpoint.safetensors (and checkpoint.prev.safetensors, the one before
// it; see Checkpoint/), losses.csv, loss.png and samples.png.
import Foundation
import OnestepCore

public struct TeacherSettings: Sendable {
    public var steps = 4000
    public var batch = 32
    public var optimizer = OptimizerConfig()
    public var emaDecay: Float = 0.999
    public var seed: UInt64 = 0
    public var logEvery = 50
    public var sampleEvery = 1000
    public var checkpointEvery = 500
    /// Heun steps (Karras sigmas) for the sample grids.
    public var sampleSteps = 18
    public var samplesPerClass = 8
    public var edm = EDMTrainingConfig()
    /// Threads that split each batch (data parallel, one model replica per extra thread).
    public var workers = 1
    public init() {
        optimizer.learningRate = 1e-3
        optimizer.warmupSteps = 200
    }
}

public struct TrainingSummary: Sendable {
    public var steps: Int
    public var finalLoss: Double
    public var seconds: Double
    public var imagesPerSecond: Double
    public var interrupted: Bool
}

public final class TeacherTrainer {
    public let model: TrainableUNet
    public let dataset: ImageDataset
    public let settings: TeacherSettings
    public let runDir: String
    public let optimizer: Optimizer
    public let ema: WeightAverage
    let objective: EDMDenoiserLoss
    let sampler: TrainableUNet
    let replicas: [TrainableUNet]
    var rng: TrainRandom
    public private(set) var step = 0
    public private(set) var losses: [Float] = []
    /// Said once after init: stale temporary files removed, a checkpoint that predates checksums.
    public private(set) var resumeNotes: [String] = []
    var elapsed = 0.0
    var checkpointedStep: Int?
    private let batchBuffer = Buffer()

    public init(config: UNetConfig, dataset: ImageDataset, settings: TeacherSettings, runDir: String, resume: Bool) throws {
        guard config.sampleSize == dataset.size, config.inChannels == dataset.channels, config.outChannels == dataset.channels else {
            throw DataError("the model takes \(config.inChannels)x\(config.sampleSize)x\(config.sampleSize) images but the data is \(dataset.channels)x\(dataset.size)x\(dataset.size)")
        }
        if let k = config.numClassEmbeds {
            guard let names = dataset.classNames, names.count == k else {
                throw DataError("the model has \(k) classes but the data has \(dataset.classNames?.count ?? 0) class folders")
            }
        }
        (self.dataset, self.settings, self.runDir) = (dataset, settings, runDir)
        let model = TrainableUNet(config: config, seed: settings.seed)
        self.model = model
        optimizer = Optimizer(settings.optimizer, for: model.store)
        ema = WeightAverage(decay: settings.emaDecay, of: model.store)
        objective = EDMDenoiserLoss(config: settings.edm)
        sampler = model.clone()
        replicas = (1..<max(1, settings.workers)).map { _ in model.clone() }
        rng = TrainRandom(seed: settings.seed ^ 0x5EED)
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        resumeNotes = Checkpoint.cleanUpAfterKilledRun(runDir)
        if resume {
            let state = try Checkpoint.read(from: runDir, model: model, optimizer: optimizer, ema: ema)
            (step, rng.state, elapsed, losses) = (state.step, state.rngState, state.elapsedSeconds, state.losses)
            resumeNotes += state.notes
            checkpointedStep = step
        }
    }

    /// Trains until `settings.steps` or until `shouldStop()`; either way leaves a checkpoint and the model.
    public func run(shouldStop: () -> Bool, log: (String) -> Void) throws -> TrainingSummary {
        let b = settings.batch, per = dataset.imageFloats
        let x = batchBuffer.ensure(b * per)
        var windowStart = Date(), windowSteps = 0, windowLoss = 0.0
        let startStep = step
        var interrupted = false
        log("teacher: \(model.parameterCount) parameters, \(dataset.count) images\(dataset.classNames.map { " in \($0.count) classes" } ?? ""), batch \(b), steps \(step + 1)...\(settings.steps)")
        while step < settings.steps {
            if shouldStop() { interrupted = true; break }
            let indices = (0..<b).map { _ in rng.int(dataset.count) }
            dataset.gather(indices, into: x)
            let labels = dataset.labels.map { l in indices.map { l[$0] } }
            model.store.zeroGrads()
            let loss = objective.step(model: model, replicas: replicas, clean: x, batch: b, labels: labels, rng: &rng)
            optimizer.update(model.store)
            ema.update(from: model.store)
            step += 1
            losses.append(Float(loss))
            windowSteps += 1
            windowLoss += loss
            if step % settings.logEvery == 0 || step == settings.steps {
                let now = Date(), dt = now.timeIntervalSince(windowStart)
                elapsed += dt
                let ips = Double(windowSteps * b) / max(dt, 1e-9)
                let eta = Double(settings.steps - step) * dt / Double(max(windowSteps, 1))
                log(String(format: "step %d/%d  loss %.4f  %.1f img/s  elapsed %@  ETA %@", step, settings.steps,
                           windowLoss / Double(windowSteps), ips, Self.duration(elapsed), Self.duration(eta)))
                (windowStart, windowSteps, windowLoss) = (now, 0, 0)
            }
            if step % settings.checkpointEvery == 0 { try saveAll(withSamples: false) }
            if step % settings.sampleEvery == 0 { try writeSamples(); log("wrote \(runDir)/samples.png and loss.png") }
        }
        elapsed += Date().timeIntervalSince(windowStart)
        try saveAll(withSamples: true)
        let trained = step - startStep
        return TrainingSummary(steps: step, finalLoss: losses.suffix(max(1, settings.logEvery)).reduce(0) { $0 + Double($1) } / Double(max(1, min(losses.count, settings.logEvery))),
                               seconds: elapsed, imagesPerSecond: elapsed > 0 ? Double(trained * b) / elapsed : 0, interrupted: interrupted)
    }

    /// Checkpoint + model directory (EMA weights) + loss curve; samples too when asked.
    public func saveAll(withSamples: Bool) throws {
        // The same step twice (a checkpoint step that is also the last) would make checkpoint.prev a copy of it.
        if step != checkpointedStep {
            try Checkpoint.write(model: model, optimizer: optimizer, ema: ema,
                                 state: TrainingState(step: step, rngState: rng.state, elapsedSeconds: elapsed, losses: losses), to: runDir)
            checkpointedStep = step
        }
        try ModelExport.writeEDMTeacher(model, weights: ema.shadow, to: runDir,
                                        metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(settings.emaDecay)"])
        try TrainingPlots.write(TrainingPlots.lossCurve(losses), to: runDir + "/loss.png")
        if withSamples { try writeSamples() }
    }

    /// samples.png: one row per class (or an 8x8 grid), Heun on `sampleSteps` Karras sigmas, EMA weights,
    /// seeds 0..<columns so successive grids are comparable.
    public func writeSamples() throws {
        ema.copy(into: sampler.store)
        let cols = settings.samplesPerClass
        let rows = model.config.numClassEmbeds ?? cols
        let requests = (0..<rows).flatMap { r in
            (0..<cols).map { c in GenerationRequest(seed: UInt64(c), label: model.config.numClassEmbeds == nil ? nil : r) }
        }
        let images = sampler.sampleEDM(requests, steps: settings.sampleSteps)
        try TrainingPlots.write(TrainingPlots.grid(images, columns: cols), to: runDir + "/samples.png")
        try TrainingPlots.write(TrainingPlots.lossCurve(losses), to: runDir + "/loss.png")
    }

    static func duration(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}

// The EDM teacher as a TrainingObjective: one network ("teacher") with Adam/RAdam and an EMA, trained with the EDM
// denoiser loss (EDMDenoiserLoss.swift) on random batches of an image folder. TrainingLoop runs it; the run folder
// is itself a model directory (config.json, diffusion_pytorch_model.safetensors with the EMA weights,
// scheduler_config.json for EDMHeunScheduler), plus the loop's checkpoint, losses.csv, loss.png and samples.png
// (one row per class, Heun on `sampleSteps` Karras sigmas, seeds 0..<columns so successive grids are comparable).
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
    /// Probability of training an image on the null label instead of its class (classifier-free guidance, Ho &
    /// Salimans 2022); needs a config with a null label (UNetConfig.nullClassLabel). 0: every image its class.
    public var labelDropout = 0.0
    public init() {
        optimizer.learningRate = 1e-3
        optimizer.warmupSteps = 200
    }

    /// The loop's part. The random stream's seed differs from the initialisation's (`seed`).
    public var loop: LoopSettings {
        LoopSettings(steps: steps, logEvery: logEvery, checkpointEvery: checkpointEvery, sampleEvery: sampleEvery, seed: seed ^ 0x5EED)
    }
}

public final class EDMTeacherObjective: TrainingObjective {
    public let kind = Checkpoint.teacherKind
    public let label = "teacher"
    public var plotTitle: String { "teacher: EDM denoiser, \(TrainingPlots.describe(model))" }
    public let lossName = "EDM denoising loss (weighted MSE)"
    public let teacher: TrainingGroup
    public let dataset: ImageDataset
    public let settings: TeacherSettings
    let loss: EDMDenoiserLoss
    /// Replicas for the data-parallel workers after the first, and the network the sample grids run on.
    let replicas: [TrainableUNet]
    public let sampler: TrainableUNet
    private let batchBuffer = Buffer()

    public var groups: [TrainingGroup] { [teacher] }
    public var model: TrainableUNet { teacher.model }
    public var ema: WeightAverage { teacher.ema }
    public var imagesPerStep: Int { settings.batch }
    public var summary: String {
        "\(model.parameterCount) parameters, \(dataset.count) images\(dataset.classNames.map { " in \($0.count) classes" } ?? ""), batch \(settings.batch)"
    }
    /// Named by the teacher command's flags; the model config is checked apart (Checkpoint.read: parameter counts).
    public var runSettings: RunSettings {
        let s = settings, e = s.edm
        return s.optimizer.runSettings().merging(RunSettings([
            "steps": String(s.steps), "batch": String(s.batch), "ema": RunSettings.text(s.emaDecay), "seed": String(s.seed),
            "edm": "sigma_data \(e.sigmaData), p_mean \(e.pMean), p_std \(e.pStd)", "data-images": String(dataset.count),
            "label-dropout": RunSettings.text(s.labelDropout)]))
    }

    /// A fresh network for `config` (initialised from `settings.seed`); throws DataError when the data does not fit it.
    public init(config: UNetConfig, dataset: ImageDataset, settings: TeacherSettings) throws {
        guard config.sampleSize == dataset.size, config.inChannels == dataset.channels, config.outChannels == dataset.channels else {
            throw DataError("the model takes \(config.inChannels)x\(config.sampleSize)x\(config.sampleSize) images but the data is \(dataset.channels)x\(dataset.size)x\(dataset.size)")
        }
        if let k = config.numClasses {
            guard let names = dataset.classNames, names.count == k else {
                throw DataError("the model has \(k) classes but the data has \(dataset.classNames?.count ?? 0) class folders")
            }
        }
        guard settings.labelDropout == 0 || config.nullClassLabel != nil else {
            throw DataError("label dropout \(settings.labelDropout) needs a class-conditional model with a null label (null_class_label in its config)")
        }
        (self.dataset, self.settings) = (dataset, settings)
        let model = TrainableUNet(config: config, seed: settings.seed)
        teacher = TrainingGroup(name: "teacher", model: model, optimizer: settings.optimizer,
                                averages: [("ema", WeightAverage(decay: settings.emaDecay, of: model.store))])
        loss = EDMDenoiserLoss(config: settings.edm)
        replicas = (1..<max(1, settings.workers)).map { _ in model.clone() }
        sampler = model.clone()
    }

    public func step(number: Int, rng: inout TrainRandom) -> Double {
        let b = settings.batch
        let x = batchBuffer.ensure(b * dataset.imageFloats)
        let indices = (0..<b).map { _ in rng.int(dataset.count) }
        dataset.gather(indices, into: x)
        var labels = dataset.labels.map { l in indices.map { l[$0] } }
        // Drawn only with label dropout on, so runs without it keep their random stream (and resume the same).
        if settings.labelDropout > 0, let null = model.config.nullClassLabel, var l = labels {
            for i in 0..<b where Double(rng.uniform()) < settings.labelDropout { l[i] = null }
            labels = l
        }
        teacher.zeroGradients()
        let value = loss.step(model: model, replicas: replicas, clean: x, batch: b, labels: labels, rng: &rng)
        teacher.applyUpdate()
        return value
    }

    public func export(to dir: String, step: Int) throws {
        try ModelExport.writeEDMTeacher(model, weights: ema.shadow, to: dir,
                                        metadata: ["onestep.trained_steps": String(step), "onestep.weights": "ema \(settings.emaDecay)"])
    }

    public func writeSamples(to dir: String) throws {
        ema.copy(into: sampler.store)
        let cols = settings.samplesPerClass
        let rows = model.config.numClasses ?? cols
        let requests = (0..<rows).flatMap { r in
            // Unconditional: every image its own seed (rows of one seed range each would repeat the same row).
            (0..<cols).map { c in model.config.numClassEmbeds == nil ? GenerationRequest(seed: UInt64(r * cols + c), label: nil)
                                                                      : GenerationRequest(seed: UInt64(c), label: r) }
        }
        let images = sampler.sampleEDM(requests, steps: settings.sampleSteps)
        let labels = TrainingPlots.sampleGridLabels(title: "teacher (EMA weights), Heun \(settings.sampleSteps) sigmas", rows: rows, columns: cols,
                                                    conditional: model.config.numClassEmbeds != nil, classNames: model.config.classNames)
        try TrainingPlots.write(TrainingPlots.grid(images, columns: cols, labels: labels), to: dir + "/samples.png")
    }
}

/// TrainingLoop of an EDM teacher.
public typealias TeacherTrainer = TrainingLoop<EDMTeacherObjective>

extension TrainingLoop where Objective == EDMTeacherObjective {
    /// A teacher run in `runDir`: a fresh network for `config`, or on `resume` the one in its checkpoint.
    public convenience init(config: UNetConfig, dataset: ImageDataset, settings: TeacherSettings, runDir: String, resume: Bool,
                            force: Bool = false, inputs: RunSettings = RunSettings()) throws {
        try self.init(objective: EDMTeacherObjective(config: config, dataset: dataset, settings: settings), runDir: runDir,
                      settings: settings.loop, resume: resume, force: force, inputs: inputs)
    }
}

// What a student run folder holds besides TrainingLoop's checkpoint and plots: a consistency model directory
//   config.json, diffusion_pytorch_model.safetensors (saved-EMA weights), scheduler_config.json
//   (CMStochasticIterativeScheduler), and samples.png (1-step samples, one row per class).
// Shared by the two student objectives: ConsistencyDistillationObjective (ConsistencyDistillation.swift) and
// RegressionObjective (RegressionDistillation.swift).
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

    /// One-step samples of `weights` (one row per class, seeds 0..<columns; unconditional: seeds 0..<columns^2)
    /// as a PNG grid under `title`, class names on the rows.
    public static func writeSamples(_ model: TrainableUNet, weights: UnsafePointer<Float>, timesteps: Int, to path: String, columns: Int = 8,
                                    title: String = "student (EMA weights), 1 step") throws {
        let inference = try UNet2DModel(config: model.config, weights: TensorDictionary(model.store.tensors(from: weights)))
        var c = ConsistencySchedulerConfig()
        c.numTrainTimesteps = timesteps
        let rows = model.config.numClasses ?? columns
        let conditional = model.config.numClassEmbeds != nil
        let reqs = (0..<rows).flatMap { r in (0..<columns).map { GenerationRequest(seed: UInt64(conditional ? $0 : r * columns + $0), label: conditional ? r : nil) } }
        let images = ConsistencySampler(config: c).sample(reqs, steps: 1, channels: model.config.inChannels, size: model.config.sampleSize) { x, t, l in
            inference.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: l, pool: .forCurrentThread)
        }
        let labels = TrainingPlots.sampleGridLabels(title: title, rows: rows, columns: columns, conditional: conditional, classNames: model.config.classNames)
        try TrainingPlots.write(TrainingPlots.grid(images, columns: columns, labels: labels), to: path)
    }
}

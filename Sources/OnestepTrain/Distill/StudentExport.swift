// What a student run folder holds besides TrainingLoop's checkpoint and plots: a consistency model directory
//   config.json, diffusion_pytorch_model.safetensors (saved-EMA weights), scheduler_config.json
//   (CMStochasticIterativeScheduler, or LCMScheduler for a DDPM-family teacher's students: StudentParameterization),
//   and samples.png (1-step samples, one row per class).
// Shared by the two student objectives: ConsistencyDistillationObjective (ConsistencyDistillation.swift) and
// RegressionObjective (RegressionDistillation.swift).
import Foundation
import OnestepCore

public enum StudentExport {
    /// Writes config, weights (from `values`, default the model's own) and a CMStochasticIterativeScheduler
    /// config with num_train_timesteps = `timesteps`, so ImagePipeline samples it in 1 (or 2-4) steps.
    public static func write(_ model: TrainableUNet, weights values: UnsafePointer<Float>? = nil, timesteps: Int,
                             schedule: EDMSchedulerConfig = .init(), to dir: String, metadata: [String: String] = [:]) throws {
        try write(model, weights: values, timesteps: timesteps, form: .consistency(schedule), to: dir, metadata: metadata)
    }

    /// Writes config, weights and the scheduler config of the student's form (StudentParameterization.sampler):
    /// CMStochasticIterativeScheduler (num_train_timesteps = `timesteps`) or LCMScheduler (the teacher's betas).
    public static func write(_ model: TrainableUNet, weights values: UnsafePointer<Float>? = nil, timesteps: Int,
                             form: StudentParameterization, to dir: String, metadata: [String: String] = [:]) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFile.write(model.config.jsonString(), to: dir + "/config.json")
        var w = SafetensorsWriter()
        w.metadata = metadata.merging(["format": "pt"], uniquingKeysWith: { a, _ in a })
        for (name, t) in model.store.tensors(from: values) { w.add(name, t) }
        try w.write(to: dir + "/" + ModelExport.weightsFile)
        try AtomicFile.write(try SamplerRegistry.json(for: form.sampler(timesteps: timesteps)), to: dir + "/scheduler_config.json")
    }

    /// One-step samples of `weights` (one row per class, seeds 0..<columns; unconditional: seeds 0..<columns^2)
    /// as a PNG grid under `title`, class names on the rows, sampled by the form's scheduler as the server would.
    public static func writeSamples(_ model: TrainableUNet, weights: UnsafePointer<Float>, timesteps: Int,
                                    form: StudentParameterization = .consistency(EDMSchedulerConfig()), to path: String, columns: Int = 8,
                                    title: String = "student (EMA weights), 1 step") throws {
        let inference = try UNet2DModel(config: model.config, weights: TensorDictionary(model.store.tensors(from: weights)))
        let rows = model.config.numClasses ?? columns
        let conditional = model.config.numClassEmbeds != nil
        let reqs = (0..<rows).flatMap { r in (0..<columns).map { GenerationRequest(seed: UInt64(conditional ? $0 : r * columns + $0), label: conditional ? r : nil) } }
        let labels = GenerationRequest.labels(of: reqs)
        let images = try form.sampler(timesteps: timesteps).sample(reqs, steps: 1, channels: model.config.inChannels, size: model.config.sampleSize) { x, t in
            inference.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: labels, pool: .forCurrentThread)
        }
        let gridLabels = TrainingPlots.sampleGridLabels(title: title, rows: rows, columns: columns, conditional: conditional, classNames: model.config.classNames)
        try TrainingPlots.write(TrainingPlots.grid(images, columns: columns, labels: gridLabels), to: path)
    }
}

// Training speed beside the inference forward (the serving path, fp32 kernels) on the same model and batch,
// measured in one run. GFLOP/s uses UNet2DModel.flopsPerImage for the forward and counts a training step as 3x the forward (forward, input
// gradients, weight gradients: the three GEMMs of every layer).
import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let benchCommand = Subcommand("bench", summary: "training images/s and GFLOP/s next to the inference forward rate", flags: [
    FlagSpec("model", "model directory to measure (default: the default teacher config)"),
    FlagSpec("size", "image side of the default teacher config", default: "16"),
    FlagSpec("classes", "classes of the default teacher config (0 = unconditional)", default: "8"),
    FlagSpec("batch", "images per step", default: "32"),
    FlagSpec("steps", "timed steps per measurement", default: "10"),
    FlagSpec("threads", "comma-separated OpenBLAS thread counts to compare", default: "1,2"),
    FlagSpec("workers", "comma-separated data-parallel worker counts to compare (training)", default: "1,2"),
], run: runBench)

func runBench(_ flags: ParsedFlags) throws {
    let batch = try flags.requiredInt("batch", 1...4096), steps = try flags.requiredInt("steps", 1...100_000)
    let threads = try (flags.string("threads") ?? "1").split(separator: ",").map { s -> Int in
        guard let t = Int(s), (1...64).contains(t) else { throw FlagError("--threads \(s): expected integers 1...64, comma-separated") }
        return t
    }
    let workerCounts = try (flags.string("workers") ?? "1").split(separator: ",").map { s -> Int in
        guard let w = Int(s), (1...64).contains(w) else { throw FlagError("--workers \(s): expected integers 1...64, comma-separated") }
        return w
    }
    let trainable: TrainableUNet
    if let dir = flags.string("model") {
        let (model, _) = try ModelDirectory(path: dir).loadModel()
        trainable = try TrainableUNet(config: model.config, weights: TensorDictionary(model.parameters))
    } else {
        let k = try flags.requiredInt("classes", 0...1000)
        let cfg = try ModelExport.defaultTeacherConfig(size: Int(try flags.choice("size", ["8", "16", "32", "64"]))!, channels: 3,
                                                       classNames: k == 0 ? nil : (0..<k).map { "class\($0)" })
        trainable = TrainableUNet(config: cfg, seed: 0)
    }
    var inference = try trainable.inferenceModel()
    inference.packForServing(.fp32)
    let pool = BufferPool()
    let cfg = trainable.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
    let flops = inference.flopsPerImage
    stdoutLine(String(format: "model: %d parameters, %dx%d, %.1f MFLOP per image forward; batch %d", trainable.parameterCount,
                      cfg.sampleSize, cfg.sampleSize, flops / 1e6, batch))
    var rng = TrainRandom(seed: 1)
    let x = Tensor(shape: [batch, cfg.inChannels, cfg.sampleSize, cfg.sampleSize], data: (0..<(batch * per)).map { _ in rng.normal() * 0.5 })
    let labels = cfg.numClassEmbeds.map { k in (0..<batch).map { $0 % k } }
    let t = (0..<batch).map { _ in Float(250 * (-1.2 + 1.2 * Double(rng.normal()))) }
    let loss = EDMDenoiserLoss()
    for th in threads { for workers in workerCounts {
        let replicas = (1..<workers).map { _ in trainable.clone() }
        BLAS.threads = th
        _ = inference.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool)
        var start = Date()
        for _ in 0..<steps { _ = inference.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool) }
        let fwd = Date().timeIntervalSince(start) / Double(steps)
        let step: Double = x.data.withUnsafeBufferPointer { xp in
            trainable.store.zeroGrads()
            _ = loss.step(model: trainable, replicas: replicas, clean: xp.baseAddress!, batch: batch, labels: labels, rng: &rng)
            start = Date()
            for _ in 0..<steps {
                trainable.store.zeroGrads()
                _ = loss.step(model: trainable, replicas: replicas, clean: xp.baseAddress!, batch: batch, labels: labels, rng: &rng)
            }
            return Date().timeIntervalSince(start) / Double(steps)
        }
        stdoutLine(String(format: "threads %d, workers %d: inference forward %.0f img/s (%.1f GFLOP/s); training step %.1f img/s (%.1f GFLOP/s, %.0f ms/step); train/forward time %.2fx",
                          th, workers, Double(batch) / fwd, flops * Double(batch) / fwd / 1e9,
                          Double(batch) / step, 3 * flops * Double(batch) / step / 1e9, step * 1000, step / fwd))
    } }
}

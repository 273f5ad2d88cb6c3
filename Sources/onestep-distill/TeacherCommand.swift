import Foundation
import OnestepCore
import OnestepTrain

let teacherCommand = Command(name: "teacher", summary: "train an EDM teacher (diffusers UNet2DModel) on a folder of PNGs", flags: [
    Flag(name: "data", help: "folder of PNGs, or of class sub-folders of PNGs"),
    Flag(name: "out", help: "run folder: becomes a model directory, plus checkpoint, losses, loss.png, samples.png"),
    Flag(name: "config", help: "UNet config.json to train (default: a small 3-level teacher sized to --size)"),
    Flag(name: "size", help: "image side when no --config is given", defaultValue: "16"),
    Flag(name: "steps", help: "total optimizer steps", defaultValue: "4000"),
    Flag(name: "batch", help: "images per step", defaultValue: "32"),
    Flag(name: "lr", help: "peak learning rate", defaultValue: "1e-3"),
    Flag(name: "optimizer", help: "adam or radam", defaultValue: "adam"),
    Flag(name: "warmup", help: "linear learning-rate warm-up steps", defaultValue: "200"),
    Flag(name: "weight-decay", help: "decoupled weight decay on kernels and matrices", defaultValue: "0"),
    Flag(name: "clip", help: "global gradient-norm clip, 0 = off", defaultValue: "1"),
    Flag(name: "ema", help: "EMA decay of the saved weights", defaultValue: "0.999"),
    Flag(name: "seed", help: "initialisation, batch and noise seed", defaultValue: "0"),
    Flag(name: "log-every", help: "steps between progress lines", defaultValue: "50"),
    Flag(name: "sample-every", help: "steps between sample grids (samples.png)", defaultValue: "1000"),
    Flag(name: "checkpoint-every", help: "steps between checkpoints", defaultValue: "500"),
    Flag(name: "sample-steps", help: "Heun steps (Karras sigmas) for the sample grids", defaultValue: "18"),
    Flag(name: "workers", help: "threads splitting each batch (data parallel; 2 on a 2-core machine)", defaultValue: "2"),
    Flag(name: "threads", help: "OpenBLAS threads per worker", defaultValue: "1"),
    Flag(name: "resume", help: "continue the run in --out from its checkpoint", isSwitch: true),
])

func runTeacher(_ flags: Flags) throws {
    let dataDir = try flags.required("data"), out = try flags.required("out")
    var s = TeacherSettings()
    s.steps = try flags.int("steps", 1...10_000_000)
    s.batch = try flags.int("batch", 1...4096)
    s.optimizer.learningRate = try flags.float("lr", 1e-8...1)
    s.optimizer.kind = OptimizerKind(rawValue: try flags.choice("optimizer", OptimizerKind.allCases.map(\.rawValue)))!
    s.optimizer.warmupSteps = try flags.int("warmup", 0...10_000_000)
    s.optimizer.weightDecay = try flags.float("weight-decay", 0...1)
    s.optimizer.gradientClip = try flags.float("clip", 0...1e6)
    s.emaDecay = try flags.float("ema", 0...0.999999)
    s.seed = UInt64(try flags.int("seed", 0...Int(Int32.max)))
    s.logEvery = try flags.int("log-every", 1...1_000_000)
    s.sampleEvery = try flags.int("sample-every", 1...10_000_000)
    s.checkpointEvery = try flags.int("checkpoint-every", 1...10_000_000)
    s.sampleSteps = try flags.int("sample-steps", 1...64)
    BLAS.threads = try flags.int("threads", 1...64)
    s.workers = try flags.int("workers", 1...64)
    let resume = flags.isSet("resume")
    try checkResumeFlag(resume, out: out)

    // The model config: the checkpoint's on resume, else --config, else the default sized to --size.
    var config: UNetConfig?
    if resume { config = try Checkpoint.config(in: out) } else if let path = flags.string("config") {
        do { config = try UNetConfig.load(path: path) } catch let e as ConfigError { throw UsageError("--config \(path): \(e)") }
    }
    let size = try config?.sampleSize ?? Int(flags.choice("size", ["8", "16", "32", "64"]))!
    let channels = config?.inChannels ?? 3
    let data = try ImageFolder.load(path: dataDir, size: size, channels: channels, warn: { stderrLine("warning: " + $0) })
    stdoutLine("data: \(data.count) images \(size)x\(size) from \(dataDir)"
               + (data.classNames.map { ", classes: \($0.joined(separator: " "))" } ?? ", unconditional")
               + (data.skipped > 0 ? ", \(data.skipped) unreadable files skipped" : ""))
    if config == nil {
        config = try ModelExport.defaultTeacherConfig(size: size, channels: channels, classNames: data.classNames)
    } else if var c = config, c.numClassEmbeds != nil || data.classNames != nil, !resume {
        // A given config is made to agree with the data's classes (names in id2label, count in num_class_embeds).
        guard let names = data.classNames else { throw UsageError("--config has num_class_embeds but \(dataDir) has no class folders") }
        if let k = c.numClassEmbeds, k != names.count {
            throw UsageError("--config has num_class_embeds \(k) but the data has \(names.count) classes")
        }
        c.numClassEmbeds = names.count
        c.classNames = names
        config = c
    }
    let trainer = try TeacherTrainer(config: config!, dataset: data, settings: s, runDir: out, resume: resume)
    Checkpoint.resumeLines(out, resumed: resume, step: trainer.step, every: s.checkpointEvery, notes: trainer.resumeNotes).forEach(stdoutLine)
    try AtomicFile.write(trainingRecord(s, data: dataDir), to: out + "/train.json")
    installInterruptHandler()
    let summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    stdoutLine(String(format: "%@ at step %d: loss %.4f, %.1f images/s over %@; model, checkpoint, loss.png and samples.png in %@",
                      summary.interrupted ? "interrupted, saved" : "done", summary.steps, summary.finalLoss,
                      summary.imagesPerSecond, String(format: "%.0fs", summary.seconds), out))
}

func trainingRecord(_ s: TeacherSettings, data: String) -> String {
    let d: [String: Any] = [
        "data": data, "steps": s.steps, "batch": s.batch, "lr": Double(s.optimizer.learningRate),
        "optimizer": s.optimizer.kind.rawValue, "warmup": s.optimizer.warmupSteps, "weight_decay": Double(s.optimizer.weightDecay),
        "clip": Double(s.optimizer.gradientClip), "ema": Double(s.emaDecay), "seed": Int(s.seed), "blas_threads": BLAS.threads, "workers": s.workers,
        "sigma_data": s.edm.sigmaData, "p_mean": s.edm.pMean, "p_std": s.edm.pStd, "c_noise": "250*ln(sigma)",
    ]
    let data = (try? JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    return String(decoding: data, as: UTF8.self) + "\n"
}

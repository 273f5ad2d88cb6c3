import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let teacherCommand = Subcommand("teacher", summary: "train an EDM teacher (diffusers UNet2DModel) on a folder of PNGs", flags: [
    FlagSpec("data", "folder of PNGs, or of class sub-folders of PNGs"),
    FlagSpec("out", "run folder: becomes a model directory, plus checkpoint, losses, loss.png, samples.png"),
    FlagSpec("config", "UNet config.json to train (default: a small 3-level teacher sized to --size); with --resume it must describe the checkpoint's network"),
    FlagSpec("size", "image side when no --config is given", default: "16"),
    FlagSpec("steps", "total optimizer steps", default: "4000"),
    FlagSpec("batch", "images per step", default: "32"),
    FlagSpec("lr", "peak learning rate", default: "1e-3"),
    FlagSpec("optimizer", "adam or radam", default: "adam"),
    FlagSpec("warmup", "linear learning-rate warm-up steps", default: "200"),
    FlagSpec("weight-decay", "decoupled weight decay on kernels and matrices", default: "0"),
    FlagSpec("clip", "global gradient-norm clip, 0 = off", default: "1"),
    FlagSpec("ema", "EMA decay of the saved weights", default: "0.999"),
    FlagSpec("seed", "initialisation, batch and noise seed", default: "0"),
    FlagSpec("log-every", "steps between progress lines", default: "50"),
    FlagSpec("sample-every", "steps between sample grids (samples.png)", default: "1000"),
    FlagSpec("checkpoint-every", "steps between checkpoints", default: "500"),
    FlagSpec("sample-steps", "Heun steps (Karras sigmas) for the sample grids", default: "18"),
    FlagSpec("workers", "threads splitting each batch (data parallel; 2 on a 2-core machine)", default: "2"),
    FlagSpec("threads", "OpenBLAS threads per worker", default: "1"),
    FlagSpec("label-dropout", "probability of training an image on a null label instead of its class (class-conditional data): the model gets one more class embedding, the null label (\"null_class_label\" in config.json), and can then be sampled and distilled with classifier-free guidance (eval ,guidance=W; student --teacher-guidance W)", default: "0"),
    FlagSpec("resume", "continue the run in --out from its checkpoint", isSwitch: true),
    FlagSpec("force", "with --resume: continue a run whose checkpoint records other settings (steps, batch, lr, optimizer, seed, data...); without it such a resume is refused naming them. --workers, --threads and the log/checkpoint/sample cadence may change freely", isSwitch: true),
], run: runTeacher)

func runTeacher(_ flags: ParsedFlags) throws {
    let dataDir = try flags.required("data"), out = try flags.required("out")
    var s = TeacherSettings()
    s.steps = try flags.requiredInt("steps", 1...10_000_000)
    s.batch = try flags.requiredInt("batch", 1...4096)
    s.optimizer.learningRate = try flags.requiredFloat("lr", 1e-8...1)
    s.optimizer.kind = OptimizerKind(rawValue: try flags.choice("optimizer", OptimizerKind.allCases.map(\.rawValue)))!
    s.optimizer.warmupSteps = try flags.requiredInt("warmup", 0...10_000_000)
    s.optimizer.weightDecay = try flags.requiredFloat("weight-decay", 0...1)
    s.optimizer.gradientClip = try flags.requiredFloat("clip", 0...1e6)
    s.emaDecay = try flags.requiredFloat("ema", 0...0.999999)
    s.seed = UInt64(try flags.requiredInt("seed", 0...Int(Int32.max)))
    s.logEvery = try flags.requiredInt("log-every", 1...1_000_000)
    s.sampleEvery = try flags.requiredInt("sample-every", 1...10_000_000)
    s.checkpointEvery = try flags.requiredInt("checkpoint-every", 1...10_000_000)
    s.sampleSteps = try flags.requiredInt("sample-steps", 1...64)
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    s.workers = try flags.requiredInt("workers", 1...64)
    s.labelDropout = try flags.double("label-dropout", range: 0...0.9) ?? 0
    let resume = flags.isSet("resume")
    try checkResumeFlag(resume, out: out, force: flags.isSet("force"))

    // The model config: the checkpoint's on resume, else --config, else the default sized to --size. A resumed
    // run cannot change its network, so a --config given with --resume must describe the checkpoint's.
    var given: UNetConfig?
    if let path = flags.string("config") {
        do { given = try UNetConfig.load(path: path) } catch let e as ConfigError { throw FlagError("--config \(path): \(e)") }
    }
    let recorded = resume ? try Checkpoint.config(in: out) : nil
    let size = try (recorded ?? given)?.sampleSize ?? Int(flags.choice("size", ["8", "16", "32", "64"]))!
    let channels = (recorded ?? given)?.inChannels ?? 3
    let data = try ImageFolder.load(path: dataDir, size: size, channels: channels, warn: { stderrLine("warning: " + $0) })
    stdoutLine("data: \(data.count) images \(size)x\(size) from \(dataDir)"
               + (data.classNames.map { ", classes: \($0.joined(separator: " "))" } ?? ", unconditional")
               + (data.skipped > 0 ? ", \(data.skipped) unreadable files skipped" : ""))
    let fresh = try teacherConfig(given: given, size: size, channels: channels, data: data, dataDir: dataDir, labelDropout: s.labelDropout)
    if let recorded, given != nil, fresh != recorded {
        throw FlagError("--config \(flags.string("config")!) describes another network than the checkpoint in \(out) "
                        + "(a resumed run keeps the network it started with): drop --config to continue that run, "
                        + "or start the new network in another --out")
    }
    let config = recorded ?? fresh
    let trainer = try TeacherTrainer(config: config, dataset: data, settings: s, runDir: out, resume: resume, force: flags.isSet("force"),
                                     inputs: RunSettings(["data": absolutePath(dataDir)]))
    trainer.plotLabels.subtitle += " - data \(dataDir)"
    trainer.resumeLines.forEach(stdoutLine)
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
        "sigma_data": s.edm.sigmaData, "label_dropout": s.labelDropout, "p_mean": s.edm.pMean, "p_std": s.edm.pStd, "c_noise": "250*ln(sigma)",
    ]
    let data = (try? JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    return String(decoding: data, as: UTF8.self) + "\n"
}

/// The network a new teacher run trains: `given` (--config) made to agree with the data's classes, else the default
/// sized to `size`; label dropout adds the null label as one more embedding row, the last (UNetConfig.nullClassLabel).
/// Errors: a config whose classes disagree with the data's, label dropout on unconditional data.
private func teacherConfig(given: UNetConfig?, size: Int, channels: Int, data: ImageDataset, dataDir: String,
                           labelDropout: Double) throws -> UNetConfig {
    var c: UNetConfig
    if var g = given {
        if g.numClassEmbeds != nil || data.classNames != nil {
            guard let names = data.classNames else { throw FlagError("--config has num_class_embeds but \(dataDir) has no class folders") }
            if let k = g.numClasses, k != names.count {
                throw FlagError("--config has \(k) classes (num_class_embeds less a null label) but the data has \(names.count)")
            }
            (g.numClassEmbeds, g.nullClassLabel, g.classNames) = (names.count, nil, names)
        }
        c = g
    } else {
        c = try ModelExport.defaultTeacherConfig(size: size, channels: channels, classNames: data.classNames)
    }
    if labelDropout > 0 {
        guard let k = c.numClassEmbeds, c.nullClassLabel == nil || c.numClasses == data.classNames?.count else {
            throw FlagError("--label-dropout needs class-conditional data (class sub-folders in \(dataDir))")
        }
        if c.nullClassLabel == nil { (c.numClassEmbeds, c.nullClassLabel) = (k + 1, k) }
    }
    return c
}

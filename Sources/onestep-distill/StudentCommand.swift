import Foundation
import OnestepCore
import OnestepTrain

let studentCommand = Command(name: "student", summary: "distil an EDM teacher into a one-step consistency student", flags: [
    Flag(name: "teacher", help: "teacher run folder (a model directory with an OnestepEDMHeunScheduler config)"),
    Flag(name: "out", help: "student run folder: becomes a consistency model directory plus checkpoint, losses, samples"),
    Flag(name: "data", help: "training images (default: the \"data\" of the teacher's train.json)"),
    Flag(name: "student-config", help: "UNet config.json of a smaller student: trained by regression on cached teacher pairs"),
    Flag(name: "student-channels", help: "like --student-config: the teacher's config with these block_out_channels, e.g. 16,32,32"),
    Flag(name: "sigmas", help: "Karras sigmas N of the distillation grid (scheduler num_train_timesteps)", defaultValue: "18"),
    Flag(name: "steps", help: "optimizer steps", defaultValue: "2000"),
    Flag(name: "batch", help: "images per step", defaultValue: "32"),
    Flag(name: "lr", help: "learning rate (default 1e-4 distillation, 1e-3 regression)"),
    Flag(name: "warmup", help: "linear learning-rate warm-up steps (default 0 distillation, 100 regression)"),
    Flag(name: "target-ema", help: "rate mu of the target network theta^- (distillation)", defaultValue: "0.95"),
    Flag(name: "ema", help: "EMA decay of the saved weights", defaultValue: "0.999"),
    Flag(name: "pairs", help: "regression: (noise, teacher sample) pairs to generate and cache", defaultValue: "4096"),
    Flag(name: "pairs-file", help: "regression: the pair cache (default OUT/pairs.safetensors)"),
    Flag(name: "heun-steps", help: "regression: Karras sigmas of the teacher's Heun samples", defaultValue: "18"),
    Flag(name: "seed", help: "batch and noise seed", defaultValue: "0"),
    Flag(name: "log-every", help: "steps between progress lines", defaultValue: "50"),
    Flag(name: "checkpoint-every", help: "steps between checkpoints", defaultValue: "250"),
    Flag(name: "sample-every", help: "steps between sample grids", defaultValue: "500"),
    Flag(name: "workers", help: "threads splitting each batch", defaultValue: "2"),
    Flag(name: "threads", help: "OpenBLAS threads per worker", defaultValue: "1"),
    Flag(name: "resume", help: "continue the run in --out from its checkpoint", isSwitch: true),
])

func runStudent(_ flags: Flags) throws {
    let teacherDir = try flags.required("teacher"), out = try flags.required("out")
    BLAS.threads = try flags.int("threads", 1...64)
    let resume = flags.isSet("resume")
    try checkResumeFlag(resume, out: out)
    let teacher = try ImagePipeline.load(path: teacherDir)
    guard let schedule = (teacher.sampler as? EDMHeunSampler)?.config else {
        throw UsageError("--teacher \(teacherDir): its scheduler is \(type(of: teacher.sampler).className), not OnestepEDMHeunScheduler; distillation needs an EDM teacher written by onestep-distill teacher")
    }
    let small = flags.given("student-config") || flags.given("student-channels")
    let workers = try flags.int("workers", 1...64)
    let seed = UInt64(try flags.int("seed", 0...Int(Int32.max)))
    installInterruptHandler()
    let summary: TrainingSummary
    if small {
        var cfg: UNetConfig
        if let path = flags.string("student-config") {
            cfg = try UNetConfig.load(path: path)
            cfg.numClassEmbeds = teacher.config.numClassEmbeds
            cfg.classNames = teacher.config.classNames
        } else {
            cfg = try StudentConfigs.narrower(teacher.config, channels: try parseChannels(flags.required("student-channels")))
        }
        var s = RegressionSettings()
        s.steps = try flags.int("steps", 1...10_000_000)
        s.batch = try flags.int("batch", 1...4096)
        s.pairs = try flags.int("pairs", 1...1_000_000)
        s.heunSteps = try flags.int("heun-steps", 1...64)
        if flags.given("lr") { s.optimizer.learningRate = try flags.float("lr", 1e-8...1) }
        if flags.given("warmup") { s.optimizer.warmupSteps = try flags.int("warmup", 0...10_000_000) }
        s.saveEMA = try flags.float("ema", 0...0.999999)
        s.seed = seed
        s.logEvery = try flags.int("log-every", 1...1_000_000)
        s.checkpointEvery = try flags.int("checkpoint-every", 1...10_000_000)
        s.sampleEvery = try flags.int("sample-every", 1...10_000_000)
        s.workers = workers
        s.schedule = schedule
        s.timesteps = try flags.int("sigmas", 2...1000)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let pairs = try TeacherPairs.loadOrGenerate(path: flags.string("pairs-file") ?? out + "/pairs.safetensors", teacher: teacher,
                                                    count: s.pairs, heunSteps: s.heunSteps, workers: workers, log: stdoutLine)
        let trainer = try RegressionStudentTrainer(config: cfg, pairs: pairs, settings: s, runDir: out, resume: resume)
        stdoutLine("small student: \(trainer.model.parameterCount) parameters (teacher \(teacher.model.parameterCount)), channels \(cfg.blockOutChannels), regression on \(s.pairs) pairs, batch \(s.batch), steps \(trainer.step + 1)...\(s.steps)")
        Checkpoint.resumeLines(out, resumed: resume, step: trainer.step, every: trainer.checkpointEvery, notes: trainer.resumeNotes).forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    } else {
        var s = DistillSettings()
        s.sigmas = try flags.int("sigmas", 2...1000)
        s.steps = try flags.int("steps", 1...10_000_000)
        s.batch = try flags.int("batch", 1...4096)
        if flags.given("lr") { s.optimizer.learningRate = try flags.float("lr", 1e-8...1) }
        if flags.given("warmup") { s.optimizer.warmupSteps = try flags.int("warmup", 0...10_000_000) }
        s.targetEMA = try flags.float("target-ema", 0...0.999999)
        s.saveEMA = try flags.float("ema", 0...0.999999)
        s.seed = seed
        s.logEvery = try flags.int("log-every", 1...1_000_000)
        s.checkpointEvery = try flags.int("checkpoint-every", 1...10_000_000)
        s.sampleEvery = try flags.int("sample-every", 1...10_000_000)
        s.workers = workers
        s.schedule = schedule
        let dataDir = try flags.string("data") ?? StudentConfigs.teacherDataFolder(teacherDir)
        let data = try ImageFolder.load(path: dataDir, size: teacher.imageSize, channels: teacher.channels, warn: { stderrLine("warning: " + $0) })
        let trainer = try ConsistencyStudentTrainer(teacher: teacher.model, dataset: data, settings: s, runDir: out, resume: resume)
        stdoutLine("consistency distillation: \(trainer.model.parameterCount) parameters from \(teacherDir), \(data.count) images from \(dataDir), N = \(s.sigmas), mu = \(s.targetEMA), batch \(s.batch), steps \(trainer.step + 1)...\(s.steps)")
        Checkpoint.resumeLines(out, resumed: resume, step: trainer.step, every: trainer.checkpointEvery, notes: trainer.resumeNotes).forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    }
    stdoutLine(String(format: "%@ at step %d: loss %.5f, %.0fs; model, checkpoint, loss.png and samples.png in %@",
                      summary.interrupted ? "interrupted, saved" : "done", summary.steps, summary.finalLoss, summary.seconds, out))
}

/// --resume needs a checkpoint in --out; a run folder with one needs --resume (never silently overwritten).
func checkResumeFlag(_ resume: Bool, out: String) throws {
    let hasCheckpoint = FileManager.default.fileExists(atPath: out + "/" + Checkpoint.fileName)
    if resume && !hasCheckpoint {
        let previous = out + "/" + Checkpoint.previousName
        let hint = FileManager.default.fileExists(atPath: previous)
            ? " (\(Checkpoint.previousName) is there: `mv \(previous) \(out)/\(Checkpoint.fileName)` to resume from it)" : ""
        throw UsageError("--resume: \(out) has no \(Checkpoint.fileName) to resume from" + hint)
    }
    if !resume && hasCheckpoint { throw UsageError("\(out) already holds a training run; pass --resume to continue it or choose another --out") }
}

func parseChannels(_ s: String) throws -> [Int] {
    let v = s.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !v.isEmpty, v.count == s.split(separator: ",").count, v.allSatisfy({ $0 > 0 && $0 <= 4096 }) else {
        throw UsageError("channels '\(s)': expected comma-separated positive integers, e.g. 16,32,32")
    }
    return v
}

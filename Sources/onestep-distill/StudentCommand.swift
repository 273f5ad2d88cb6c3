import CommandLineKit
import Foundation
import OnestepCore
import OnestepTrain

let studentCommand = Subcommand("student", summary: "distil a teacher (Onestep EDM or diffusers DDPM-family UNet2DModel) into a one-step consistency student", flags: [
    FlagSpec("teacher", "teacher folder: an onestep-distill teacher run (OnestepEDMHeunScheduler), or a diffusers UNet2DModel with DDPMScheduler / GaussianDDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler (epsilon, v_prediction or sample; bare or pipeline layout), wrapped as an EDM denoiser with the student's sigma range clamped to the teacher's"),
    FlagSpec("out", "student run folder: becomes a consistency model directory plus checkpoint, losses, samples"),
    FlagSpec("data", "training images (default: the \"data\" of the teacher's train.json)"),
    FlagSpec("student-config", "UNet config.json of a smaller student: trained by regression on cached teacher pairs"),
    FlagSpec("student-channels", "like --student-config: the teacher's config with these block_out_channels, e.g. 16,32,32"),
    FlagSpec("method", "cd: consistency distillation (teacher Heun steps, target network); ect: easy consistency tuning from the teacher's weights (no teacher calls; --ect-q, --ect-stages); dmd: distribution matching (DMD2 without GAN: a generator and a fake score network, both from the teacher; no data images; --dmd-ratio); regression: a smaller student on cached teacher pairs (implied by --student-config/--student-channels). See docs/DISTILLATION-METHODS.md", default: "cd"),
    FlagSpec("teacher-guidance", "classifier-free guidance scale w of the teacher (a class-conditional teacher with a null label, \"null_class_label\" in its unet/config.json): the methods distil D_null + w (D_label - D_null), so the student bakes guidance in and serves with one forward. 1 = the plain conditional teacher. cd, dmd and regression (its pairs); not ect (no teacher calls)"),
    FlagSpec("dmd-ratio", "dmd: fake-score updates per generator update (DMD2 dfake_gen_update_ratio)", default: "5"),
    FlagSpec("dmd-grid", "dmd: Karras sigmas of the score noise levels (DMD2 num_train_timesteps); the generator uses the middle 2%..98%", default: "1000"),
    FlagSpec("lcm-timesteps", "cd/ect/dmd of a DDPM-family teacher: the student's num_train_timesteps K (its LCMScheduler takes one step at t = K-1, the teacher's first K timesteps); auto: the largest multiple of 50 with sigma_{K-1} <= 15, LCM's terminal noise level on Stable Diffusion's schedule (14.6; K = 700 for linear 1e-4..0.02 betas)", default: "auto"),
    FlagSpec("ect-q", "ect: r(t) = t (1 - q^-(stage+1) (1 + 8 sigmoid(-t))); larger q, r nearer t", default: "4"),
    FlagSpec("ect-stages", "ect: stages of the run, q-fold smaller t - r each", default: "4"),
    FlagSpec("sigmas", "Karras sigmas N of the distillation grid (scheduler num_train_timesteps)", default: "18"),
    FlagSpec("steps", "optimizer steps", default: "2000"),
    FlagSpec("batch", "images per step", default: "32"),
    FlagSpec("lr", "learning rate (default 1e-4 distillation, 1e-3 regression)"),
    FlagSpec("warmup", "linear learning-rate warm-up steps (default 0 distillation, 100 regression)"),
    FlagSpec("target-ema", "rate mu of the target network theta^- (distillation)", default: "0.95"),
    FlagSpec("ema", "EMA decay of the saved weights", default: "0.999"),
    FlagSpec("regression-weight", "cd: weight lambda of a regression term on cached (noise, teacher sample) pairs at sigma_max beside the consistency loss (DMD's regression loss; --pairs, --pairs-file, --heun-steps make the pairs with the guided teacher); 0: plain CD", default: "0"),
    FlagSpec("regression-batch", "cd with --regression-weight: pairs per step", default: "16"),
    FlagSpec("pairs", "regression (and cd --regression-weight): (noise, teacher sample) pairs to generate and cache", default: "4096"),
    FlagSpec("pairs-file", "regression (and cd --regression-weight): the pair cache (default OUT/pairs.safetensors)"),
    FlagSpec("heun-steps", "regression (and cd --regression-weight): sampling steps of the teacher's pairs: Karras sigmas of Heun (an EDM teacher) or DDIM steps, eta 0 (a DDPM-family teacher: DDIMScheduler from its scheduler config)", default: "18"),
    FlagSpec("seed", "batch and noise seed", default: "0"),
    FlagSpec("log-every", "steps between progress lines", default: "50"),
    FlagSpec("checkpoint-every", "steps between checkpoints", default: "250"),
    FlagSpec("sample-every", "steps between sample grids", default: "500"),
    FlagSpec("workers", "threads splitting each batch", default: "2"),
    FlagSpec("threads", "OpenBLAS threads per worker", default: "1"),
    FlagSpec("resume", "continue the run in --out from its checkpoint", isSwitch: true),
    FlagSpec("force", "with --resume: continue a run whose checkpoint records other settings (steps, batch, lr, seed, the method's, teacher, data); without it such a resume is refused naming them. --workers, --threads and the log/checkpoint/sample cadence may change freely", isSwitch: true),
], run: runStudent)

func runStudent(_ flags: ParsedFlags) throws {
    let teacherDir = try flags.required("teacher"), out = try flags.required("out")
    BLAS.threads = try flags.requiredInt("threads", 1...64)
    let resume = flags.isSet("resume"), force = flags.isSet("force")
    try checkResumeFlag(resume, out: out, force: force)
    // Recorded in the checkpoint beside the method's settings and compared on resume (RunSettings.swift).
    var inputs = RunSettings(["teacher": absolutePath(teacherDir)])
    let loaded: TeacherLoader.Loaded
    do { loaded = try TeacherLoader.load(path: teacherDir) } catch let e as TeacherLoadError { throw FlagError("--teacher " + e.description) }
    var teacher = loaded.pipeline
    let schedule = loaded.edmSchedule ?? loaded.denoiser.clamped(EDMSchedulerConfig())
    // cd, ect and dmd start the student as the teacher's copy, in the form the teacher chooses: the consistency form
    // for an EDM teacher, the LCM form (LCMScheduler folder) for a DDPM-family one.
    let form: StudentParameterization
    let lcmTimesteps: Int? = try flags.required("lcm-timesteps") == "auto" ? nil : flags.requiredInt("lcm-timesteps", 1...100_000)
    do { form = try StudentParameterization.forTeacher(loaded, schedule: schedule, lcmTimesteps: lcmTimesteps) } catch let e as TeacherLoadError { throw FlagError("--teacher " + e.description) }
    let formLine = "student: " + form.description
    let small = flags.has("student-config") || flags.has("student-channels")
    if flags.has("lcm-timesteps"), loaded.edmSchedule != nil || small {
        stderrLine("note: --lcm-timesteps is used only by cd/ect/dmd students of a DDPM-family teacher; ignored here")
    }
    let method = try flags.required("method")
    guard ["cd", "ect", "dmd", "regression"].contains(method) else {
        throw FlagError("--method \(method): expected cd, ect, dmd or regression")
    }
    // The teacher every method calls: guided when --teacher-guidance is given (GuidedTeacher; the regression
    // pairs come from the guided pipeline).
    var denoiser = loaded.denoiser
    let guidance = try teacherGuidance(flags)
    // Guidance changes the function the student learns: part of the run's record ("1" = the plain teacher).
    inputs["teacher-guidance"] = RunSettings.text(guidance ?? 1)
    if let w = guidance {
        guard method != "ect" || small else {
            throw FlagError("--teacher-guidance: --method ect makes no teacher calls (it tunes the teacher's weights on data), so guidance would not reach it; use cd, dmd or regression, or drop --teacher-guidance")
        }
        do {
            denoiser = try GuidedTeacher(loaded.denoiser, scale: w)
            teacher = try teacher.withClassGuidance(w)
        } catch let e as ModelLoadError { throw FlagError(e.description + " (teacher \(teacherDir))") }
    }
    if small != (method == "regression") && flags.has("method") {
        throw FlagError(small ? "--student-config/--student-channels train by regression; drop --method \(method) or pass --method regression"
                              : "--method regression needs the smaller student's --student-config or --student-channels")
    }
    let workers = try flags.requiredInt("workers", 1...64)
    let seed = UInt64(try flags.requiredInt("seed", 0...Int(Int32.max)))
    installInterruptHandler()
    let summary: TrainingSummary
    if small {
        var cfg: UNetConfig
        if let path = flags.string("student-config") {
            do { cfg = try UNetConfig.load(path: path) } catch let e as ConfigError { throw FlagError("--student-config \(path): \(e)") }
            cfg.numClassEmbeds = teacher.config.numClassEmbeds
            cfg.nullClassLabel = teacher.config.nullClassLabel
            cfg.classNames = teacher.config.classNames
        } else {
            cfg = try StudentConfigs.narrower(teacher.config, channels: try parseChannels(flags.required("student-channels")))
        }
        var s = RegressionSettings()
        try readRunFlags(&s, flags, seed: seed, schedule: schedule)
        s.pairs = try flags.requiredInt("pairs", 1...1_000_000)
        s.heunSteps = try flags.requiredInt("heun-steps", 1...64)
        if flags.has("lr") { s.optimizer.learningRate = try flags.requiredFloat("lr", 1e-8...1) }
        if flags.has("warmup") { s.optimizer.warmupSteps = try flags.requiredInt("warmup", 0...10_000_000) }
        s.workers = workers
        s.timesteps = try flags.requiredInt("sigmas", 2...1000)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        // Pairs need a deterministic map from noise to image: Heun for an EDM teacher, DDIM (eta 0, from the
        // teacher's scheduler config) for a DDPM-family one, whose own DDPMScheduler would add noise every step.
        let pairTeacher = loaded.edmSchedule == nil ? try teacher.withScheduler(DDIMSampler.className) : teacher
        let pairs = try TeacherPairs.loadOrGenerate(path: flags.string("pairs-file") ?? out + "/pairs.safetensors", teacher: pairTeacher,
                                                    count: s.pairs, heunSteps: s.heunSteps, workers: workers, log: stdoutLine)
        let trainer = try RegressionStudentTrainer(config: cfg, pairs: pairs, settings: s, runDir: out, resume: resume, force: force, inputs: inputs)
        trainer.plotLabels.subtitle += " - teacher \(teacherDir)"
        stdoutLine("small student of the teacher \(teacherDir) (\(teacher.model.parameterCount) parameters)")
        trainer.resumeLines.forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    } else if method == "dmd" {
        var s = DMDSettings()
        try readRunFlags(&s, flags, seed: seed, schedule: schedule)
        s.use(form)
        s.sigmas = try flags.requiredInt("sigmas", 2...1000)
        s.fakeUpdatesPerGenerator = try flags.requiredInt("dmd-ratio", 1...1000)
        s.gridSize = try flags.requiredInt("dmd-grid", 2...100_000)
        if flags.has("lr") {
            let lr = try flags.requiredFloat("lr", 1e-8...1)
            (s.generatorOptimizer.learningRate, s.fakeOptimizer.learningRate) = (lr, lr)
        }
        if flags.has("warmup") {
            let w = try flags.requiredInt("warmup", 0...10_000_000)
            (s.generatorOptimizer.warmupSteps, s.fakeOptimizer.warmupSteps) = (w, w)
        }
        if flags.has("data") { stderrLine("warning: --data is not used by --method dmd (it needs no data images, only the teacher's classes)") }
        s.workers = workers
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let trainer = try DMDStudentTrainer(teacher: denoiser, settings: s, runDir: out, resume: resume, force: force, inputs: inputs)
        trainer.plotLabels.subtitle += " - teacher \(teacherDir)"
        stdoutLine("distribution matching (DMD2 without GAN) of the teacher \(teacherDir) (\(denoiser.description)); the logged loss is the fake score's")
        stdoutLine(formLine)
        trainer.resumeLines.forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    } else if method == "ect" {
        var s = ECTSettings()
        try readRunFlags(&s, flags, seed: seed, schedule: schedule)
        s.use(form)
        s.sigmas = try flags.requiredInt("sigmas", 2...1000)
        s.q = Double(try flags.requiredFloat("ect-q", 1.01...1e6))
        s.stages = try flags.requiredInt("ect-stages", 1...64)
        if flags.has("lr") { s.optimizer.learningRate = try flags.requiredFloat("lr", 1e-8...1) }
        if flags.has("warmup") { s.optimizer.warmupSteps = try flags.requiredInt("warmup", 0...10_000_000) }
        s.workers = workers
        let (dataDir, data) = try teacherData(flags, teacherDir: teacherDir, teacher: teacher)
        inputs["data"] = absolutePath(dataDir)
        let trainer = try ECTStudentTrainer(teacher: teacher.model, dataset: data, settings: s, runDir: out, resume: resume, force: force, inputs: inputs)
        trainer.plotLabels.subtitle += " - teacher \(teacherDir)"
        stdoutLine("easy consistency tuning (ECT) from the weights of \(teacherDir) (\(loaded.denoiser.description)) on the images in \(dataDir)")
        stdoutLine(formLine)
        trainer.resumeLines.forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    } else {
        var s = DistillSettings()
        try readRunFlags(&s, flags, seed: seed, schedule: schedule)
        s.use(form)
        s.sigmas = try flags.requiredInt("sigmas", 2...1000)
        if flags.has("lr") { s.optimizer.learningRate = try flags.requiredFloat("lr", 1e-8...1) }
        if flags.has("warmup") { s.optimizer.warmupSteps = try flags.requiredInt("warmup", 0...10_000_000) }
        s.targetEMA = try flags.requiredFloat("target-ema", 0...0.999999)
        s.regressionWeight = try flags.requiredFloat("regression-weight", 0...1000)
        s.regressionBatch = try flags.requiredInt("regression-batch", 1...4096)
        s.workers = workers
        let (dataDir, data) = try teacherData(flags, teacherDir: teacherDir, teacher: teacher)
        inputs["data"] = absolutePath(dataDir)
        var pairs: TeacherPairs?
        if s.regressionWeight > 0 {
            guard loaded.edmSchedule != nil else { throw FlagError("--regression-weight: the regression term needs an Onestep EDM teacher (consistency-form student)") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            pairs = try TeacherPairs.loadOrGenerate(path: flags.string("pairs-file") ?? out + "/pairs.safetensors", teacher: teacher,
                                                    count: try flags.requiredInt("pairs", 1...1_000_000), heunSteps: try flags.requiredInt("heun-steps", 1...64),
                                                    workers: workers, log: stdoutLine)
        }
        let trainer = try ConsistencyStudentTrainer(denoiser: denoiser, dataset: data, settings: s, pairs: pairs, runDir: out, resume: resume,
                                                    force: force, inputs: inputs)
        trainer.plotLabels.subtitle += " - teacher \(teacherDir)"
        stdoutLine("consistency distillation of the teacher \(teacherDir) (\(denoiser.description)) on the images in \(dataDir)")
        stdoutLine(formLine)
        trainer.resumeLines.forEach(stdoutLine)
        summary = try trainer.run(shouldStop: { interruptRequested != 0 }, log: stdoutLine)
    }
    stdoutLine(String(format: "%@ at step %d: loss %.5f, %.0fs; model, checkpoint, loss.png and samples.png in %@",
                      summary.interrupted ? "interrupted, saved" : "done", summary.steps, summary.finalLoss, summary.seconds, out))
}

/// --teacher-guidance W: nil when absent; a finite number in 0...GuidanceLimits.maxScale (the teacher's null label
/// is checked when the teacher is wrapped).
func teacherGuidance(_ flags: ParsedFlags) throws -> Double? {
    guard let text = flags.string("teacher-guidance") else { return nil }
    guard let w = Double(text), w.isFinite, (0...GuidanceLimits.maxScale).contains(w) else {
        throw FlagError("--teacher-guidance \(text): expected a number in 0...\(Int(GuidanceLimits.maxScale)) (1 = no guidance; typical 1.5-5)")
    }
    return w
}

/// --resume needs a checkpoint in --out; a run folder with one needs --resume (never silently overwritten).
/// --force without --resume is said to do nothing (a fresh run has no recorded settings to differ from).
func checkResumeFlag(_ resume: Bool, out: String, force: Bool = false) throws {
    if force && !resume { stderrLine("note: --force only matters with --resume (it continues a run whose checkpoint records other settings); ignored") }
    let hasCheckpoint = FileManager.default.fileExists(atPath: out + "/" + Checkpoint.fileName)
    if resume && !hasCheckpoint {
        let previous = out + "/" + Checkpoint.previousName
        let hint = FileManager.default.fileExists(atPath: previous)
            ? " (\(Checkpoint.previousName) is there: `mv \(previous) \(out)/\(Checkpoint.fileName)` to resume from it)" : ""
        throw FlagError("--resume: \(out) has no \(Checkpoint.fileName) to resume from" + hint)
    }
    if !resume && hasCheckpoint { throw FlagError("\(out) already holds a training run; pass --resume to continue it or choose another --out") }
}

/// A folder as the run records it: absolute and standardized, so the same folder given from another working
/// directory compares equal.
func absolutePath(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

func parseChannels(_ s: String) throws -> [Int] {
    let v = s.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !v.isEmpty, v.count == s.split(separator: ",").count, v.allSatisfy({ $0 > 0 && $0 <= 4096 }) else {
        throw FlagError("channels '\(s)': expected comma-separated positive integers, e.g. 16,32,32")
    }
    return v
}

/// The settings every student method shares (steps, batch, saved EMA, seed, log/checkpoint/sample cadence, the
/// student's sigma schedule), read from the same flags whatever the method.
private func readRunFlags<S: StudentRunSettings>(_ s: inout S, _ flags: ParsedFlags, seed: UInt64, schedule: EDMSchedulerConfig) throws {
    s.steps = try flags.requiredInt("steps", 1...10_000_000)
    s.batch = try flags.requiredInt("batch", 1...4096)
    s.saveEMA = try flags.requiredFloat("ema", 0...0.999999)
    s.seed = seed
    s.logEvery = try flags.requiredInt("log-every", 1...1_000_000)
    s.checkpointEvery = try flags.requiredInt("checkpoint-every", 1...10_000_000)
    s.sampleEvery = try flags.requiredInt("sample-every", 1...10_000_000)
    s.schedule = schedule
}

/// The images a method that trains on data reads: --data, or the folder the teacher was trained on.
private func teacherData(_ flags: ParsedFlags, teacherDir: String, teacher: ImagePipeline) throws -> (String, ImageDataset) {
    let dataDir = try flags.string("data") ?? StudentConfigs.teacherDataFolder(teacherDir)
    return (dataDir, try ImageFolder.load(path: dataDir, size: teacher.imageSize, channels: teacher.channels, warn: { stderrLine("warning: " + $0) }))
}

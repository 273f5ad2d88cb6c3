// `pipeline`: data -> teacher -> student -> small student -> quantize -> eval in one resumable run.
//
//   DIR/data/            shapes data set (PNG class folders)
//   DIR/teacher/         EDM teacher run (model directory + checkpoint)
//   DIR/student/         consistency-distilled student (initialised from the teacher)
//   DIR/student-small/   narrower student, regression on cached teacher pairs (pairs.safetensors)
//   DIR/student-int8/    int8 per-channel student + quantization.txt
//   DIR/eval/            eval.md + grid-NAME.png
//   DIR/pipeline.json    settings and, per finished stage, its wall-clock seconds
//   DIR/report.md        time per stage + the eval table
// A finished stage is recorded in pipeline.json and skipped on the next run; an interrupted or killed training
// stage resumes from its checkpoint (Checkpoint/), losing at most one checkpoint interval. Every file is written
// with AtomicFile, so a kill -9 never leaves a torn pipeline.json, checkpoint or model.
//
// Sizing of the default run (the default model, models/shapes16-cd-int8, whose card has the measured table; 2
// cores, shared with other work): 16x16 RGB shapes, 8000 images. 16x16 is the smallest size at which the 8 classes
// are still told apart by outline. The teacher is the engine's default 3-level UNet (32, 64, 64 channels, attention
// at 4x4 and in the mid block, 1.1M parameters) with a null label (label dropout 0.15), because classifier-free
// guidance is the largest lever on conditional accuracy (guidance 3 on the 20000-step teacher: 0.58 -> 0.77). A
// step of 32 images takes ~0.045 s with two data-parallel workers on an idle machine (0.10-0.22 s while other
// sessions build), so 20000 steps are ~15 min idle (58 min measured on the shared machine); the teacher kept
// improving up to there (guided accuracy 0.65 at 8000 steps). Distillation of the guided teacher (each teacher call
// one forward of 2B images; two calls, one target call, student forward + backward) took 0.18-0.47 s a step
// shared: 1200 steps at N = 12 ~9 min (2400 steps were not better: accuracy 0.59 against 0.61). Pair generation
// (2048 x 35 guided teacher calls, 4.4 min) plus 2000 small-student steps ~7 min; the evaluation (7 x 1000
// images, the guided 35-step teacher row dominating) ~4 min with the classifier cached (its 2000 steps: 13 min at
// nice 10 there). ~78 min in all on the shared machine plus the classifier; idle, the teacher's ~15 min is most of
// a run well inside the 90-minute budget (the other stages were not timed idle).
import Foundation
import OnestepCore

public struct PipelineSettings: Sendable {
    public var dataCount = 8000
    public var size = 16
    public var teacherChannels = [32, 64, 64]
    public var teacherAttention = true
    public var teacher = TeacherSettings()
    public var distill = DistillSettings()
    public var smallChannels = [16, 32, 32]
    public var small = RegressionSettings()
    public var eval = EvalSettings()
    public var seed: UInt64 = 0
    /// Set by `quick`: every result of the run carries a warning that it only exercises the code.
    public var isQuick = false
    /// Classifier-free guidance scale the students distil (GuidedTeacher) and the eval's extra teacher row samples;
    /// needs `teacher.labelDropout` > 0 (the teacher's null label). nil: no guidance.
    public var guidance: Double?

    /// What a report of a --quick run starts with (and onestep-distill prints after it).
    public static let quickWarning = "WARNING: --quick run: tiny data, networks and step counts that only exercise the code; its FD-cls, KID and accuracy numbers say nothing about model quality"

    public init() {
        teacher.steps = 20000
        teacher.batch = 32
        teacher.workers = 2
        teacher.sampleEvery = 5000
        teacher.labelDropout = 0.15
        guidance = 3
        distill.steps = 1200
        distill.batch = 32
        distill.sigmas = 12
        distill.optimizer.learningRate = 2e-4
        distill.saveEMA = 0.995
        small.saveEMA = 0.995
        small.steps = 2000
        small.pairs = 2048
        eval.samples = 1000
        eval.classifierSteps = 2000
    }

    /// Every stage on tiny settings: ~2 minutes on two cores. Used by the tests.
    public static var quick: PipelineSettings {
        var s = PipelineSettings()
        s.isQuick = true
        s.dataCount = 800
        s.teacherChannels = [16, 32]
        s.teacherAttention = false
        s.teacher.steps = 300
        s.teacher.batch = 16
        s.teacher.labelDropout = 0
        s.guidance = nil
        s.teacher.logEvery = 100
        s.teacher.sampleEvery = 100_000
        s.teacher.checkpointEvery = 100_000
        s.teacher.optimizer.warmupSteps = 50
        s.teacher.optimizer.learningRate = 2e-3
        s.teacher.samplesPerClass = 4
        s.distill.steps = 100
        s.distill.batch = 16
        s.distill.sigmas = 6
        s.distill.optimizer.learningRate = 4e-4
        s.distill.targetEMA = 0.9
        s.distill.saveEMA = 0.9
        s.distill.logEvery = 50
        s.distill.checkpointEvery = 100_000
        s.distill.sampleEvery = 100_000
        s.smallChannels = [8, 16]
        s.small.steps = 100
        s.small.batch = 16
        s.small.pairs = 128
        s.small.heunSteps = 6
        s.small.saveEMA = 0.9
        s.small.logEvery = 50
        s.small.checkpointEvery = 100_000
        s.small.sampleEvery = 100_000
        s.eval.samples = 100
        s.eval.resamples = 50
        s.eval.classifierSteps = 250
        return s
    }

    /// Every training stage checkpoints every `steps` steps (the fault drill uses short intervals).
    public mutating func setCheckpointInterval(_ steps: Int) {
        (teacher.checkpointEvery, distill.checkpointEvery, small.checkpointEvery) = (steps, steps, steps)
    }

    /// Every training stage prints a progress line every `steps` steps.
    public mutating func setLogInterval(_ steps: Int) {
        (teacher.logEvery, distill.logEvery, small.logEvery) = (steps, steps, steps)
    }

    /// The teacher's UNet config for `classNames`.
    func teacherConfig(classNames: [String]) throws -> UNetConfig {
        let levels = teacherChannels.count
        var down = Array(repeating: "DownBlock2D", count: levels), up = Array(repeating: "UpBlock2D", count: levels)
        if teacherAttention { down[levels - 1] = "AttnDownBlock2D"; up[0] = "AttnUpBlock2D" }
        var json: [String: Any] = [
            "sample_size": size, "in_channels": 3, "out_channels": 3, "block_out_channels": teacherChannels,
            "layers_per_block": 1, "down_block_types": down, "up_block_types": up, "norm_num_groups": 8,
            "attention_head_dim": 32, "add_attention": teacherAttention,
            "num_class_embeds": classNames.count,
            "id2label": Dictionary(uniqueKeysWithValues: classNames.enumerated().map { (String($0.offset), $0.element) }),
        ]
        // Label dropout trains a null label: one more embedding row, the last.
        if teacher.labelDropout > 0 { (json["num_class_embeds"], json["null_class_label"]) = (classNames.count + 1, classNames.count) }
        return try UNetConfig(json: json)
    }
}

public final class DistillPipeline {
    public static let stages = ["data", "teacher", "student", "student-small", "quantize", "eval"]
    public let dir: String
    public let settings: PipelineSettings
    public private(set) var seconds: [String: Double] = [:]
    /// Given --force: a stage's training run resumed with other settings than its checkpoint's continues too.
    let force: Bool
    let shouldStop: () -> Bool
    let log: (String) -> Void

    /// `force`: use a folder whose pipeline.json records other settings anyway (its finished stages are kept as
    /// they are; the unfinished ones run with `settings`). Without it such a folder is refused with a
    /// RunSettingsError naming the settings (old -> new), as a training run resumed with other settings is.
    public init(dir: String, settings: PipelineSettings, force: Bool = false, shouldStop: @escaping () -> Bool = { false },
                log: @escaping (String) -> Void) throws {
        (self.dir, self.settings, self.force, self.shouldStop, self.log) = (dir, settings, force, shouldStop, log)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if let data = FileManager.default.contents(atPath: dir + "/pipeline.json"),
           let d = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], let st = d["stage_seconds"] as? [String: Double] {
            let differing = Self.differences(recorded: d, current: Self.recordedSettings(settings))
            if !differing.isEmpty && !st.isEmpty {
                let list = RunSettingsError.list(differing)
                guard force else {
                    throw RunSettingsError(dir: dir, what: "pipeline run", differences: differing,
                                           consequence: "its finished stages (\(Self.stages.filter { st[$0] != nil }.joined(separator: ", "))) would be reused as if made with these")
                }
                log("warning: --force: reusing the finished stages of \(dir), made with other settings (\(list))")
            }
            seconds = st
        }
    }

    /// The settings pipeline.json records and a later run compares.
    static func recordedSettings(_ s: PipelineSettings) -> [String: Any] {
        ["quick": s.isQuick, "data_count": s.dataCount, "size": s.size, "teacher_channels": s.teacherChannels, "teacher_steps": s.teacher.steps,
         // The Float as the Double it prints as (0.999, not 0.99900001...), so it reads back equal from JSON.
         "teacher_ema": Double("\(s.teacher.emaDecay)") ?? 0,
         "distill_steps": s.distill.steps, "distill_sigmas": s.distill.sigmas, "small_channels": s.smallChannels, "small_steps": s.small.steps,
         "teacher_label_dropout": s.teacher.labelDropout, "guidance": s.guidance ?? 1,
         "distill_regression_weight": Double("\(s.distill.regressionWeight)") ?? 0]
    }

    /// Every recorded setting that differs, compared as a training checkpoint's are (RunSettings.differences):
    /// pipeline.json's typed JSON values are read as text the way the current ones print. A key missing from an
    /// older file: "quick" is read as false, others are not compared.
    static func differences(recorded: [String: Any], current: [String: Any]) -> [RunSettings.Difference] {
        var was = RunSettings(), now = RunSettings()
        for (k, v) in current {
            now[k] = RunSettings.text(v)
            was[k] = recorded[k].map { RunSettings.text(parsed: $0, like: v) } ?? (k == "quick" ? "false" : nil)
        }
        return now.differences(from: was)
    }

    public var evalSpecs: [EvalSpec] {
        (settings.guidance.map { [EvalSpec(name: "teacher-heun18-guidance\($0)", path: dir + "/teacher", steps: 18, guidance: $0)] } ?? [])
        + [EvalSpec(name: "teacher-heun18", path: dir + "/teacher", steps: 18),
         EvalSpec(name: "teacher-euler1", path: dir + "/teacher", steps: 1),
         EvalSpec(name: "student-1step", path: dir + "/student", steps: 1),
         EvalSpec(name: "student-2step", path: dir + "/student", steps: 2),
         EvalSpec(name: "small-student-1step", path: dir + "/student-small", steps: 1),
         EvalSpec(name: "int8-student-1step", path: dir + "/student-int8", steps: 1)]
    }

    /// Runs every unfinished stage; returns the evaluation, or nil when stopped early.
    @discardableResult
    public func run() throws -> EvalResult? {
        var result: EvalResult?
        for stage in Self.stages {
            if seconds[stage] != nil && !(stage == "eval" && result == nil && !FileManager.default.fileExists(atPath: dir + "/eval/eval.md")) {
                log("pipeline: \(stage) done earlier (\(String(format: "%.0f", seconds[stage]!))s), skipped")
                continue
            }
            let start = Date()
            log("pipeline: \(stage)")
            let finished: Bool
            switch stage {
            case "data": finished = try runData()
            case "teacher": finished = try runTeacher()
            case "student": finished = try runStudent()
            case "student-small": finished = try runSmall()
            case "quantize":
                let r = try StudentQuantization.run(model: dir + "/student", out: dir + "/student-int8")
                log(String(format: "int8: image PSNR %.2f dB vs float on %d seeds", r.psnr, r.seeds.count))
                finished = true
            default:
                result = try ModelEvaluation.run(specs: evalSpecs, dataDir: dir + "/data", outDir: dir + "/eval", settings: settings.eval, log: log)
                finished = true
            }
            guard finished else { log("pipeline: stopped during \(stage); run again to resume"); return nil }
            seconds[stage] = (seconds[stage] ?? 0) + Date().timeIntervalSince(start)
            try record()
        }
        if result == nil, let md = try? String(contentsOfFile: dir + "/eval/eval.md", encoding: .utf8) {
            try AtomicFile.write(report(evalMarkdown: md), to: dir + "/report.md")
        } else if let r = result {
            try AtomicFile.write(report(evalMarkdown: r.markdown), to: dir + "/report.md")
        }
        return result
    }

    func record() throws {
        var d = Self.recordedSettings(settings)
        d["stage_seconds"] = seconds
        let data = try JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(Array(data) + [0x0A], to: dir + "/pipeline.json")
    }

    public func report(evalMarkdown: String) -> String {
        var s = "# Pipeline run \(dir)\n\n" + (settings.isQuick ? "**" + PipelineSettings.quickWarning + ".**\n\n" : "") + "| stage | seconds |\n|---|---:|\n"
        for st in Self.stages { s += "| \(st) | \(seconds[st].map { String(format: "%.0f", $0) } ?? "-") |\n" }
        s += "| total | \(String(format: "%.0f", seconds.values.reduce(0, +))) |\n\n" + evalMarkdown
        return s
    }

    func runData() throws -> Bool {
        let out = dir + "/data"
        if FileManager.default.fileExists(atPath: out) { try FileManager.default.removeItem(atPath: out) }
        let per = try ShapesGenerator.write(count: settings.dataCount, size: settings.size, seed: settings.seed, to: out)
        log("data: \(settings.dataCount) images in \(per.count) classes")
        return true
    }

    func loadData() throws -> ImageDataset {
        try ImageFolder.load(path: dir + "/data", size: settings.size, channels: 3, warn: { self.log("warning: " + $0) })
    }

    func runTeacher() throws -> Bool {
        let data = try loadData()
        let run = dir + "/teacher"
        let resume = FileManager.default.fileExists(atPath: run + "/" + Checkpoint.fileName)
        let cfg = try settings.teacherConfig(classNames: data.classNames ?? [])
        let t = try TeacherTrainer(config: cfg, dataset: data, settings: settings.teacher, runDir: run, resume: resume, force: force)
        t.plotLabels.title = "pipeline " + t.plotLabels.title
        t.plotLabels.subtitle += " - data \(dir)/data"
        t.resumeLines.forEach(log)
        try AtomicFile.write("{\"data\": \"\(dir)/data\"}\n", to: run + "/train.json")
        return try !t.run(shouldStop: shouldStop, log: log).interrupted
    }

    func runStudent() throws -> Bool {
        let data = try loadData()
        let teacher = try ImagePipeline.load(path: dir + "/teacher")
        let run = dir + "/student"
        let resume = FileManager.default.fileExists(atPath: run + "/" + Checkpoint.fileName)
        var denoiser: any TeacherDenoiser = EDMTeacher(model: teacher.model, sigmaData: settings.distill.schedule.sigmaData)
        if let w = settings.guidance { denoiser = try GuidedTeacher(denoiser, scale: w) }
        // The regression term's pairs are the small student's (same count, sampler and guided teacher), made here
        // first when the term is on; the student-small stage then finds them cached.
        var pairs: TeacherPairs?
        if settings.distill.regressionWeight > 0 {
            var guided = teacher
            if let w = settings.guidance { guided = try guided.withClassGuidance(w) }
            try FileManager.default.createDirectory(atPath: dir + "/student-small", withIntermediateDirectories: true)
            pairs = try TeacherPairs.loadOrGenerate(path: pairsPath, teacher: guided, count: settings.small.pairs,
                                                    heunSteps: settings.small.heunSteps, workers: settings.small.workers, log: log)
        }
        let t = try ConsistencyStudentTrainer(denoiser: denoiser, dataset: data, settings: settings.distill, pairs: pairs, runDir: run,
                                              resume: resume, force: force)
        t.plotLabels.title = "pipeline " + t.plotLabels.title
        t.plotLabels.subtitle += " - teacher \(dir)/teacher"
        t.resumeLines.forEach(log)
        return try !t.run(shouldStop: shouldStop, log: log).interrupted
    }

    /// The guided teacher's (noise, sample) pairs: the small student's data and the CD student's regression term's.
    var pairsPath: String { dir + "/student-small/pairs.safetensors" }

    func runSmall() throws -> Bool {
        var teacher = try ImagePipeline.load(path: dir + "/teacher")
        if let w = settings.guidance { teacher = try teacher.withClassGuidance(w) }
        let run = dir + "/student-small"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let pairs = try TeacherPairs.loadOrGenerate(path: pairsPath, teacher: teacher, count: settings.small.pairs,
                                                    heunSteps: settings.small.heunSteps, workers: settings.small.workers, log: log)
        let cfg = try StudentConfigs.narrower(teacher.config, channels: settings.smallChannels)
        var s = settings.small
        s.timesteps = settings.distill.sigmas
        let resume = FileManager.default.fileExists(atPath: run + "/" + Checkpoint.fileName)
        let t = try RegressionStudentTrainer(config: cfg, pairs: pairs, settings: s, runDir: run, resume: resume, force: force)
        t.plotLabels.title = "pipeline " + t.plotLabels.title
        t.plotLabels.subtitle += " - teacher \(dir)/teacher"
        log("small student: \(t.objective.model.parameterCount) parameters (teacher \(teacher.model.parameterCount))")
        t.resumeLines.forEach(log)
        return try !t.run(shouldStop: shouldStop, log: log).interrupted
    }
}

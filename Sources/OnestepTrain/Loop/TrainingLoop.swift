// The one training loop of onestep-distill (teacher, students, any TrainingObjective): steps until
// `settings.steps` or until `shouldStop()` turns true (Ctrl-C), with a progress line every `logEvery` steps, an
// atomic checkpoint and model export every `checkpointEvery`, sample grids every `sampleEvery`, and a final save
// either way. Resume restores every group of the objective, the step, the loss history, the elapsed time and the
// random stream's state, so a resumed run continues exactly where the checkpoint was written (KillResumeTests).
//
// The run folder it writes (plus whatever the objective's export writes, a model directory):
//   checkpoint.safetensors, checkpoint.prev.safetensors   Checkpoint.swift / CheckpointFile.swift
//   losses.csv, loss.png, samples.png
import Foundation
import OnestepCore

public final class TrainingLoop<Objective: TrainingObjective> {
    public let objective: Objective
    public let runDir: String
    public let settings: LoopSettings
    var rng: TrainRandom
    public private(set) var step = 0
    /// The loss of every step so far (restored on resume, so the curve survives it).
    public private(set) var losses: [Float] = []
    /// Said once after init: stale temporary files removed, a checkpoint that predates checksums or groups.
    public private(set) var resumeNotes: [String] = []
    public private(set) var resumed = false
    var elapsed = 0.0
    var checkpointedStep: Int?
    /// loss.png's words: title (default the objective's plotTitle), subtitle (default its summary; commands append
    /// where the data or teacher came from), the y quantity (the objective's lossName) and "training step".
    public var plotLabels: LossPlotLabels

    /// What the checkpoints record as the run's settings: the objective's `runSettings` plus the command's `inputs`.
    public let runSettings: RunSettings

    /// Creates the run folder, removes what a killed run left, and on `resume` restores the checkpoint in it
    /// (throws CheckpointError when it is missing, damaged, or of another kind or model; RunSettingsError when it
    /// was made with other settings, unless `force`). `inputs`: settings the objective does not know, recorded and
    /// compared with its own, e.g. the teacher and data folders (RunSettings.swift).
    public init(objective: Objective, runDir: String, settings: LoopSettings, resume: Bool, force: Bool = false,
                inputs: RunSettings = RunSettings()) throws {
        (self.objective, self.runDir, self.settings) = (objective, runDir, settings)
        runSettings = objective.runSettings.merging(inputs)
        plotLabels = LossPlotLabels(title: objective.plotTitle, subtitle: objective.summary, quantity: objective.lossName)
        rng = TrainRandom(seed: settings.seed)
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        resumeNotes = Checkpoint.cleanUpAfterKilledRun(runDir)
        if resume {
            let state = try Checkpoint.read(kind: objective.kind, groups: objective.groups, from: runDir, settings: runSettings, force: force)
            (step, rng.state, elapsed, losses) = (state.step, state.rngState, state.elapsedSeconds, state.losses)
            resumeNotes += state.notes
            checkpointedStep = step
            resumed = true
        }
    }

    /// The lines to print as the run starts (see Checkpoint.resumeLines): "resuming DIR at step N ..." and notes.
    public var resumeLines: [String] {
        Checkpoint.resumeLines(runDir, resumed: resumed, step: step, every: settings.checkpointEvery, notes: resumeNotes)
    }

    /// Trains until `settings.steps` or until `shouldStop()`; either way leaves a checkpoint and the model.
    public func run(shouldStop: () -> Bool, log: (String) -> Void) throws -> TrainingSummary {
        let total = settings.steps, perStep = objective.imagesPerStep
        var windowStart = Date(), windowSteps = 0, windowLoss = 0.0
        let startStep = step
        var interrupted = false
        log("\(objective.label): \(objective.summary), steps \(step + 1)...\(total)")
        while step < total {
            if shouldStop() { interrupted = true; break }
            let loss = objective.step(number: step + 1, rng: &rng)
            step += 1
            losses.append(Float(loss))
            windowSteps += 1
            windowLoss += loss
            if step % settings.logEvery == 0 || step == total {
                let now = Date(), dt = now.timeIntervalSince(windowStart)
                elapsed += dt
                let perStepSeconds = dt / Double(max(windowSteps, 1))
                log(String(format: "%@ step %d/%d  loss %.5f  %.1f img/s  %.3f s/step  elapsed %@  ETA %@", objective.label, step, total,
                           windowLoss / Double(windowSteps), Double(windowSteps * perStep) / max(dt, 1e-9), perStepSeconds,
                           Self.duration(elapsed), Self.duration(Double(total - step) * perStepSeconds)))
                (windowStart, windowSteps, windowLoss) = (now, 0, 0)
            }
            if step % settings.checkpointEvery == 0 { try save(withSamples: false) }
            if step % settings.sampleEvery == 0 {
                try writeSamples()
                log("wrote \(runDir)/samples.png and loss.png")
            }
        }
        elapsed += Date().timeIntervalSince(windowStart)
        try save(withSamples: true)
        let tail = losses.suffix(settings.logEvery)
        return TrainingSummary(steps: step, finalLoss: tail.isEmpty ? 0 : tail.reduce(0) { $0 + Double($1) } / Double(tail.count),
                               seconds: elapsed, imagesPerSecond: elapsed > 0 ? Double((step - startStep) * perStep) / elapsed : 0,
                               interrupted: interrupted)
    }

    /// Checkpoint (all groups, step, RNG, losses), the model directory and loss.png; samples.png too when asked.
    public func save(withSamples: Bool) throws {
        // The same step twice (a checkpoint step that is also the last) would make checkpoint.prev a copy of it.
        if step != checkpointedStep {
            try Checkpoint.write(kind: objective.kind, groups: objective.groups,
                                 state: TrainingState(step: step, rngState: rng.state, elapsedSeconds: elapsed, losses: losses),
                                 settings: runSettings, to: runDir)
            checkpointedStep = step
        }
        try objective.export(to: runDir, step: step)
        try TrainingPlots.write(TrainingPlots.lossCurve(losses, labels: plotLabels), to: runDir + "/loss.png")
        if withSamples { try writeSamples() }
    }

    /// samples.png from the objective and loss.png.
    public func writeSamples() throws {
        try objective.writeSamples(to: runDir)
        try TrainingPlots.write(TrainingPlots.lossCurve(losses, labels: plotLabels), to: runDir + "/loss.png")
    }

    /// "1h02m" or "3m07s".
    static func duration(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}

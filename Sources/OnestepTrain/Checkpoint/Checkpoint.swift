// A resumable training state in one safetensors file, for any TrainingObjective: each of its TrainingGroups
// (network, optimizer, weight averages) under the group's name, plus the loop's own state. CheckpointFile.swift
// says how the file is kept crash-safe (atomic replace, previous one kept) and verified (checksum).
//
// Format 2 (written since the training loops were unified):
//   GROUP/values, GROUP/adam.m, GROUP/adam.v    (P_GROUP) flat, laid out as the group's ParameterStore
//   GROUP/AVERAGE                               (P_GROUP) each weight average, e.g. teacher/ema, student/target
//   losses                                      (S) the loss of each of the S steps so far
//   __metadata__  onestep.kind, onestep.checkpoint_format "2", onestep.groups "NAME,NAME", step, rng_state,
//                 elapsed_seconds, unet_config (the first group's), and per group GROUP/unet_config,
//                 GROUP/optimizer_step, GROUP/AVERAGE/updates; onestep.run_settings (RunSettings as JSON: what the
//                 run was started with, compared on resume; absent before it existed); onestep.checksum
// Format 1 (before; no onestep.checkpoint_format): one network, tensors values, ema, adam.m, adam.v, and target
//   for consistency distillation; metadata optimizer_step, ema_updates. Still read, into an objective with one
//   group (what every format-1 run was), with a note; a format the reader does not know is refused.
// losses.csv beside the file holds the same history for people and plotting tools; it is read back only for
// format-1 checkpoints that predate the losses tensor.
import Foundation
import OnestepCore

public struct TrainingState {
    public var step: Int
    public var rngState: UInt64
    public var elapsedSeconds: Double
    public var losses: [Float]
    /// What resuming wants the user told, e.g. that the checkpoint predates checksums.
    public var notes: [String] = []
}

public enum Checkpoint {
    public static let fileName = "checkpoint.safetensors"
    /// The checkpoint before the newest one, kept so a damaged newest one is not the end of the run.
    public static let previousName = "checkpoint.prev.safetensors"
    public static let lossesName = "losses.csv"
    public static let teacherKind = "teacher-checkpoint"
    static let formatKey = "onestep.checkpoint_format"
    static let groupsKey = "onestep.groups"
    static let runSettingsKey = "onestep.run_settings"
    /// The command that writes each onestep.kind, for messages about a checkpoint of another kind.
    static let commands = ["teacher-checkpoint": "onestep-distill teacher", "consistency-distillation": "student --method cd",
                           "consistency-tuning": "student --method ect", "distribution-matching": "student --method dmd",
                           "regression": "student --method regression"]
    static let format = "2"

    /// The UNet config a checkpoint (of any kind) was written with (its first group's); the file is verified first.
    public static func config(in dir: String) throws -> UNetConfig {
        let path = dir + "/" + fileName, previous = dir + "/" + previousName
        let contents = try CheckpointFile.read(path, previous: previous, kinds: nil)
        func refuse(_ problem: String) -> CheckpointError {
            CheckpointError(path: path, problem: problem, advice: CheckpointFile.advice(for: path, previous: previous, kinds: nil))
        }
        guard let text = contents.metadata["unet_config"],
              let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else {
            throw refuse("it has no readable unet_config in its metadata")
        }
        do { return try UNetConfig(json: json) } catch { throw refuse("its unet_config is not a valid config: \(error)") }
    }

    /// What the CLI and the pipeline print as a run starts: nothing for a fresh run with nothing to report; else
    /// "resuming DIR at step N (checkpoint every K steps)" (the line scripts/fault-distill reads), then one line
    /// per note.
    public static func resumeLines(_ dir: String, resumed: Bool, step: Int, every: Int, notes: [String]) -> [String] {
        guard resumed || !notes.isEmpty else { return [] }
        return ["resuming \(dir) at step \(step) (checkpoint every \(every) steps)"] + notes.map { "note: " + $0 }
    }

    /// Writes every group and the loop state to DIR/checkpoint.safetensors (the previous one kept), then losses.csv.
    /// `settings`: the run's record (RunSettings), compared by the next resume.
    static func write(kind: String, groups: [TrainingGroup], state: TrainingState, settings: RunSettings, to dir: String) throws {
        var tensors: [String: [Float]] = ["losses": state.losses]
        var metadata = [
            CheckpointFile.kindKey: kind, formatKey: format, groupsKey: groups.map(\.name).joined(separator: ","),
            "step": String(state.step), "rng_state": String(state.rngState), "elapsed_seconds": String(state.elapsedSeconds),
            "unet_config": groups[0].model.config.jsonString(), runSettingsKey: settings.json,
        ]
        for g in groups {
            let n = g.model.store.count
            func flat(_ p: UnsafePointer<Float>) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
            tensors[g.name + "/values"] = flat(g.model.store.values)
            tensors[g.name + "/adam.m"] = flat(g.optimizer.m)
            tensors[g.name + "/adam.v"] = flat(g.optimizer.v)
            metadata[g.name + "/unet_config"] = g.model.config.jsonString()
            metadata[g.name + "/optimizer_step"] = String(g.optimizer.step)
            for a in g.averages {
                tensors[g.name + "/" + a.name] = flat(a.average.shadow)
                metadata[g.name + "/" + a.name + "/updates"] = String(a.average.updates)
            }
        }
        try CheckpointFile.write(tensors: tensors, metadata: metadata, to: dir + "/" + fileName, previous: dir + "/" + previousName)
        var csv = "step,loss\n"
        for (i, l) in state.losses.enumerated() { csv += "\(i + 1),\(l)\n" }
        try AtomicFile.write(csv, to: dir + "/" + lossesName)
    }

    /// Restores every group (values, optimizer moments and step, averages) into objects built for the same
    /// configs, and returns the loop state. Throws CheckpointError naming the file, the problem and what to do.
    /// `settings`: this run's record, compared with the checkpoint's before anything is restored: a difference
    /// throws RunSettingsError, or with `force` becomes a note; a checkpoint without a record gets a note.
    static func read(kind: String, groups: [TrainingGroup], from dir: String, settings: RunSettings, force: Bool) throws -> TrainingState {
        let path = dir + "/" + fileName, previous = dir + "/" + previousName
        let contents = try CheckpointFile.read(path, previous: previous, kinds: [kind])
        func refuse(_ problem: String, advice: String? = nil) -> CheckpointError {
            CheckpointError(path: path, problem: problem, advice: advice ?? CheckpointFile.advice(for: path, previous: previous, kinds: [kind]))
        }
        var notes: [String] = []
        if let text = contents.metadata[runSettingsKey] {
            guard let recorded = RunSettings(json: text) else { throw refuse("its \(runSettingsKey) is not a JSON object of strings") }
            let differing = settings.differences(from: recorded)
            if !differing.isEmpty {
                guard force else {
                    throw RunSettingsError(dir: dir, what: "training run", differences: differing,
                                           consequence: "resuming would continue its steps as if they had been taken with these")
                }
                notes.append("--force: continuing \(dir) with settings other than its checkpoint's (\(RunSettingsError.list(differing))); the next checkpoint records the new ones")
            }
        } else {
            notes.append("\(path) predates recorded run settings, so this run's settings (\(settings)) cannot be compared with the ones it was started with; resuming with them (the next checkpoint records them)")
        }
        let layout: Layout
        switch contents.metadata[formatKey] {
        case format?:
            let names = (contents.metadata[groupsKey] ?? "").split(separator: ",").map(String.init)
            guard names == groups.map(\.name) else {
                throw refuse("it holds the networks [\(names.joined(separator: ", "))] but this run trains [\(groups.map(\.name).joined(separator: ", "))]")
            }
            layout = .format2
        case nil:
            guard groups.count == 1 else {
                throw refuse("it is a format-1 checkpoint (one network) but this run trains \(groups.count) networks")
            }
            notes.append("\(path) is in the format before named network groups (format 1); read as the \(groups[0].name) network, the next checkpoint is written in format \(format)")
            layout = .format1
        case let other?:
            throw refuse("it is in checkpoint format \(other), which this onestep-distill does not know (it reads 1 and \(format))",
                         advice: "Resume it with the onestep-distill that wrote it, or delete \(path) to train this run from step 0.")
        }

        for g in groups {
            let n = g.model.store.count
            var targets = [("values", g.model.store.values), ("adam.m", g.optimizer.m), ("adam.v", g.optimizer.v)]
            targets += g.averages.map { ($0.name, $0.average.shadow) }
            for (piece, p) in targets {
                let key = layout.tensor(g, piece)
                guard let t = contents.tensors[key] else { throw refuse("tensor '\(key)' is missing") }
                guard t.count == n else {
                    throw refuse("\(key) has \(t.count) values but the \(g.name) network has \(n) parameters: the checkpoint belongs to another model config",
                                 advice: "Resume with the config the run was started with, or choose another --out to start a new run.")
                }
                t.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: n) }
            }
            guard let optimizerStep = contents.integer(layout.optimizerStep(g)) else { throw refuse("its metadata lacks \(layout.optimizerStep(g))") }
            g.optimizer.step = optimizerStep
            for a in g.averages {
                // Format 1 kept no counter for theta^- (an average without warm-up, which needs none).
                guard let counter = layout.updates(g, a.name) else { a.average.updates = optimizerStep; continue }
                guard let updates = contents.integer(counter) else { throw refuse("its metadata lacks \(counter)") }
                a.average.updates = updates
            }
        }
        guard let step = contents.integer("step"), let rng = contents.metadata["rng_state"].flatMap({ UInt64($0) }) else {
            throw refuse("its metadata lacks step or rng_state")
        }
        let losses = contents.tensors["losses"] ?? lossesFromCSV(dir + "/" + lossesName, upTo: step)
        if !contents.verified {
            notes.append("\(path) predates checkpoint checksums, so its contents cannot be verified; resuming anyway (the next checkpoint carries one)")
        }
        return TrainingState(step: step, rngState: rng, elapsedSeconds: contents.metadata["elapsed_seconds"].flatMap { Double($0) } ?? 0,
                             losses: losses, notes: notes)
    }

    /// Where a group's pieces sit in a file of each format. A piece is "values", "adam.m", "adam.v" or an average's name.
    struct Layout {
        let tensor: (TrainingGroup, String) -> String
        let optimizerStep: (TrainingGroup) -> String
        /// The metadata key of an average's update count; nil where the format kept none.
        let updates: (TrainingGroup, String) -> String?

        static var format2: Layout { Layout(tensor: { "\($0.name)/\($1)" }, optimizerStep: { "\($0.name)/optimizer_step" },
                                                updates: { "\($0.name)/\($1)/updates" }) }
        static var format1: Layout { Layout(tensor: { $1 }, optimizerStep: { _ in "optimizer_step" }, updates: { $1 == "ema" ? "ema_updates" : nil }) }
    }

    static func lossesFromCSV(_ path: String, upTo step: Int) -> [Float] {
        guard let csv = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var losses: [Float] = []
        for line in csv.split(separator: "\n").dropFirst() {
            if let v = line.split(separator: ",").last.flatMap({ Float($0) }) { losses.append(v) }
        }
        return Array(losses.prefix(step))
    }

    /// Removes temporary files a killed run left in `dir` (see CheckpointFile) and says which, for the log.
    static func cleanUpAfterKilledRun(_ dir: String) -> [String] {
        CheckpointFile.removeStaleTemporaryFiles(in: dir).map { "removed \(dir)/\($0), a temporary file left by a killed run" }
    }
}

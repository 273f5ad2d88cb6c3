// A resumable training state (teacher or student) in one safetensors file; CheckpointFile.swift says how it is
// kept crash-safe (atomic replace, previous one kept) and verified (checksum):
//   values, ema, adam.m, adam.v   (P) flat, laid out as the model's ParameterStore
//   target                        (P) consistency distillation's theta^- (students only)
//   losses                        (S) the loss of each of the S steps so far, so the curve survives a resume
//   __metadata__                  onestep.kind, step, optimizer_step, ema_updates, rng_state, elapsed_seconds,
//                                 unet_config, onestep.checksum
// losses.csv beside it holds the same history for people and plotting tools. It is written after the
// checkpoint, so a kill between the two can leave it one interval short; it is read back only for checkpoints
// from before the losses tensor.
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

    public static func write(model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage, state: TrainingState, to dir: String) throws {
        try write(kind: teacherKind, model: model, optimizer: optimizer, ema: ema, extra: [:], state: state, to: dir)
    }

    /// Restores values, EMA and optimizer moments into objects built for the same config.
    public static func read(from dir: String, model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage) throws -> TrainingState {
        try read(kind: teacherKind, from: dir, model: model, optimizer: optimizer, ema: ema, extra: [:])
    }

    /// The UNet config a checkpoint (of any kind) was written with; the file is verified first.
    public static func config(in dir: String) throws -> UNetConfig {
        let contents = try CheckpointFile.read(dir + "/" + fileName, previous: dir + "/" + previousName, kinds: nil)
        guard let text = contents.metadata["unet_config"],
              let json = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw DataError("\(dir)/\(fileName) has no unet_config; it is not an onestep-distill checkpoint")
        }
        return try UNetConfig(json: json)
    }

    /// What the CLI and the pipeline print as a run starts: nothing for a fresh run with nothing to report; else
    /// "resuming DIR at step N (checkpoint every K steps)" (the line scripts/fault-distill reads), then one line
    /// per note.
    public static func resumeLines(_ dir: String, resumed: Bool, step: Int, every: Int, notes: [String]) -> [String] {
        guard resumed || !notes.isEmpty else { return [] }
        return ["resuming \(dir) at step \(step) (checkpoint every \(every) steps)"] + notes.map { "note: " + $0 }
    }

    static func write(kind: String, model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage,
                      extra: [String: UnsafePointer<Float>], state: TrainingState, to dir: String) throws {
        let n = model.store.count
        func flat(_ p: UnsafePointer<Float>) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
        var tensors = ["values": flat(model.store.values), "ema": flat(ema.shadow), "adam.m": flat(optimizer.m),
                       "adam.v": flat(optimizer.v), "losses": state.losses]
        for (name, p) in extra { tensors[name] = flat(p) }
        let metadata = [
            CheckpointFile.kindKey: kind, "step": String(state.step), "optimizer_step": String(optimizer.step),
            "ema_updates": String(ema.updates), "rng_state": String(state.rngState),
            "elapsed_seconds": String(state.elapsedSeconds), "unet_config": model.config.jsonString(),
        ]
        try CheckpointFile.write(tensors: tensors, metadata: metadata, to: dir + "/" + fileName, previous: dir + "/" + previousName)
        var csv = "step,loss\n"
        for (i, l) in state.losses.enumerated() { csv += "\(i + 1),\(l)\n" }
        try AtomicFile.write(csv, to: dir + "/" + lossesName)
    }

    static func read(kind: String, from dir: String, model: TrainableUNet, optimizer: Optimizer, ema: WeightAverage,
                     extra: [String: UnsafeMutablePointer<Float>]) throws -> TrainingState {
        let path = dir + "/" + fileName, previous = dir + "/" + previousName
        let contents = try CheckpointFile.read(path, previous: previous, kinds: [kind])
        func refuse(_ problem: String) -> CheckpointError {
            CheckpointError(path: path, problem: problem, advice: CheckpointFile.advice(for: path, previous: previous, kinds: [kind]))
        }
        let n = model.store.count
        var targets = ["values": model.store.values, "ema": ema.shadow, "adam.m": optimizer.m, "adam.v": optimizer.v]
        targets.merge(extra) { a, _ in a }
        for (key, p) in targets {
            guard let t = contents.tensors[key] else { throw refuse("tensor '\(key)' is missing") }
            guard t.count == n else {
                throw DataError("\(path): \(key) has \(t.count) values but the model has \(n) parameters; the checkpoint belongs to another model config")
            }
            t.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: n) }
        }
        guard let step = contents.integer("step"), let optimizerStep = contents.integer("optimizer_step"),
              let emaUpdates = contents.integer("ema_updates"), let rng = contents.metadata["rng_state"].flatMap({ UInt64($0) }) else {
            throw refuse("its metadata lacks step, optimizer_step, ema_updates or rng_state")
        }
        optimizer.step = optimizerStep
        ema.updates = emaUpdates
        var notes: [String] = []
        let losses: [Float]
        if let saved = contents.tensors["losses"] {
            losses = saved
        } else {
            losses = lossesFromCSV(dir + "/" + lossesName, upTo: step)
        }
        if !contents.verified {
            notes.append("\(path) predates checkpoint checksums, so its contents cannot be verified; resuming anyway (the next checkpoint carries one)")
        }
        return TrainingState(step: step, rngState: rng, elapsedSeconds: contents.metadata["elapsed_seconds"].flatMap { Double($0) } ?? 0,
                             losses: losses, notes: notes)
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

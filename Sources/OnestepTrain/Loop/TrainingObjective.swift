// What a training method is to the loop. A method (the EDM teacher, consistency distillation, regression onto
// teacher pairs, and later e.g. distribution matching with a generator and a fake-score network) is a
// `TrainingObjective`: it owns its networks, their optimizers and weight averages as named `TrainingGroup`s, and
// takes one optimizer step of all of them per `step(rng:)`. Everything around the steps (cadence, progress lines,
// checkpoints, resume, Ctrl-C, the loss history) is TrainingLoop's, the same for every method; the checkpoint
// stores each group under its name (Checkpoint.swift), so a method with two networks resumes like one with one.
import Foundation
import OnestepCore

/// One trained network with its optimizer and its moving averages of the weights, checkpointed under `name`.
public final class TrainingGroup {
    /// Checkpoint prefix and log name, e.g. "teacher", "student", "fake-score". Letters, digits, '-' and '_'.
    public let name: String
    public let model: TrainableUNet
    public let optimizer: Optimizer
    /// Moving averages of `model`'s weights by name, updated after every optimizer step in this order: "ema"
    /// (the weights a run exports) first, then any other the method needs (consistency distillation's "target",
    /// theta^-).
    public let averages: [(name: String, average: WeightAverage)]

    public init(name: String, model: TrainableUNet, optimizer: OptimizerConfig, averages: [(name: String, average: WeightAverage)]) {
        precondition(!name.isEmpty && name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }, "group name '\(name)'")
        precondition(averages.allSatisfy { $0.average.count == model.store.count }, "an average of \(name) has another layout")
        (self.name, self.model, self.averages) = (name, model, averages)
        self.optimizer = Optimizer(optimizer, for: model.store)
    }

    /// The average called `name`; a method asks only for those it created.
    public func average(_ name: String) -> WeightAverage {
        guard let a = averages.first(where: { $0.name == name }) else { preconditionFailure("\(self.name) has no average '\(name)'") }
        return a.average
    }

    /// The exported weights' average.
    public var ema: WeightAverage { average("ema") }

    /// Before a step's backward passes: gradients accumulate into zeros.
    public func zeroGradients() { model.store.zeroGrads() }

    /// After the backward passes: one optimizer step on the gradients, then every average follows the weights.
    public func applyUpdate() {
        optimizer.update(model.store)
        for a in averages { a.average.update(from: model.store) }
    }
}

/// A training method, as TrainingLoop drives it.
public protocol TrainingObjective: AnyObject {
    /// Written into the checkpoint as onestep.kind; a run refuses to resume a checkpoint of another kind.
    /// (Existing values: "teacher-checkpoint", "consistency-distillation", "regression".)
    var kind: String { get }
    /// Prefix of the progress lines ("teacher", "consistency-distillation", ...).
    var label: String { get }
    /// The networks this method trains. Checkpointed and restored by name; the first one's UNet config is the
    /// run's (`Checkpoint.config(in:)`).
    var groups: [TrainingGroup] { get }
    /// Images one step consumes, for the images/s of the progress line.
    var imagesPerStep: Int { get }
    /// One line saying what is trained on what (parameters, data, batch), logged as the run starts.
    var summary: String { get }
    /// The loss plot's title: role, method and network, e.g. "teacher: EDM denoiser, UNet 32-64-64 16x16, 1.11M
    /// parameters". Default: the label.
    var plotTitle: String { get }
    /// What `step` returns, named for the loss plot's y axis, e.g. "EDM denoising loss (weighted MSE)". Default "loss".
    var lossName: String { get }
    /// The settings that define the run (named by their flags: steps, batch, lr, seed, the method's own), recorded
    /// in every checkpoint and compared on resume (RunSettings.swift). Not the cadence or thread counts, which a
    /// resumed run may change freely.
    var runSettings: RunSettings { get }

    /// Training step `number` (1-based, restored on resume): zero the gradients, forward and backward passes (data
    /// parallel if it likes, see DataParallel), `applyUpdate()` of each group it updates (a method may update a
    /// group only on some steps, deciding from `number`). Draws its randomness only from `rng` (the loop checkpoints
    /// its state) and keeps no other state across steps outside its groups, so a resumed run takes the steps a
    /// straight run takes. Returns the loss to log.
    func step(number: Int, rng: inout TrainRandom) -> Double

    /// Writes the run folder's model directory (config, weights from the EMA, scheduler config).
    func export(to dir: String, step: Int) throws

    /// Writes samples.png (a grid of samples of the exported weights) into `dir`.
    func writeSamples(to dir: String) throws
}

extension TrainingObjective {
    public var plotTitle: String { label }
    public var lossName: String { "loss" }
}

/// The loop's cadence, the same for every method.
public struct LoopSettings: Sendable {
    public var steps: Int
    public var logEvery: Int
    public var checkpointEvery: Int
    public var sampleEvery: Int
    /// Seed of the random stream the objective draws batches and noise from.
    public var seed: UInt64

    public init(steps: Int, logEvery: Int, checkpointEvery: Int, sampleEvery: Int, seed: UInt64) {
        (self.steps, self.logEvery, self.checkpointEvery, self.sampleEvery, self.seed) = (steps, logEvery, checkpointEvery, sampleEvery, seed)
    }
}

public struct TrainingSummary: Sendable {
    public var steps: Int
    /// Mean loss of the last `logEvery` steps.
    public var finalLoss: Double
    public var seconds: Double
    public var imagesPerSecond: Double
    /// True when `shouldStop` ended the run before `steps` (Ctrl-C); the run was saved and can be resumed.
    public var interrupted: Bool
}

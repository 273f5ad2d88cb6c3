// The shared training scaffolding on its own: a method with two networks (the shape of distribution matching: a
// generator and a critic, each with its optimizer and EMA) checkpoints both groups and resumes exactly; the
// data-parallel helper splits, orders and reduces as it promises.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

/// Two networks trained on a made-up objective: each step pulls the generator's weights toward noise drawn from
/// the loop's stream and the critic's toward the generator's (L = 0.5 ||g - z||^2 + 0.5 ||c - g||^2), alternating
/// which network is updated on odd steps, so resume must restore both groups, both optimizers and the RNG.
final class TwoNetworkObjective: TrainingObjective {
    let kind = "two-network-test"
    let label = "two-network"
    let generator: TrainingGroup, critic: TrainingGroup
    var groups: [TrainingGroup] { [generator, critic] }
    var imagesPerStep: Int { 1 }
    var summary: String { "two tiny networks" }
    /// What the checkpoints record; a test changes it to play a resume with other settings.
    var runSettings = RunSettings(["lr": "0.01", "steps": "6"])

    init(config: UNetConfig) {
        let g = TrainableUNet(config: config, seed: 1), c = TrainableUNet(config: config, seed: 2)
        var opt = OptimizerConfig()
        opt.learningRate = 1e-2
        generator = TrainingGroup(name: "generator", model: g, optimizer: opt, averages: [("ema", WeightAverage(decay: 0.9, of: g.store))])
        critic = TrainingGroup(name: "critic", model: c, optimizer: opt, averages: [("ema", WeightAverage(decay: 0.9, of: c.store))])
    }

    func step(number: Int, rng: inout TrainRandom) -> Double {
        let n = generator.model.store.count, g = generator.model.store, c = critic.model.store
        generator.zeroGradients()
        critic.zeroGradients()
        var loss = 0.0
        for i in 0..<n {
            let z = rng.normal()
            g.grads[i] = g.values[i] - z
            c.grads[i] = c.values[i] - g.values[i]
            loss += 0.5 * Double(g.grads[i] * g.grads[i] + c.grads[i] * c.grads[i])
        }
        generator.applyUpdate()
        if number % 2 == 0 { critic.applyUpdate() }
        return loss / Double(n)
    }

    func export(to dir: String, step: Int) throws {
        try ModelExport.writeEDMTeacher(generator.model, weights: generator.ema.shadow, to: dir)
    }

    func writeSamples(to dir: String) throws {}
}

final class TrainingLoopTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTempDir("loop") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func flat(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    func testTwoNetworkMethodCheckpointsBothGroupsAndResumesExactly() throws {
        let cfg = try TinyData.config(classes: ["a", "b"])
        let settings = LoopSettings(steps: 6, logEvery: 100, checkpointEvery: 2, sampleEvery: 100_000, seed: 7)
        let straight = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir + "/straight", settings: settings, resume: false)
        _ = try straight.run(shouldStop: { false }, log: { _ in })

        var polls = 0
        let first = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir + "/split", settings: settings, resume: false)
        XCTAssertTrue(try first.run(shouldStop: { polls += 1; return polls > 3 }, log: { _ in }).interrupted)
        let file = try SafetensorsFile(path: dir + "/split/" + Checkpoint.fileName)
        XCTAssertEqual(file.metadata["onestep.groups"], "generator,critic")
        XCTAssertEqual(file.metadata["critic/optimizer_step"], "1", "the critic stepped on step 2 only")
        for key in ["generator/values", "generator/adam.m", "generator/adam.v", "generator/ema", "critic/values", "critic/ema"] {
            XCTAssertNotNil(file.entries[key], key)
        }

        let resumed = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir + "/split", settings: settings, resume: true)
        XCTAssertEqual(resumed.step, 3)
        _ = try resumed.run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(resumed.losses, straight.losses)
        for (a, b) in zip(straight.objective.groups, resumed.objective.groups) {
            let n = a.model.store.count
            XCTAssertEqual(flat(a.model.store.values, n), flat(b.model.store.values, n), a.name)
            XCTAssertEqual(flat(a.ema.shadow, n), flat(b.ema.shadow, n), a.name)
            XCTAssertEqual(flat(a.optimizer.v, n), flat(b.optimizer.v, n), a.name)
            XCTAssertEqual(a.optimizer.step, b.optimizer.step, a.name)
        }
    }

    func testACheckpointOfOtherNetworksIsRefused() throws {
        let cfg = try TinyData.config(classes: ["a", "b"])
        let settings = LoopSettings(steps: 2, logEvery: 100, checkpointEvery: 100, sampleEvery: 100_000, seed: 7)
        _ = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir, settings: settings, resume: false)
            .run(shouldStop: { false }, log: { _ in })
        // Same kind, but a method whose groups are named otherwise (a renamed network) cannot take these weights.
        let f = try SafetensorsFile(path: dir + "/" + Checkpoint.fileName)
        var md = f.metadata
        md["onestep.groups"] = "generator,fake-score"
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md.filter { $0.key != CheckpointFile.checksumKey },
                                 to: dir + "/" + Checkpoint.fileName, previous: dir + "/" + Checkpoint.previousName)
        XCTAssertThrowsError(try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir, settings: settings, resume: true)) {
            XCTAssertTrue("\($0)".contains("it holds the networks [generator, fake-score] but this run trains [generator, critic]"), "\($0)")
        }
    }

    /// The checkpoint records the objective's settings and the command's inputs; a resume with another value of
    /// either is refused naming each (old -> new) unless forced, and a forced resume records the new values.
    func testResumeWithOtherSettingsIsRefusedNamingThemUnlessForced() throws {
        let cfg = try TinyData.config(classes: ["a", "b"])
        let settings = LoopSettings(steps: 2, logEvery: 100, checkpointEvery: 100, sampleEvery: 100_000, seed: 7)
        let inputs = RunSettings(["teacher": "/models/a"])
        _ = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir, settings: settings, resume: false, inputs: inputs)
            .run(shouldStop: { false }, log: { _ in })
        func record() throws -> RunSettings? {
            try SafetensorsFile(path: dir + "/" + Checkpoint.fileName).metadata[Checkpoint.runSettingsKey].flatMap { RunSettings(json: $0) }
        }
        XCTAssertEqual(try record(), RunSettings(["lr": "0.01", "steps": "6", "teacher": "/models/a"]))

        // The same settings: resumed without a note about them.
        let same = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir, settings: settings, resume: true, inputs: inputs)
        XCTAssertEqual(same.resumeNotes, [])

        let other = TwoNetworkObjective(config: cfg)
        other.runSettings["steps"] = "8"
        XCTAssertThrowsError(try TrainingLoop(objective: other, runDir: dir, settings: settings, resume: true,
                                              inputs: RunSettings(["teacher": "/models/b"]))) { e in
            guard let e = e as? RunSettingsError else { return XCTFail("not a RunSettingsError: \(e)") }
            XCTAssertEqual(e.differences.map(\.description), ["steps 6 -> 8", "teacher /models/a -> /models/b"])
            for part in ["\(self.dir) holds a training run made with other settings (steps 6 -> 8; teacher /models/a -> /models/b)", "--force", "another --out"] {
                XCTAssertTrue(e.description.contains(part), "missing '\(part)' in: \(e)")
            }
        }
        let forced = try TrainingLoop(objective: other, runDir: dir, settings: settings, resume: true, force: true, inputs: inputs)
        XCTAssertEqual(forced.step, 2)
        XCTAssertEqual(forced.resumeNotes.count, 1)
        XCTAssertTrue(forced.resumeNotes[0].hasPrefix("--force: continuing \(dir) with settings other than its checkpoint's (steps 6 -> 8)"), "\(forced.resumeNotes)")
        var longer = settings
        longer.steps = 3
        _ = try TrainingLoop(objective: other, runDir: dir, settings: longer, resume: true, force: true, inputs: inputs).run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(try record(), RunSettings(["lr": "0.01", "steps": "8", "teacher": "/models/a"]), "the forced run's checkpoint records its settings")
    }

    /// A checkpoint written before run settings were recorded resumes with a note saying they cannot be compared.
    func testACheckpointWithoutARecordResumesWithANote() throws {
        let cfg = try TinyData.config(classes: ["a", "b"])
        let settings = LoopSettings(steps: 2, logEvery: 100, checkpointEvery: 100, sampleEvery: 100_000, seed: 7)
        _ = try TrainingLoop(objective: TwoNetworkObjective(config: cfg), runDir: dir, settings: settings, resume: false)
            .run(shouldStop: { false }, log: { _ in })
        let f = try SafetensorsFile(path: dir + "/" + Checkpoint.fileName)
        let md = f.metadata.filter { $0.key != CheckpointFile.checksumKey && $0.key != Checkpoint.runSettingsKey }
        let tensors = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.floats($0).data) })
        try CheckpointFile.write(tensors: tensors, metadata: md, to: dir + "/" + Checkpoint.fileName, previous: dir + "/" + Checkpoint.previousName)
        let other = TwoNetworkObjective(config: cfg)
        other.runSettings["steps"] = "8"
        let resumed = try TrainingLoop(objective: other, runDir: dir, settings: settings, resume: true)
        XCTAssertEqual(resumed.step, 2)
        XCTAssertEqual(resumed.resumeNotes.count, 1, "\(resumed.resumeNotes)")
        XCTAssertTrue(resumed.resumeNotes[0].contains("predates recorded run settings, so this run's settings (lr 0.01, steps 8) cannot be compared"),
                      resumed.resumeNotes[0])
    }

    /// pipeline.json's typed values (JSON numbers, booleans, arrays) compare as the current settings print.
    func testParsedJSONValuesCompareLikeTheCurrentOnes() throws {
        let current: [String: Any] = ["quick": false, "steps": 300, "channels": [16, 32]]
        let data = try JSONSerialization.data(withJSONObject: current)
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        for (k, v) in current { XCTAssertEqual(RunSettings.text(parsed: parsed[k]!, like: v), RunSettings.text(v), k) }
        XCTAssertEqual(RunSettings.text(parsed: NSNumber(value: 1), like: false), "true")
        XCTAssertEqual(RunSettings.text([16, 32]), "[16, 32]")
    }

    func testDataParallelSplitsInOrderAndReducesGradients() throws {
        XCTAssertEqual(DataParallel.bounds(count: 7, parts: 3), [0, 2, 4, 7])
        XCTAssertEqual(DataParallel.activeWorkers(count: 1, available: 4), 1)
        XCTAssertEqual(DataParallel.activeWorkers(count: 0, available: 4), 1)
        let chunks = DataParallel.map(count: 10, workers: 3) { k, r in (k, r) }
        XCTAssertEqual(chunks.map(\.0), [0, 1, 2])
        XCTAssertEqual(chunks.map(\.1), [0..<3, 3..<6, 6..<10])
        XCTAssertEqual(DataParallel.map(count: 5, workers: 1) { _, r in r }, [0..<5])

        let cfg = try TinyData.config(classes: ["a", "b"])
        let master = TrainableUNet(config: cfg, seed: 1), replica = TrainableUNet(config: cfg, seed: 9)
        let n = master.store.count
        replica.store.grads[0] = 3
        DataParallel.broadcast(master.store, to: [replica.store])
        XCTAssertEqual(flat(replica.store.values, n), flat(master.store.values, n))
        XCTAssertEqual(replica.store.grads[0], 0, "broadcast zeroes the replica's gradients")
        master.store.zeroGrads()
        master.store.grads[1] = 1
        replica.store.grads[1] = 2
        DataParallel.reduceGradients([replica.store], into: master.store)
        XCTAssertEqual(master.store.grads[1], 3)
    }
}

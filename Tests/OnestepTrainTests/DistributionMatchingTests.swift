// DMD (DistributionMatching.swift): finite-difference checks of both of its objectives on a tiny UNet (the
// generator's surrogate loss with its target held fixed, as DMD2's .detach() holds it; the fake score's denoising
// loss), the generator gradient's starting value (fake score = teacher, so ~0), and a short run that checkpoints
// both networks, exports a consistency model and resumes exactly.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class DistributionMatchingTests: XCTestCase {
    func makeObjective(classes: Int = 3, workers: Int = 1, batch: Int = 16, lr: Float? = nil, ratio: Int = 5) throws -> DistributionMatchingObjective {
        let data = TinyData.shapes(count: 8, size: 8, classes: classes)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = DMDSettings()
        s.gridSize = 40
        s.workers = workers
        s.batch = batch
        s.fakeUpdatesPerGenerator = ratio
        if let lr { (s.generatorOptimizer.learningRate, s.fakeOptimizer.learningRate) = (lr, lr) }
        return try DistributionMatchingObjective(teacher: EDMTeacher(model: teacher, sigmaData: 0.5), settings: s)
    }

    func flat(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    /// `to` takes `from`'s whole training state (weights, Adam moments and step, averages), so the next step of
    /// both starts from the same place.
    func copyState(_ from: DistributionMatchingObjective, to: DistributionMatchingObjective) {
        for (a, b) in zip(from.groups, to.groups) {
            let n = a.model.store.count
            b.model.store.values.update(from: a.model.store.values, count: n)
            b.optimizer.m.update(from: a.optimizer.m, count: n)
            b.optimizer.v.update(from: a.optimizer.v, count: n)
            b.optimizer.step = a.optimizer.step
            for (x, y) in zip(a.averages, b.averages) {
                y.average.shadow.update(from: x.average.shadow, count: n)
                y.average.updates = x.average.updates
            }
        }
    }

    /// Splitting the batch over two workers gives one worker's gradients of both networks (up to the grouping of
    /// the batch sums: relative L2 1e-5, as TeacherTests' data-parallel check) and losses, and the same bytes every
    /// time for a given worker count. Steps 1-4 with ratio 2 (fake-only and generator turns, the fake score moving
    /// away from the teacher so the matching gradient is not ~0); before each step the two-worker objective takes
    /// the one-worker one's state, so each step is compared from the same weights. A third objective (two workers)
    /// runs on its own: its every step must repeat the two-worker one's bit for bit.
    func testDataParallelStepsMatchOneWorkerAndRepeatBitForBit() throws {
        let one = try makeObjective(workers: 1, batch: 5, lr: 1e-3, ratio: 2), two = try makeObjective(workers: 2, batch: 5, lr: 1e-3, ratio: 2)
        let again = try makeObjective(workers: 2, batch: 5, lr: 1e-3, ratio: 2), alone = try makeObjective(workers: 2, batch: 5, lr: 1e-3, ratio: 2)
        var r1 = TrainRandom(seed: 3), r2 = TrainRandom(seed: 3), r3 = TrainRandom(seed: 3), r4 = TrainRandom(seed: 3)
        for number in 1...4 {
            copyState(one, to: two)
            let l1 = one.step(number: number, rng: &r1), l2 = two.step(number: number, rng: &r2)
            XCTAssertEqual(l2, l1, accuracy: 1e-6 * abs(l1), "fake-score loss, step \(number)")
            XCTAssertEqual(one.lastLosses.generator == nil, number % 2 != 0)
            if let g1 = one.lastLosses.generator, let g2 = two.lastLosses.generator {
                XCTAssertGreaterThan(g1, 0, "step \(number): the matching gradient is not ~0 once the fake score moved")
                XCTAssertEqual(g2, g1, accuracy: 1e-6 * g1, "generator loss, step \(number)")
            }
            for (a, b) in zip(one.groups, two.groups) where a.name == "fake-score" || number % 2 == 0 {
                let n = a.model.store.count
                XCTAssertGreaterThan(flat(a.model.store.grads, n).map(abs).max()!, 0, "\(a.name) was updated on step \(number)")
                let err = TensorError.relativeL2(flat(b.model.store.grads, n), flat(a.model.store.grads, n))
                print("DMD step \(number) \(a.name): gradient with 2 workers vs 1, relative L2 \(err)")
                XCTAssertLessThanOrEqual(err, 1e-5, "\(a.name) gradient, step \(number)")
            }
            let l3 = again.step(number: number, rng: &r3), l4 = alone.step(number: number, rng: &r4)
            XCTAssertEqual(l4, l3, "step \(number): two workers twice")
            for (a, b) in zip(again.groups, alone.groups) {
                let n = a.model.store.count
                XCTAssertEqual(flat(a.model.store.values, n), flat(b.model.store.values, n), "\(a.name) weights, step \(number): two workers twice")
                XCTAssertEqual(flat(a.optimizer.v, n), flat(b.optimizer.v, n), "\(a.name) Adam v, step \(number): two workers twice")
            }
        }
        XCTAssertEqual(r1.state, r2.state, "the random stream does not depend on the worker count")
    }

    /// objectiveGradientError of `loss`, asserted below GradientTolerance.maxRelativeError.
    func check(_ store: ParameterStore, _ what: String, loss: (_ backward: Bool) -> Double) {
        let (relative, coordinates, den) = objectiveGradientError(store, loss: loss)
        print("DMD \(what) gradient: relative error \(relative) over \(coordinates) coordinates")
        XCTAssertGreaterThan(den, 0, what)
        XCTAssertLessThan(relative, GradientTolerance.maxRelativeError, what)
    }

    func testGeneratorAndFakeScoreGradientsMatchFiniteDifferences() throws {
        let o = try makeObjective()
        let b = 3, p = o.per
        var rng = TrainRandom(seed: 9)
        let z = (0..<(b * p)).map { _ in rng.normal() }, n = (0..<(b * p)).map { _ in rng.normal() }
        let labels = [0, 2, 1]
        // A target that differs from G's sample (the matching gradient is ~0 while the fake score equals the teacher).
        let x = Array(UnsafeBufferPointer(start: o.generate(z: z, labels: labels, batch: b), count: b * p))
        let target = x.enumerated().map { $1 - 0.3 * Float(($0 % 7) - 3) / 3 }
        check(o.generator.model.store, "generator") { back in o.generatorLoss(z: z, target: target, labels: labels, batch: b, backward: back) }
        check(o.fake.model.store, "fake score") { back in o.fakeLoss(x: x, n: n, idx: [3, 17, 38], labels: labels, backward: back) }
    }

    func testMatchingGradientIsZeroWhileTheFakeScoreIsTheTeacher() throws {
        let o = try makeObjective()
        let b = 2, p = o.per
        var rng = TrainRandom(seed: 4)
        let z = (0..<(b * p)).map { _ in rng.normal() }, n = (0..<(b * p)).map { _ in rng.normal() }
        let x = Array(UnsafeBufferPointer(start: o.generate(z: z, labels: [1, 2], batch: b), count: b * p))
        let g = o.matchingGradient(x: x, n: n, idx: [5, 30], labels: [1, 2])
        // Inference and trainable forwards of the same weights agree to float rounding, so |g| is rounding only.
        XCTAssertLessThan(g.map(abs).max()!, 1e-3)
        // One fake-score update makes it differ from the teacher: g is no longer ~0.
        var r = TrainRandom(seed: 1)
        for k in 1...3 { _ = o.step(number: k, rng: &r) }
        let g2 = o.matchingGradient(x: x, n: n, idx: [5, 30], labels: [1, 2])
        XCTAssertGreaterThan(g2.map(abs).max()!, 1e-3)
    }

    func testShortRunCheckpointsBothNetworksExportsAndResumesExactly() throws {
        let data = TinyData.shapes(count: 8, size: 8, classes: 3)
        let teacher = EDMTeacher(model: try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel(), sigmaData: 0.5)
        var s = DMDSettings()
        (s.steps, s.batch, s.logEvery, s.checkpointEvery, s.sigmas, s.gridSize, s.fakeUpdatesPerGenerator) = (6, 4, 1, 2, 6, 40, 2)
        (s.generatorOptimizer.learningRate, s.fakeOptimizer.learningRate) = (1e-3, 1e-3)
        let dir = makeTempDir(), other = makeTempDir()
        let start = Date()
        let straight = try DMDStudentTrainer(teacher: teacher, settings: s, runDir: dir, resume: false)
        let summary = try straight.run(shouldStop: { false }, log: { _ in })
        print(String(format: "DMD 6 steps, batch 4: %.2f s", Date().timeIntervalSince(start)))
        XCTAssertEqual(summary.steps, 6)
        XCTAssertNotNil(straight.objective.lastLosses.generator, "step 6 is a generator turn")
        let p = try ImagePipeline.load(path: dir)
        XCTAssertTrue(p.sampler is ConsistencySampler, "\(p.sampler)")
        XCTAssertTrue(p.generate([GenerationRequest(seed: 1, label: 2)], steps: 1).data.allSatisfy { $0.isFinite && abs($0) <= 1 })
        let saved = try checkpointTensors(dir)
        for key in ["generator/values", "generator/ema", "generator/adam.m", "fake-score/values", "fake-score/adam.v"] { XCTAssertNotNil(saved[key], key) }
        XCTAssertNotEqual(saved["generator/values"], saved["fake-score/values"])

        var n = 0
        let first = try DMDStudentTrainer(teacher: teacher, settings: s, runDir: other, resume: false)
        _ = try first.run(shouldStop: { n += 1; return n > 3 }, log: { _ in })
        let resumed = try DMDStudentTrainer(teacher: teacher, settings: s, runDir: other, resume: true)
        XCTAssertEqual(resumed.step, 3)
        _ = try resumed.run(shouldStop: { false }, log: { _ in })
        let a = try checkpointTensors(dir), b = try checkpointTensors(other)
        for key in ["generator/values", "generator/ema", "fake-score/values", "fake-score/adam.m", "losses"] { XCTAssertEqual(a[key], b[key], key) }
    }
}

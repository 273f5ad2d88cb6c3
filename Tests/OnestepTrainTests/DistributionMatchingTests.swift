// DMD (DistributionMatching.swift): finite-difference checks of both of its objectives on a tiny UNet (the
// generator's surrogate loss with its target held fixed, as DMD2's .detach() holds it; the fake score's denoising
// loss), the generator gradient's starting value (fake score = teacher, so ~0), and a short run that checkpoints
// both networks, exports a consistency model and resumes exactly.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class DistributionMatchingTests: XCTestCase {
    func makeObjective(classes: Int = 3) throws -> DistributionMatchingObjective {
        let data = TinyData.shapes(count: 8, size: 8, classes: classes)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = DMDSettings()
        s.gridSize = 40
        return try DistributionMatchingObjective(teacher: EDMTeacher(model: teacher, sigmaData: 0.5), settings: s)
    }

    /// Relative L2 error of analytic vs Richardson-extrapolated central differences on 2 coordinates per tensor.
    func check(_ store: ParameterStore, _ what: String, loss: (_ backward: Bool) -> Double) {
        store.zeroGrads()
        _ = loss(true)
        let e: Float = 1e-2
        var analytic: [Double] = [], numeric: [Double] = []
        var pick = TrainRandom(seed: 5)
        for entry in store.entries {
            for _ in 0..<min(2, entry.count) {
                let j = entry.offset + pick.int(entry.count), keep = store.values[j]
                analytic.append(Double(store.grads[j]))
                func central(_ h: Float) -> Double {
                    store.values[j] = keep + h
                    let up = loss(false)
                    store.values[j] = keep - h
                    let down = loss(false)
                    store.values[j] = keep
                    return (up - down) / Double(2 * h)
                }
                numeric.append((4 * central(e / 2) - central(e)) / 3)
            }
        }
        var num = 0.0, den = 0.0
        for i in analytic.indices { num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]); den += numeric[i] * numeric[i] }
        let relative = (num / den).squareRoot()
        print("DMD \(what) gradient: relative error \(relative) over \(analytic.count) coordinates")
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

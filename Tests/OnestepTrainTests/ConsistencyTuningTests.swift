// ECT (ConsistencyTuning.swift): its r(t) schedule and weight against locuslab/ect ECMLoss's formulas (values
// computed with Python's math module), the gradient of its objective against finite differences on a tiny UNet,
// and a short run that exports a consistency model and resumes.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class ConsistencyTuningTests: XCTestCase {
    func testRScheduleAndWeightMatchECT() {
        let s = ECTSettings()  // q = 4, k = 8, b = 1, sigma_data 0.5
        // t * (1 - 4^-(stage+1) * (1 + 8 sigmoid(-t))), clamped at 0 (python: math.exp)
        XCTAssertEqual(s.r(t: 1, stage: 0), 0.2121171572600098, accuracy: 1e-12)
        XCTAssertEqual(s.r(t: 1, stage: 3), 0.9876893305821877, accuracy: 1e-12)
        XCTAssertEqual(s.r(t: 0.05, stage: 0), 0)
        XCTAssertEqual(s.r(t: 10, stage: 1), 9.374773010656487, accuracy: 1e-12)
        XCTAssertEqual(s.weight(t: 0.5), 8, accuracy: 1e-12)  // (0.25 + 0.25) / 0.0625
        var st = ECTSettings()
        (st.steps, st.stages) = (10, 4)
        XCTAssertEqual((1...10).map { st.stage(step: $0) }, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    }

    /// d(loss)/d(theta) of the ECT objective (targets held fixed, as the stop-gradient holds them) against central
    /// differences of the same loss, on 2 sampled coordinates of every parameter tensor.
    func testObjectiveGradientMatchesFiniteDifferences() throws {
        let data = TinyData.shapes(count: 8, size: 8, classes: 3)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = ECTSettings()
        s.workers = 1
        let o = try ConsistencyTuningObjective(teacher: teacher, dataset: data, settings: s)
        let b = 3, per = data.imageFloats
        var x0 = [Float](repeating: 0, count: b * per)
        data.gather([0, 3, 5], into: &x0)
        var rng = TrainRandom(seed: 11)
        let z = (0..<(b * per)).map { _ in rng.normal() }
        let t = [0.3, 1.7, 12.0], r = t.map { s.r(t: $0, stage: 1) }
        let labels = data.labels.map { l in [0, 3, 5].map { l[$0] } }
        let target = o.targets(x0: x0, z: z, t: t, r: r, labels: labels)
        func loss(backward: Bool) -> Double {
            target.withUnsafeBufferPointer { tp in
                o.chunkLoss(o.firstWorker, lo: 0, hi: b, x0: x0, z: z, t: t, r: r, labels: labels, scale: 1, backward: backward, fixedTarget: tp.baseAddress!)
            }
        }
        let (relative, coordinates, den) = objectiveGradientError(o.model.store) { loss(backward: $0) }
        print("ECT objective gradient: relative error \(relative) over \(coordinates) coordinates")
        XCTAssertGreaterThan(den, 0)
        XCTAssertLessThan(relative, GradientTolerance.maxRelativeError)
    }

    func testShortRunExportsAConsistencyModelAndResumesExactly() throws {
        let dir = makeTempDir(), other = makeTempDir()
        let data = TinyData.shapes(count: 24, size: 8, classes: 3)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = ECTSettings()
        (s.steps, s.batch, s.workers, s.logEvery, s.checkpointEvery, s.sigmas) = (6, 4, 2, 1, 2, 6)
        let start = Date()
        let straight = try ECTStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: dir, resume: false)
        let summary = try straight.run(shouldStop: { false }, log: { _ in })
        print(String(format: "ECT 6 steps, batch 4: %.2f s", Date().timeIntervalSince(start)))
        XCTAssertEqual(summary.steps, 6)
        XCTAssertTrue(summary.finalLoss.isFinite && summary.finalLoss > 0)
        let p = try ImagePipeline.load(path: dir)
        XCTAssertTrue(p.sampler is ConsistencySampler, "\(p.sampler)")
        XCTAssertTrue(p.generate([GenerationRequest(seed: 1, label: 2)], steps: 1).data.allSatisfy { $0.isFinite && abs($0) <= 1 })
        // Stopped after 3 steps (saved at 3), resumed to 6: the same weights as the straight run.
        var n = 0
        let first = try ECTStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: other, resume: false)
        _ = try first.run(shouldStop: { n += 1; return n > 3 }, log: { _ in })
        let resumed = try ECTStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: other, resume: true)
        XCTAssertEqual(resumed.step, 3)
        _ = try resumed.run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(Array(UnsafeBufferPointer(start: straight.objective.model.store.values, count: straight.objective.model.store.count)),
                       Array(UnsafeBufferPointer(start: resumed.objective.model.store.values, count: resumed.objective.model.store.count)))
        XCTAssertEqual(straight.losses, resumed.losses)
    }
}

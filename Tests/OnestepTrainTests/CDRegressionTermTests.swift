// CD's regression term on cached teacher pairs (CDRegressionTerm.swift): its gradient against finite differences on
// a tiny class-conditional UNet, a step with the term is the plain CD step plus lambda times the term's gradient,
// and weight 0 leaves CD's random stream and results untouched.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class CDRegressionTermTests: XCTestCase {
    /// A tiny EDM teacher, its data and R = 4 made-up pairs (noise, "teacher sample" in [-1, 1], labels).
    func makeObjective(weight: Float, workers: Int = 1) throws -> (ConsistencyDistillationObjective, TeacherPairs) {
        let data = TinyData.shapes(count: 8, size: 8, classes: 3)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var rng = TrainRandom(seed: 21)
        let per = data.imageFloats, r = 4
        let pairs = TeacherPairs(noise: (0..<(r * per)).map { _ in rng.normal() }, samples: (0..<(r * per)).map { _ in 0.8 * (rng.uniform() * 2 - 1) },
                                 labels: [0, 1, 2, 0], count: r, per: per)
        var s = DistillSettings()
        (s.workers, s.sigmas, s.batch, s.regressionWeight, s.regressionBatch) = (workers, 6, 4, weight, 3)
        return (try ConsistencyDistillationObjective(denoiser: EDMTeacher(model: teacher, sigmaData: 0.5), dataset: data, settings: s, pairs: pairs), pairs)
    }

    func testRegressionGradientMatchesFiniteDifferences() throws {
        let (o, _) = try makeObjective(weight: 0.7)
        let per = o.dataset.imageFloats, c = PseudoHuber.constant(dimension: per)
        let w = o.loss.workers[0], idx: ArraySlice<Int> = [3, 0, 2]
        let (relative, _, den) = objectiveGradientError(o.model.store) { back in
            guard back else {
                let keep = Array(UnsafeBufferPointer(start: o.model.store.grads, count: o.model.store.count))
                defer { o.model.store.grads.update(from: keep, count: keep.count) }
                return o.loss.regressionChunk(w, indices: idx, batch: 3, per: per, c: c)
            }
            return o.loss.regressionChunk(w, indices: idx, batch: 3, per: per, c: c)
        }
        print("CD regression term gradient: relative error \(relative)")
        XCTAssertGreaterThan(den, 0)
        XCTAssertLessThan(relative, GradientTolerance.maxRelativeError)
    }

    /// One step's gradient with the term = the plain CD gradient from the same stream + the term's own gradient on
    /// the pair indices drawn after CD's noise (float sums in another order: relative L2 within 1e-5).
    func testStepIsConsistencyPlusWeightedRegression() throws {
        let (with, _) = try makeObjective(weight: 0.5), (plain, _) = try makeObjective(weight: 0)
        XCTAssertNil(plain.loss.pairs)
        let b = 4, per = with.dataset.imageFloats
        var x0 = [Float](repeating: 0, count: b * per)
        with.dataset.gather([0, 1, 2, 3], into: &x0)
        let labels = [0, 1, 2, 0]
        func grads(_ o: ConsistencyDistillationObjective) -> ([Float], TrainRandom) {
            var rng = TrainRandom(seed: 4)
            o.student.zeroGradients()
            _ = o.loss.step(student: o.model, target: o.student.average("target").shadow, clean: x0, batch: b, labels: labels, rng: &rng)
            return (Array(UnsafeBufferPointer(start: o.model.store.grads, count: o.model.store.count)), rng)
        }
        let (gWith, _) = grads(with)
        var (gPlain, rngAfterCD) = grads(plain)
        let idx = (0..<3).map { _ in rngAfterCD.int(4) }
        plain.model.store.zeroGrads()
        // The term's gradient alone, on the plain objective's network (same weights: both are the teacher's copy).
        let c = PseudoHuber.constant(dimension: per)
        let (regO, _) = try makeObjective(weight: 0.5)
        regO.model.store.zeroGrads()
        _ = regO.loss.regressionChunk(regO.loss.workers[0], indices: idx[...], batch: 3, per: per, c: c)
        let gReg = Array(UnsafeBufferPointer(start: regO.model.store.grads, count: regO.model.store.count))
        for i in gPlain.indices { gPlain[i] += gReg[i] }
        var num = 0.0, den = 0.0
        for i in gWith.indices { num += Double(gWith[i] - gPlain[i]) * Double(gWith[i] - gPlain[i]); den += Double(gPlain[i]) * Double(gPlain[i]) }
        XCTAssertGreaterThan(den, 0)
        XCTAssertLessThan((num / den).squareRoot(), 1e-5)
    }

    func testMissingPairsAreRefused() throws {
        let data = TinyData.shapes(count: 8, size: 8, classes: 3)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = DistillSettings()
        (s.workers, s.sigmas, s.regressionWeight) = (1, 6, 1)
        XCTAssertThrowsError(try ConsistencyDistillationObjective(denoiser: EDMTeacher(model: teacher, sigmaData: 0.5), dataset: data, settings: s)) { e in
            XCTAssertTrue("\(e)".contains("needs teacher pairs"), "\(e)")
        }
    }
}

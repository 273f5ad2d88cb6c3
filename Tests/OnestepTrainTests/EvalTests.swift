import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class EvalTests: XCTestCase {
    /// Double-precision Jacobi on small matrices: reconstruction and closed forms to 1e-9.
    static let tolerance = 1e-9

    func testJacobiEigendecompositionReconstructsTheMatrix() {
        let d = 6
        var rng = TrainRandom(seed: 4)
        let b = (0..<(d * d)).map { _ in Double(rng.normal()) }
        var a = [Double](repeating: 0, count: d * d)  // B B^T: symmetric PSD
        for i in 0..<d { for j in 0..<d { for k in 0..<d { a[i * d + j] += b[i * d + k] * b[j * d + k] } } }
        let (w, v) = SymmetricEigen.decompose(a, dimension: d)
        for i in 0..<d { for j in 0..<d {
            var s = 0.0
            for k in 0..<d { s += v[i * d + k] * w[k] * v[j * d + k] }
            XCTAssertEqual(s, a[i * d + j], accuracy: Self.tolerance * 100)
        } }
        let r = SymmetricEigen.sqrtPSD(a, dimension: d)
        for i in 0..<d { for j in 0..<d {
            var s = 0.0
            for k in 0..<d { s += r[i * d + k] * r[k * d + j] }
            XCTAssertEqual(s, a[i * d + j], accuracy: Self.tolerance * 100)
        } }
    }

    func testFrechetDistanceMatchesTheClosedFormForCommutingCovariances() {
        // Diagonal covariances: FD = |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
        let a = GaussianFit(mean: [0, 1, 2], covariance: [4, 0, 0, 0, 1, 0, 0, 0, 9])
        let b = GaussianFit(mean: [1, 1, 0], covariance: [1, 0, 0, 0, 1, 0, 0, 0, 1])
        let means: Double = 1 + 0 + 4
        let covs: Double = (4 + 1 - 2 * 2) + (1 + 1 - 2 * 1) + (9 + 1 - 2 * 3)
        let expected = means + covs
        XCTAssertEqual(FeatureDistance.frechet(a, b), expected, accuracy: Self.tolerance)
        XCTAssertEqual(FeatureDistance.frechet(a, a), 0, accuracy: Self.tolerance)
    }

    func testDistancesSeparateShiftedSetsAndIntervalsContainTheEstimate() {
        var rng = TrainRandom(seed: 8)
        let d = 4, n = 300
        let x = (0..<(n * d)).map { _ in rng.normal() }
        let y = (0..<(n * d)).map { _ in rng.normal() }
        let z = (0..<(n * d)).map { _ in rng.normal() + 1 }
        let same = FeatureBootstrap.distances(x, y, dimension: d, resamples: 50, seed: 1)
        let shifted = FeatureBootstrap.distances(z, y, dimension: d, resamples: 50, seed: 1)
        XCTAssertLessThan(same.fd.value, 0.2)
        XCTAssertGreaterThan(shifted.fd.value, 3)  // |mu|^2 = 4
        XCTAssertLessThan(abs(same.kid.value), shifted.kid.value / 10)
        for e in [same.fd, shifted.fd, shifted.kid] { XCTAssertLessThanOrEqual(e.low, e.high) }
        XCTAssertLessThanOrEqual(shifted.fd.low, shifted.fd.value)
        XCTAssertGreaterThanOrEqual(shifted.fd.high, shifted.fd.value)
        let p = FeatureBootstrap.proportion(Array(repeating: true, count: 30) + Array(repeating: false, count: 10), resamples: 100, seed: 2)
        XCTAssertEqual(p.value, 0.75)
        XCTAssertTrue(p.low < 0.75 && p.high > 0.75)
    }

    func testModelSpecParsing() throws {
        XCTAssertEqual(try EvalSpec(parsing: "runs/student"), EvalSpec(name: "student", path: "runs/student", steps: nil))
        XCTAssertEqual(try EvalSpec(parsing: "runs/teacher:18"), EvalSpec(name: "teacher-18step", path: "runs/teacher", steps: 18))
        XCTAssertEqual(try EvalSpec(parsing: "euler=runs/teacher:1"), EvalSpec(name: "euler", path: "runs/teacher", steps: 1))
        XCTAssertThrowsError(try EvalSpec(parsing: "x=:3"))
        XCTAssertThrowsError(try EvalSpec(parsing: "runs/t:0"))
        XCTAssertEqual(try EvalSpec(parsing: "ddim=models/t:35@DDIMScheduler"),
                       EvalSpec(name: "ddim", path: "models/t", steps: 35, scheduler: "DDIMScheduler"))
        XCTAssertEqual(try EvalSpec(parsing: "models/t:35@DPMSolverMultistepScheduler"),
                       EvalSpec(name: "t-DPMSolverMultistepScheduler-35step", path: "models/t", steps: 35, scheduler: "DPMSolverMultistepScheduler"))
        XCTAssertEqual(try EvalSpec(parsing: "models/t@DDIMScheduler"), EvalSpec(name: "t-DDIMScheduler", path: "models/t", steps: nil, scheduler: "DDIMScheduler"))
        XCTAssertThrowsError(try EvalSpec(parsing: "models/t:35@NoSuchScheduler")) { XCTAssertTrue("\($0)".contains("NoSuchScheduler is not supported"), "\($0)") }
        XCTAssertThrowsError(try EvalSpec(parsing: "models/t:35@"))
    }

    /// The classifier learns a 3-class toy problem far above chance and its cache round-trips.
    func testClassifierLearnsAndIsCached() throws {
        let data = TinyData.shapes(count: 96, size: 8, classes: 3)
        let path = NSTemporaryDirectory() + "onestep-classifier-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let m = try ShapeClassifier.trainOrLoad(data: data, indices: Array(0..<96), steps: 100, cachePath: path, log: { _ in })
        let (f, pred) = m.featuresAndPredictions(data.pixels)
        XCTAssertEqual(f.count, 96 * ShapeClassifier.featureDimension)
        let acc = Double(zip(pred, data.labels!).filter { $0 == $1 }.count) / 96
        XCTAssertGreaterThan(acc, 0.5)
        let again = try ShapeClassifier.trainOrLoad(data: data, indices: Array(0..<96), steps: 100, cachePath: path, log: { _ in })
        XCTAssertEqual(again.featuresAndPredictions(data.pixels).features, f)
    }
}

import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

final class DistillTests: XCTestCase {
    /// Gradients by central differences in float32 on a loss of ~1: agreement to 1e-3 relative.
    static let finiteDifferenceRelative = 1e-3
    /// Heun step vs the same maths written out with EDM.denoise on the reference forward.
    static let heunMaxAbs: Float = 2e-4

    func testBoundaryScalingsMatchDiffusersAndApproachTheTeacher() {
        let atMin = ConsistencyParameterization.scalings(sigma: 0.002, sigmaMin: 0.002, sigmaData: 0.5)
        XCTAssertEqual(atMin.cSkip, 1, accuracy: 1e-15)
        XCTAssertEqual(atMin.cOut, 0, accuracy: 1e-15)
        // diffusers get_scalings_for_boundary_condition at sigma = 80 (computed by hand from its formula).
        let s = ConsistencyParameterization.scalings(sigma: 80, sigmaMin: 0.002, sigmaData: 0.5)
        XCTAssertEqual(s.cSkip, 0.25 / (79.998 * 79.998 + 0.25), accuracy: 1e-15)
        XCTAssertEqual(s.cOut, 79.998 * 0.5 / (6400.25).squareRoot(), accuracy: 1e-12)
        let edm = EDM.scalings(sigma: 80, sigmaData: 0.5)
        XCTAssertEqual(s.cIn, edm.cIn)
        XCTAssertEqual(s.cNoise, edm.cNoise)
        XCTAssertEqual(s.cOut, edm.cOut, accuracy: 1e-4)
    }

    func testPseudoHuberGradientMatchesFiniteDifferences() {
        var rng = TrainRandom(seed: 3)
        let n = 48
        var a = (0..<n).map { _ in rng.normal() * 0.1 }
        let b = (0..<n).map { _ in rng.normal() * 0.1 }
        let c = PseudoHuber.constant(dimension: n)
        var g = [Float](repeating: 0, count: n)
        _ = PseudoHuber.lossAndGradient(a, b, count: n, c: c, gradScale: 1, grad: &g)
        var scratch = [Float](repeating: 0, count: n)
        for j in [0, 7, 31] {
            let h: Float = 1e-3, keep = a[j]
            a[j] = keep + h
            let up = PseudoHuber.lossAndGradient(a, b, count: n, c: c, gradScale: 1, grad: &scratch)
            a[j] = keep - h
            let down = PseudoHuber.lossAndGradient(a, b, count: n, c: c, gradScale: 1, grad: &scratch)
            a[j] = keep
            XCTAssertEqual(Double(g[j]), (up - down) / Double(2 * h), accuracy: Self.finiteDifferenceRelative * max(1, abs(Double(g[j]))))
        }
        XCTAssertEqual(PseudoHuber.lossAndGradient(b, b, count: n, c: c, gradScale: 1, grad: &scratch), 0, accuracy: 1e-12)
    }

    func testTeacherHeunStepIsEDMHeun() throws {
        let cfg = try TinyData.config(classes: ["a", "b", "c"])
        let model = try TrainableUNet(config: cfg, seed: 5).inferenceModel()
        let teacher = EDMTeacher(model: model, sigmaData: 0.5)
        var rng = TrainRandom(seed: 1)
        let per = 3 * 8 * 8
        let x = Tensor(shape: [2, 3, 8, 8], data: (0..<(2 * per)).map { _ in rng.normal() * 10 })
        var out = [Float](repeating: 0, count: 2 * per)
        teacher.heunStep(x.data, from: [10, 10], to: [5, 5], labels: [0, 2], into: &out)
        let den: (Tensor, Float, [Int]?) -> Tensor = { t, ts, l in model.referenceForward(t, timesteps: Array(repeating: ts, count: t.shape[0]), classLabels: l) }
        let d0 = EDM.denoise(x, sigma: 10, sigmaData: 0.5, labels: [0, 2], model: den)
        let e = Tensor(shape: x.shape, data: zip(x.data, d0.data).map { $0 - 5 * ($0 - $1) / 10 })
        let d1 = EDM.denoise(e, sigma: 5, sigmaData: 0.5, labels: [0, 2], model: den)
        var expected = [Float](repeating: 0, count: 2 * per)
        for j in 0..<(2 * per) {
            let slope0: Float = (x.data[j] - d0.data[j]) / 10
            let slope1: Float = (e.data[j] - d1.data[j]) / 5
            expected[j] = x.data[j] - 5 * (slope0 + slope1) / 2
        }
        XCTAssertLessThan(TensorError.maxAbs(out, expected), Self.heunMaxAbs)
    }

    /// A few distillation steps on a tiny teacher: the run folder loads as a consistency model that samples in
    /// 1 and 2 steps, the student started as the teacher, and a forced resume continues to a larger step count.
    func testDistilledStudentLoadsAsConsistencyModelAndResumes() throws {
        let dir = NSTemporaryDirectory() + "onestep-distill-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = TinyData.shapes(count: 24, size: 8, classes: 3)
        let teacher = try TrainableUNet(config: TinyData.config(classes: data.classNames!), seed: 2).inferenceModel()
        var s = DistillSettings()
        s.steps = 3
        s.batch = 4
        s.sigmas = 6
        s.workers = 2
        s.logEvery = 1
        let t = try ConsistencyStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: dir, resume: false)
        let teacherWeights = Dictionary(uniqueKeysWithValues: teacher.parameters.map { ($0.0, $0.1.data) })
        for (name, tensor) in t.objective.model.store.tensors() { XCTAssertEqual(tensor.data, teacherWeights[name], name) }
        let summary = try t.run(shouldStop: { false }, log: { _ in })
        XCTAssertEqual(summary.steps, 3)
        XCTAssertTrue(summary.finalLoss.isFinite && summary.finalLoss > 0)
        let p = try ImagePipeline.load(path: dir)
        guard let c = (p.sampler as? ConsistencySampler)?.config else { return XCTFail("student is not a consistency model: \(p.sampler)") }
        XCTAssertEqual(c.numTrainTimesteps, 6)
        XCTAssertEqual(p.classNames, data.classNames)
        for steps in [1, 2] {
            let x = p.generate([GenerationRequest(seed: 1, label: 2)], steps: steps)
            XCTAssertEqual(x.shape, [1, 3, 8, 8])
            XCTAssertTrue(x.data.allSatisfy { $0.isFinite && abs($0) <= 1 })
        }
        // Going on to 5 steps is a change of the run's settings: refused naming it, accepted with force.
        s.steps = 5
        XCTAssertThrowsError(try ConsistencyStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: dir, resume: true)) {
            XCTAssertEqual(($0 as? RunSettingsError)?.list, "steps 3 -> 5", "\($0)")
        }
        let resumed = try ConsistencyStudentTrainer(teacher: teacher, dataset: data, settings: s, runDir: dir, resume: true, force: true)
        XCTAssertEqual(resumed.step, 3)
        XCTAssertEqual(try resumed.run(shouldStop: { false }, log: { _ in }).steps, 5)
        XCTAssertEqual(resumed.losses.count, 5)
    }

    func testNarrowerStudentConfigKeepsClassesAndChecksGroups() throws {
        let teacher = try TinyData.config(classes: ["a", "b", "c"])
        let small = try StudentConfigs.narrower(teacher, channels: [4, 8])
        XCTAssertEqual(small.blockOutChannels, [4, 8])
        XCTAssertEqual(small.classNames, ["a", "b", "c"])
        XCTAssertThrowsError(try StudentConfigs.narrower(teacher, channels: [6, 8]))
        XCTAssertThrowsError(try StudentConfigs.narrower(teacher, channels: [8]))
    }
}

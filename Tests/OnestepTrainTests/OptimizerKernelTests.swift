// The optimizer kernels of onestep_optim.c at every level against their naive references: the Adam update
// against Optimizer.referenceAdam (the Swift loop it replaced) bit for bit, the sum of squares against a serial
// double sum within a named tolerance and bit-identical across levels.
import XCTest
@testable import OnestepTrain
import OnestepCore

final class OptimizerKernelTests: XCTestCase {
    /// 8 double lanes folded in a fixed order against one serial double chain over ~10^5 squares.
    static let sumOfSquaresRelativeError = 1e-13

    func testAdamUpdateGivesTheReferenceBitsAtEveryLevel() {
        // 1000 + 7: a vector body and a scalar tail at every level.
        let n = 1007
        let g = GradientCheck.random(n, seed: 41, scale: 0.01), w0 = GradientCheck.random(n, seed: 42)
        let m0 = GradientCheck.random(n, seed: 43, scale: 0.001), v0 = GradientCheck.random(n, seed: 44, scale: 1e-4).map { $0 * $0 }
        let (clip, b1, b2, lr, eps): (Float, Float, Float, Float, Float) = (0.7, 0.9, 0.999, 2e-4, 1e-8)
        let bc1: Float = 1 - 0.9 * 0.9 * 0.9, bc2: Float = 1 - 0.999 * 0.999 * 0.999
        var wRef = w0, mRef = m0, vRef = v0
        Optimizer.referenceAdam(w: &wRef, g: g, m: &mRef, v: &vRef, count: n, clip: clip, b1: b1, b2: b2, stepSize: lr / bc1,
                                sqrtBc2: bc2.squareRoot(), eps: eps)
        XCTAssertNotEqual(wRef, w0, "the reference moved the weights")
        for level in KernelLevel.allCases where level.isSupported {
            var w = w0, m = m0, v = v0
            TrainKernels.adamUpdate(weights: &w, gradients: g, m: &m, v: &v, count: n, clip: clip, beta1: b1, beta2: b2,
                                stepSize: lr / bc1, sqrtBiasCorrection2: bc2.squareRoot(), epsilon: eps, level: level)
            XCTAssertEqual(w, wRef, "\(level): weights")
            XCTAssertEqual(m, mRef, "\(level): first moments")
            XCTAssertEqual(v, vRef, "\(level): second moments")
        }
    }

    func testSumOfSquaresMatchesASerialSumAndIsTheSameAtEveryLevel() {
        for n in [0, 1, 7, 8, 100_003] {
            let g = GradientCheck.random(n, seed: UInt64(50 + n), scale: 3)
            var serial = 0.0
            for x in g { serial += Double(x) * Double(x) }
            let sums = KernelLevel.allCases.filter(\.isSupported).map { TrainKernels.sumOfSquares(g, count: n, level: $0) }
            for s in sums {
                XCTAssertLessThanOrEqual(abs(s - serial), Self.sumOfSquaresRelativeError * max(serial, 1e-300), "n = \(n)")
                XCTAssertEqual(s, sums[0], "n = \(n): the levels differ")
            }
            if n > 0 { XCTAssertGreaterThan(sums[0], 0) }
        }
    }

    /// The optimizer as a whole still steps like torch.optim.Adam's rule (here: the reference loop), clip included.
    func testOptimizerUpdateEqualsTheReferenceRule() {
        let store = ParameterStore()
        _ = store.add("w", shape: [37, 5], initializer: .uniform(0.5))
        store.seal(seed: 5)
        let g = GradientCheck.random(store.count, seed: 6, scale: 0.5)
        store.grads.update(from: g, count: store.count)
        let w0 = Array(UnsafeBufferPointer(start: store.values, count: store.count))
        let opt = Optimizer(OptimizerConfig(), for: store)
        let norm = opt.update(store)
        var serial = 0.0
        for x in g { serial += Double(x) * Double(x) }
        XCTAssertEqual(norm, serial.squareRoot(), accuracy: 1e-12 * serial.squareRoot())
        let clip = norm > 1 ? Float(1 / norm) : 1
        var w = w0, m = [Float](repeating: 0, count: store.count), v = m
        Optimizer.referenceAdam(w: &w, g: g, m: &m, v: &v, count: store.count, clip: clip, b1: 0.9, b2: 0.999,
                                stepSize: 2e-4 / (1 - 0.9), sqrtBc2: (1 - Float(0.999)).squareRoot(), eps: 1e-8)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: store.values, count: store.count)), w)
        XCTAssertGreaterThan(norm, 1, "the clip is exercised")
    }
}

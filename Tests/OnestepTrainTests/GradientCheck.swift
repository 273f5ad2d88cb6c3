// Finite-difference gradient checking (ggml's test-grad0 idea): for a scalar loss L = sum(r * y) with a fixed
// random r, compare the backward's dL/dtheta and dL/dx against central differences (L(v+e) - L(v-e)) / 2e,
// on a sample of coordinates of every parameter tensor and every input.
import Foundation
import XCTest
@testable import OnestepTrain
import OnestepCore

enum GradientTolerance {
    /// ||analytic - numeric||_2 / ||numeric||_2 over the sampled coordinates. Float32 forwards with e = 1e-2
    /// leave ~1e-5 to 4e-4 of rounding and curvature error (measured); a wrong backward is off by O(1).
    static let maxRelativeError = 2e-3
    /// Step of the central differences.
    static let epsilon: Float = 1e-2
}

/// Analytic gradients of a whole objective against Richardson-extrapolated central differences (at e and e/2:
/// removes the O(e^2) curvature term, which objectives with weights w(t) and pseudo-Huber's sqrt make larger than
/// in the layer checks) on 2 coordinates per tensor of `store`, chosen by TrainRandom(seed: 5). `loss(backward)`
/// returns the loss and, with backward, adds its gradient into `store.grads`. Returns ||analytic - numeric|| /
/// ||numeric||, the number of coordinates, and ||numeric||^2 (must be > 0 for the ratio to mean anything).
func objectiveGradientError(_ store: ParameterStore, loss: (_ backward: Bool) -> Double) -> (relative: Double, coordinates: Int, numericNormSquared: Double) {
    store.zeroGrads()
    _ = loss(true)
    let e = GradientTolerance.epsilon
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
    return ((num / den).squareRoot(), analytic.count, den)
}

/// An input the check perturbs in place: a stable allocation, so layers may keep its pointer between calls.
final class CheckedInput {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    init(_ values: [Float]) {
        count = values.count
        pointer = .allocate(capacity: count)
        pointer.initialize(from: values, count: count)
    }
    deinit { pointer.deallocate() }
}

struct GradientCheckResult {
    var parameterError: Double
    var inputErrors: [Double]
    var worstTensor: String
}

enum GradientCheck {
    /// `forward` runs the layer on the inputs and returns its output (outputCount floats); `backward` gets dL/dy
    /// and returns dL/dx per input (nil: that input's gradient is not checked). Parameter gradients are read
    /// from the store.
    static func run(store: ParameterStore, inputs: [CheckedInput], outputCount: Int, seed: UInt64 = 7,
                    perTensor: Int = 3, perInput: Int = 12,
                    forward: () -> UnsafePointer<Float>,
                    backward: (UnsafePointer<Float>) -> [UnsafePointer<Float>?]) -> GradientCheckResult {
        var rng = TrainRandom(seed: seed)
        let r = (0..<outputCount).map { _ in rng.normal() }
        func loss() -> Double {
            let y = forward()
            var s = 0.0
            for i in 0..<outputCount { s += Double(r[i]) * Double(y[i]) }
            return s
        }
        store.zeroGrads()
        _ = forward()
        let inputGrads: [[Float]?] = r.withUnsafeBufferPointer { rp in
            backward(rp.baseAddress!).enumerated().map { k, g in g.map { Array(UnsafeBufferPointer(start: $0, count: inputs[k].count)) } }
        }
        let paramGrads = Array(UnsafeBufferPointer(start: store.grads, count: store.count))
        let e = GradientTolerance.epsilon
        func numeric(_ p: UnsafeMutablePointer<Float>) -> Double {
            let saved = p.pointee
            p.pointee = saved + e
            let lp = loss()
            p.pointee = saved - e
            let lm = loss()
            p.pointee = saved
            return (lp - lm) / (2 * Double(e))
        }
        func relative(_ a: [Double], _ b: [Double]) -> Double {
            var num = 0.0, den = 0.0
            for i in a.indices { num += (a[i] - b[i]) * (a[i] - b[i]); den += b[i] * b[i] }
            return den == 0 ? num.squareRoot() : (num / den).squareRoot()
        }
        var analytic: [Double] = [], numericAll: [Double] = []
        var worst = (0.0, "")
        for entry in store.entries {
            var a: [Double] = [], nu: [Double] = []
            for _ in 0..<min(perTensor, entry.count) {
                let j = entry.offset + rng.int(entry.count)
                a.append(Double(paramGrads[j]))
                nu.append(numeric(store.values + j))
            }
            let err = relative(a, nu)
            if err > worst.0 { worst = (err, entry.name) }
            analytic += a
            numericAll += nu
        }
        var inputErrors: [Double] = []
        for (k, input) in inputs.enumerated() {
            guard let g = inputGrads[k] else { inputErrors.append(0); continue }
            var a: [Double] = [], nu: [Double] = []
            for _ in 0..<min(perInput, input.count) {
                let j = rng.int(input.count)
                a.append(Double(g[j]))
                nu.append(numeric(input.pointer + j))
            }
            inputErrors.append(relative(a, nu))
        }
        return GradientCheckResult(parameterError: store.count == 0 ? 0 : relative(analytic, numericAll),
                                   inputErrors: inputErrors, worstTensor: "\(worst.1) (\(worst.0))")
    }

    static func random(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = TrainRandom(seed: seed)
        return (0..<n).map { _ in rng.normal() * scale }
    }

    static func assertPasses(_ r: GradientCheckResult, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertLessThan(r.parameterError, GradientTolerance.maxRelativeError,
                          "\(what): parameter gradients off by \(r.parameterError); worst tensor \(r.worstTensor)", file: file, line: line)
        for (k, e) in r.inputErrors.enumerated() {
            XCTAssertLessThan(e, GradientTolerance.maxRelativeError, "\(what): input \(k) gradient off by \(e)", file: file, line: line)
        }
    }
}

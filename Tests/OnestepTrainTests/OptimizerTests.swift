import XCTest
@testable import OnestepTrain

final class OptimizerTests: XCTestCase {
    /// A store holding one (2, 2) weight and one (2) bias, for optimizer arithmetic.
    func quadratic() -> ParameterStore {
        let s = ParameterStore()
        _ = s.add("w", shape: [2, 2], initializer: .constant(3))
        _ = s.add("b", shape: [2], initializer: .constant(-2))
        s.seal(seed: 0)
        return s
    }

    /// Minimises 0.5 * ||theta||^2 (gradient = theta) and checks both optimizers reach the minimum.
    func testAdamAndRAdamMinimiseAQuadratic() {
        for kind in OptimizerKind.allCases {
            let s = quadratic()
            var cfg = OptimizerConfig()
            (cfg.kind, cfg.learningRate, cfg.gradientClip, cfg.warmupSteps) = (kind, 0.05, 0, 10)
            let opt = Optimizer(cfg, for: s)
            for _ in 0..<600 {
                for i in 0..<s.count { s.grads[i] = s.values[i] }
                opt.update(s)
            }
            for i in 0..<s.count { XCTAssertEqual(s.values[i], 0, accuracy: 0.05, "\(kind) did not converge") }
        }
    }

    /// The first Adam step moves every coordinate by lr (bias-corrected m/sqrt(v) = sign(g)), scaled by warm-up.
    func testFirstAdamStepAndWarmup() {
        let s = quadratic()
        var cfg = OptimizerConfig()
        (cfg.learningRate, cfg.warmupSteps, cfg.gradientClip) = (0.1, 4, 0)
        let opt = Optimizer(cfg, for: s)
        for i in 0..<s.count { s.grads[i] = s.values[i] }
        opt.update(s)
        XCTAssertEqual(s.values[0], 3 - 0.1 / 4, accuracy: 1e-6)
        XCTAssertEqual(s.values[4], -2 + 0.1 / 4, accuracy: 1e-6)
    }

    func testWeightDecaySkipsBiasesAndClipScalesGradients() {
        let s = quadratic()
        var cfg = OptimizerConfig()
        (cfg.kind, cfg.learningRate, cfg.weightDecay, cfg.gradientClip) = (.radam, 0.1, 0.5, 1)
        let opt = Optimizer(cfg, for: s)
        for i in 0..<s.count { s.grads[i] = 100 }  // norm 245 -> clipped to 1
        let norm = opt.update(s)
        XCTAssertEqual(norm, (6 * 100.0 * 100.0).squareRoot(), accuracy: 1e-6)
        // RAdam's first steps are un-rectified: w -= lr * mhat, with mhat = the clipped gradient 100/norm.
        let g = Float(100 / norm)
        XCTAssertEqual(s.values[0], 3 * (1 - 0.05) - 0.1 * g, accuracy: 1e-5)
        XCTAssertEqual(s.values[4], -2 - 0.1 * g, accuracy: 1e-5)
    }

    func testEMAWarmsUpThenTracks() {
        let s = quadratic()
        let ema = WeightAverage(decay: 0.9, of: s)
        XCTAssertEqual(ema.currentDecay, 0.1, accuracy: 1e-6)
        for i in 0..<s.count { s.values[i] = 0 }
        ema.update(from: s)
        XCTAssertEqual(ema.shadow[0], 0.3, accuracy: 1e-6)  // 0.1 * 3 + 0.9 * 0
        for _ in 0..<200 { ema.update(from: s) }
        XCTAssertEqual(ema.shadow[0], 0, accuracy: 1e-4)
        let t = quadratic()
        ema.copy(into: t)
        XCTAssertEqual(t.values[0], ema.shadow[0])
    }
}

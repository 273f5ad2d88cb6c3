// Adam and RAdam over a ParameterStore's flat buffers, with linear learning-rate warm-up, decoupled weight
// decay (AdamW, Loshchilov & Hutter 2019), and clipping of the global gradient norm. Matches torch.optim.Adam /
// AdamW / RAdam update rules (RAdam: Liu et al. 2020, rectification when rho_t > 5, else an SGD-with-momentum step).
import Foundation
import OnestepCore

public enum OptimizerKind: String, Sendable, CaseIterable { case adam, radam }

public struct OptimizerConfig: Sendable, Equatable {
    public var kind: OptimizerKind = .adam
    public var learningRate: Float = 2e-4
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    /// Decoupled weight decay, applied to weight matrices and kernels only (rank >= 2), not to biases or norms.
    public var weightDecay: Float = 0
    /// Steps over which the learning rate ramps linearly from lr/warmup to lr.
    public var warmupSteps: Int = 0
    /// Global-norm clipping threshold; 0 disables.
    public var gradientClip: Float = 1
    public init() {}

    /// Learning rate at optimizer step `t` (1-based).
    public func learningRate(atStep t: Int) -> Float {
        warmupSteps > 0 && t < warmupSteps ? learningRate * Float(t) / Float(warmupSteps) : learningRate
    }
}

public final class Optimizer {
    public let config: OptimizerConfig
    public let count: Int
    /// First and second moment estimates, laid out like the store (checkpointed with it).
    public let m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>
    /// Updates taken so far.
    public var step = 0
    private let decayMask: [Range<Int>]

    public init(_ config: OptimizerConfig, for store: ParameterStore) {
        self.config = config
        count = store.count
        m = .allocate(capacity: max(count, 1))
        v = .allocate(capacity: max(count, 1))
        m.initialize(repeating: 0, count: max(count, 1))
        v.initialize(repeating: 0, count: max(count, 1))
        decayMask = store.entries.filter { $0.shape.count >= 2 && !$0.name.contains("norm") }.map { $0.offset..<($0.offset + $0.count) }
    }

    deinit { m.deallocate(); v.deallocate() }

    /// One update of `store.values` from `store.grads`. Returns the gradient norm before clipping.
    @discardableResult
    public func update(_ store: ParameterStore) -> Double {
        precondition(store.count == count, "optimizer built for \(count) parameters, store has \(store.count)")
        let norm = store.gradientNorm()
        let clip = config.gradientClip > 0 && norm > Double(config.gradientClip) ? Float(Double(config.gradientClip) / norm) : 1
        step += 1
        let t = step, lr = config.learningRate(atStep: t)
        let b1 = config.beta1, b2 = config.beta2, eps = config.epsilon
        let bc1 = 1 - Float(Foundation.pow(Double(b1), Double(t))), bc2 = 1 - Float(Foundation.pow(Double(b2), Double(t)))
        if config.weightDecay > 0 {
            let keep = 1 - lr * config.weightDecay
            for r in decayMask { for i in r { store.values[i] *= keep } }
        }
        let w = store.values, g = store.grads
        switch config.kind {
        case .adam:
            // onestep_optim.c: the bits of `referenceAdam` at every level (OptimizerKernelTests).
            TrainKernels.adamUpdate(weights: w, gradients: g, m: m, v: v, count: count, clip: clip, beta1: b1, beta2: b2,
                                stepSize: lr / bc1, sqrtBiasCorrection2: bc2.squareRoot(), epsilon: eps)
        case .radam:
            let rhoInf = 2 / (1 - Double(b2)) - 1
            let b2t = Foundation.pow(Double(b2), Double(t))
            let rho = rhoInf - 2 * Double(t) * b2t / (1 - b2t)
            let rectified = rho > 5
            let r = rectified ? Float(((rho - 4) * (rho - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rho)).squareRoot()) : 0
            let sqrtBc2 = bc2.squareRoot()
            for i in 0..<count {
                let gi = g[i] * clip
                m[i] = b1 * m[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
                let mhat = m[i] / bc1
                w[i] -= rectified ? lr * mhat * r / (v[i].squareRoot() / sqrtBc2 + eps) : lr * mhat
            }
        }
        return norm
    }
}

extension Optimizer {
    /// The Adam rule as plain Swift (what `update` ran before onestep_optim.c; the reference of
    /// OptimizerKernelTests): one element at a time, each operation rounded on its own.
    static func referenceAdam(w: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
                              v: UnsafeMutablePointer<Float>, count: Int, clip: Float, b1: Float, b2: Float, stepSize: Float,
                              sqrtBc2: Float, eps: Float) {
        for i in 0..<count {
            let gi = g[i] * clip
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            w[i] -= stepSize * m[i] / (v[i].squareRoot() / sqrtBc2 + eps)
        }
    }
}

/// Exponential moving average of a model's weights: shadow = d * shadow + (1 - d) * values after every update,
/// with d warmed up as min(decay, (1 + t) / (10 + t)) so early averages are not dominated by the random init
/// (`warmup: false`: d = decay from the first update, as consistency distillation's target network theta^-).
public final class WeightAverage {
    public let decay: Float
    public let warmup: Bool
    public let shadow: UnsafeMutablePointer<Float>
    public let count: Int
    public var updates = 0

    public init(decay: Float, of store: ParameterStore, warmup: Bool = true) {
        self.decay = decay
        self.warmup = warmup
        count = store.count
        shadow = .allocate(capacity: max(count, 1))
        shadow.initialize(from: store.values, count: count)
    }

    deinit { shadow.deallocate() }

    public var currentDecay: Float { warmup ? min(decay, Float(1 + updates) / Float(10 + updates)) : decay }

    public func update(from store: ParameterStore) {
        let d = currentDecay, s = store.values
        for i in 0..<count { shadow[i] = d * shadow[i] + (1 - d) * s[i] }
        updates += 1
    }

    /// Writes the averaged weights into a model of the same layout (for sampling and saving).
    public func copy(into store: ParameterStore) {
        precondition(store.count == count, "EMA of \(count) parameters cannot fill a store of \(store.count)")
        store.values.update(from: shadow, count: count)
    }
}

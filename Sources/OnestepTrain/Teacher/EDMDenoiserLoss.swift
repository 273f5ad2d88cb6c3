// The EDM training objective (Karras et al. 2022, Table 1, "EDM" column), as openai/consistency_models trains
// its teachers, with the consistency-model time input c_noise = 250 ln(sigma):
//   ln sigma ~ N(P_mean, P_std^2),  x = x0 + sigma n,  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
//   loss = lambda(sigma) ||D - x0||^2  with  lambda = (sigma^2 + sd^2) / (sigma sd)^2
// Since lambda c_out^2 = 1, the weighted loss equals ||F - F*||^2 with the effective target
//   F* = (x0 - c_skip x) / c_out,
// which is what is computed: mean over all elements, gradient dL/dF = 2 (F - F*) / (N C S S).
import Dispatch
import Foundation
import OnestepCore

public struct EDMTrainingConfig: Sendable, Equatable {
    public var sigmaData: Double = 0.5
    public var pMean: Double = -1.2
    public var pStd: Double = 1.2
    public init() {}
}

/// Buffers for one batch of the EDM objective; sized once, reused every step.
///
/// Data parallel: with replicas, the batch is split into contiguous chunks, one per model, run on separate
/// threads (OpenBLAS single-threaded inside each: on these small GEMMs two BLAS threads gain nothing, two
/// images streams nearly double the rate). The noise is drawn for the whole batch first, so the random
/// stream is the same whatever the number of workers.
public final class EDMDenoiserLoss {
    public let config: EDMTrainingConfig
    private let noisyInput = Buffer(), target = Buffer()
    private var gradients: [Buffer] = []
    public private(set) var sigmas: [Double] = []

    public init(config: EDMTrainingConfig = .init()) { self.config = config }

    /// One forward + backward on clean images x0 (N, C, S, S); adds parameter gradients into the model's store
    /// (zero them first) and returns the batch loss. `replicas` (clones of the model's layout) share the work;
    /// their values are refreshed from the model here.
    public func step(model: TrainableUNet, replicas: [TrainableUNet] = [], clean x0: UnsafePointer<Float>, batch n: Int,
                     labels: [Int]?, rng: inout TrainRandom) -> Double {
        let per = model.config.inChannels * model.config.sampleSize * model.config.sampleSize, total = n * per
        let input = noisyInput.ensure(total), tgt = target.ensure(total)
        sigmas = (0..<n).map { _ in Foundation.exp(config.pMean + config.pStd * Double(rng.normal())) }
        var timesteps = [Float](repeating: 0, count: n)
        for i in 0..<n {
            let s = EDM.scalings(sigma: sigmas[i], sigmaData: config.sigmaData)
            timesteps[i] = Float(s.cNoise)
            let sigma = Float(sigmas[i]), cIn = Float(s.cIn), cSkip = Float(s.cSkip), invOut = Float(1 / s.cOut)
            for j in (i * per)..<((i + 1) * per) {
                let x = x0[j] + sigma * rng.normal()
                input[j] = cIn * x
                tgt[j] = (x0[j] - cSkip * x) * invOut
            }
        }
        let models = [model] + replicas.prefix(max(0, n - 1))
        while gradients.count < models.count { gradients.append(Buffer()) }
        for r in models.dropFirst() {
            r.store.copyValues(from: model.store)
            r.store.zeroGrads()
        }
        // Chunk w holds images [bounds[w], bounds[w + 1]).
        let bounds = (0...models.count).map { $0 * n / models.count }
        let scale = 2 / Float(total)
        let partial = UnsafeMutableBufferPointer<Double>.allocate(capacity: models.count)
        defer { partial.deallocate() }
        let work = ChunkWork(models: models, gradients: gradients, input: UnsafePointer(input), target: UnsafePointer(tgt),
                             timesteps: timesteps, labels: labels, bounds: bounds, per: per, scale: scale, partial: partial)
        if models.count == 1 { work.run(0) } else { DispatchQueue.concurrentPerform(iterations: models.count) { work.run($0) } }
        for r in models.dropFirst() { addInPlace(model.store.grads, r.store.grads, count: model.store.count) }
        return partial.reduce(0, +) / Double(total)
    }
}

/// What one worker needs for its chunk. Workers touch disjoint models, gradient buffers and output slots;
/// input and target are read-only here, hence the unchecked Sendable.
private struct ChunkWork: @unchecked Sendable {
    let models: [TrainableUNet], gradients: [Buffer]
    let input: UnsafePointer<Float>, target: UnsafePointer<Float>
    let timesteps: [Float], labels: [Int]?, bounds: [Int], per: Int, scale: Float
    let partial: UnsafeMutableBufferPointer<Double>

    func run(_ w: Int) {
        let lo = bounds[w], hi = bounds[w + 1], m = hi - lo, count = m * per
        guard m > 0 else { partial[w] = 0; return }
        let f = models[w].forward(input + lo * per, batch: m, timesteps: Array(timesteps[lo..<hi]),
                                  classLabels: labels.map { Array($0[lo..<hi]) })
        let grad = gradients[w].ensure(count), tgt = target + lo * per
        var loss = 0.0
        for j in 0..<count {
            let d = f[j] - tgt[j]
            loss += Double(d) * Double(d)
            grad[j] = scale * d
        }
        models[w].backward(grad)
        partial[w] = loss
    }
}

extension TrainableUNet {
    /// The model as the EDM samplers call it (a fresh Tensor per call; for sampling, not for training).
    public func denoiser() -> (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor {
        { x, t, labels in self.forward(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: labels) }
    }

    /// Heun samples of this model as the server would draw them (same seeds -> same noise -> same images).
    public func sampleEDM(_ requests: [GenerationRequest], steps: Int, scheduler: EDMSchedulerConfig = .init()) -> Tensor {
        EDMHeunSampler(config: scheduler).sample(requests, steps: steps, channels: config.inChannels, size: config.sampleSize,
                                                 denoise: denoiser())
    }
}

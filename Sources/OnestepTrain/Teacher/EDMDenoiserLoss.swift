// The EDM training objective (Karras et al. 2022, Table 1, "EDM" column), as openai/consistency_models trains
// its teachers, with the consistency-model time input c_noise = 250 ln(sigma):
//   ln sigma ~ N(P_mean, P_std^2),  x = x0 + sigma n,  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
//   loss = lambda(sigma) ||D - x0||^2  with  lambda = (sigma^2 + sd^2) / (sigma sd)^2
// Since lambda c_out^2 = 1, the weighted loss equals ||F - F*||^2 with the effective target
//   F* = (x0 - c_skip x) / c_out,
// which is what is computed: mean over all elements, gradient dL/dF = 2 (F - F*) / (N C S S).
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
/// Data parallel with replicas (DataParallel.swift). The noise is drawn for the whole batch first, so the random
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
        // Data parallel (DataParallel.swift): the model is worker 0, each replica one more.
        let models = [model] + replicas.prefix(DataParallel.activeWorkers(count: n, available: 1 + replicas.count) - 1)
        while gradients.count < models.count { gradients.append(Buffer()) }
        DataParallel.broadcast(model.store, to: models.dropFirst().map(\.store))
        let scale = 2 / Float(total)
        let work = ChunkWork(models: models, gradients: gradients, input: UnsafePointer(input), target: UnsafePointer(tgt),
                             timesteps: timesteps, labels: labels, per: per, scale: scale)
        let partial = DataParallel.map(count: n, workers: models.count) { w, chunk in work.run(w, chunk) }
        DataParallel.reduceGradients(models.dropFirst().map(\.store), into: model.store)
        return partial.reduce(0, +) / Double(total)
    }
}

/// What one worker needs for its chunk. Workers touch disjoint models and gradient buffers; input and target
/// are read-only here.
private struct ChunkWork {
    let models: [TrainableUNet], gradients: [Buffer]
    let input: UnsafePointer<Float>, target: UnsafePointer<Float>
    let timesteps: [Float], labels: [Int]?, per: Int, scale: Float

    /// Forward and backward of images `chunk` on worker w's model; returns the chunk's summed squared error.
    func run(_ w: Int, _ chunk: Range<Int>) -> Double {
        let lo = chunk.lowerBound, hi = chunk.upperBound, m = hi - lo, count = m * per
        guard m > 0 else { return 0 }
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
        return loss
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

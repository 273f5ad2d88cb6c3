// Consistency-model sampling, one step or a few (matches diffusers ConsistencyModelPipeline with
// CMStochasticIterativeScheduler, scheduling_consistency_models.py: Karras sigmas with rho 7 over
// num_train_timesteps, timestep = 250*ln(sigma), input scaled by 1/sqrt(sigma^2 + sigma_data^2), boundary-condition
// c_skip/c_out with epsilon = sigma_min, denoised clipped to [-1, 1], re-noised to the next sigma between steps).
//
// Limitations: custom timestep lists are not exposed (steps 1..num_train_timesteps pick them as diffusers does).
import Foundation

public struct ConsistencySchedulerConfig: Sendable, Equatable {
    public var numTrainTimesteps = 40
    public var sigmaMin: Double = 0.002
    public var sigmaMax: Double = 80
    public var sigmaData: Double = 0.5
    public var sNoise: Double = 1
    public var rho: Double = 7
    public var clipDenoised = true
    public init() {}
}

public struct ConsistencySchedule: Sendable {
    /// Sigmas of each step plus sigma_min at the end, float32 as diffusers stores them. (K + 1)
    public let sigmas: [Float]
    /// Model timesteps 250*ln(sigma), computed in double then cast, as the UNet sees them. (K)
    public let timesteps: [Float]

    /// CMStochasticIterativeScheduler.set_timesteps(num_inference_steps).
    public init(config c: ConsistencySchedulerConfig, steps: Int) {
        precondition(steps >= 1 && steps <= c.numTrainTimesteps, "steps must be 1...\(c.numTrainTimesteps)")
        let ratio = c.numTrainTimesteps / steps
        let indices = (0..<steps).map { Double($0 * ratio) }  // ascending = timesteps[::-1]
        let minInv = Foundation.pow(c.sigmaMin, 1 / c.rho), maxInv = Foundation.pow(c.sigmaMax, 1 / c.rho)
        let sigmas64 = indices.map { i -> Double in
            let ramp = i / Double(c.numTrainTimesteps - 1)
            return Foundation.pow(maxInv + ramp * (minInv - maxInv), c.rho)
        }
        timesteps = sigmas64.map { Float(Preconditioning.timestep(sigma: $0)) }
        sigmas = sigmas64.map { Float($0) } + [Float(c.sigmaMin)]
    }
}

/// One image to generate: its seed, and its class when the model is class-conditional.
public struct GenerationRequest: Sendable, Hashable {
    public var seed: UInt64
    public var label: Int?
    public init(seed: UInt64, label: Int? = nil) {
        self.seed = seed
        self.label = label
    }
}

public struct ConsistencySampler: Sampler {
    public static let className = "CMStochasticIterativeScheduler"
    public var config: ConsistencySchedulerConfig
    public init(config: ConsistencySchedulerConfig = .init()) { self.config = config }

    public init(config c: SchedulerConfig) throws {
        var s = ConsistencySchedulerConfig()
        s.numTrainTimesteps = try c.int("num_train_timesteps", default: 40, range: 2...10_000)
        s.sigmaMin = try c.double("sigma_min", default: 0.002)
        s.sigmaMax = try c.double("sigma_max", default: 80)
        s.sigmaData = try c.double("sigma_data", default: 0.5)
        s.sNoise = try c.double("s_noise", default: 1)
        s.rho = try c.double("rho", default: 7)
        s.clipDenoised = try c.bool("clip_denoised", default: true)
        guard s.sigmaMin > 0, s.sigmaMax > s.sigmaMin, s.sigmaData > 0, s.rho > 0 else {
            throw ModelLoadError(path: c.path, problem: "needs 0 < sigma_min < sigma_max, sigma_data > 0 and rho > 0")
        }
        config = s
    }

    /// One step is what a consistency model is for; a few more (re-noised) sometimes help. More than 4 is refused:
    /// quality does not improve and each step costs a full forward pass.
    public var stepRange: ClosedRange<Int> { 1...min(4, config.numTrainTimesteps) }
    public var defaultSteps: Int { 1 }
    public var description: String { "CMStochasticIterativeScheduler (consistency model)" }

    public var configDictionary: [String: Any] {
        ["_class_name": Self.className, "num_train_timesteps": config.numTrainTimesteps, "sigma_min": config.sigmaMin,
         "sigma_max": config.sigmaMax, "sigma_data": config.sigmaData, "s_noise": config.sNoise, "rho": config.rho,
         "clip_denoised": config.clipDenoised]
    }

    public func start(steps: Int) -> any SamplerRun { Run(config: config, schedule: ConsistencySchedule(config: config, steps: steps)) }

    struct Run: SamplerRun {
        let config: ConsistencySchedulerConfig
        let schedule: ConsistencySchedule
        var timesteps: [Float] { schedule.timesteps }
        var initNoiseSigma: Float { Float(config.sigmaMax) }

        func scaleModelInput(_ sample: Tensor, index k: Int) -> Tensor {
            let d = Preconditioning.inputDivisor(sigma: schedule.sigmas[k], sigmaData: Float(config.sigmaData))
            return Tensor(shape: sample.shape, data: sample.data.map { $0 / d })
        }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let sigma = schedule.sigmas[k], sigmaMin = Float(config.sigmaMin)
            let (cSkip, cOut) = Preconditioning.consistency(sigma: sigma, sigmaMin: sigmaMin, sigmaData: Float(config.sigmaData))
            var denoised = sample
            for j in 0..<denoised.count {
                var v = cOut * out.data[j] + cSkip * sample.data[j]
                if config.clipDenoised { v = min(max(v, -1), 1) }
                denoised.data[j] = v
            }
            guard schedule.timesteps.count > 1 else { return denoised }
            // Every step of a multi-step run draws noise, even the last, whose sigma_next = sigma_min gives it
            // weight 0: drawing it keeps each generator's stream in step with diffusers'.
            let sigmaNext = schedule.sigmas[k + 1]
            let sigmaHat = min(max(sigmaNext, sigmaMin), Float(config.sigmaMax))
            let noiseScale = (sigmaHat * sigmaHat - sigmaMin * sigmaMin).squareRoot() * Float(config.sNoise)
            let z = TorchGenerator.perImageNoise(&generators, like: denoised)
            for j in 0..<denoised.count { denoised.data[j] += z.data[j] * noiseScale }
            return denoised
        }
    }

    /// Kept for the trainers' call sites: images for requests with a (x, t, labels) model.
    public func sample(_ requests: [GenerationRequest], steps: Int, channels: Int, size: Int,
                       denoise: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let labels = GenerationRequest.labels(of: requests)
        return withoutActuallyEscaping(denoise) { d in
            sample(requests, steps: steps, channels: channels, size: size, model: { x, t in d(x, t, labels) })
        }
    }

    /// One step from given standard-normal noise (N, C, S, S) instead of seeds: what run-unet and the golden
    /// vectors use.
    public func sampleOneStep(noise: Tensor, labels: [Int]?,
                              denoise: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        var run = start(steps: 1)
        var none: [TorchGenerator] = []
        let x = Tensor(shape: noise.shape, data: noise.data.map { $0 * run.initNoiseSigma })
        return withoutActuallyEscaping(denoise) { d in
            Self.loop(&run, from: x, generators: &none, model: { x, t in d(x, t, labels) })
        }
    }
}

extension GenerationRequest {
    /// The class labels of a batch, or nil when any request has none (an unconditional model).
    public static func labels(of requests: [GenerationRequest]) -> [Int]? {
        requests.allSatisfy({ $0.label != nil }) ? requests.map { $0.label! } : nil
    }
}

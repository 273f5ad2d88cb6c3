// Consistency-model sampling, one step or a few (matches diffusers ConsistencyModelPipeline with
// CMStochasticIterativeScheduler: Karras sigmas with rho 7 over num_train_timesteps, timestep = 250*ln(sigma),
// input scaled by 1/sqrt(sigma^2 + sigma_data^2), boundary-condition c_skip/c_out with epsilon = sigma_min,
// denoised clipped to [-1, 1], re-noised to the next sigma between steps).
//
// Limitations: custom timestep lists are not exposed (steps 1..num_train_timesteps pick them as diffusers does).
// Each image draws its noise from its own generator seeded with its own seed, so an image is the one diffusers
// gives for batch_size=1 and generator=torch.manual_seed(seed), whatever batch it is computed in.
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
        timesteps = sigmas64.map { Float(1000 * 0.25 * Foundation.log($0 + 1e-44)) }
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

public struct ConsistencySampler: Sendable {
    public var config: ConsistencySchedulerConfig
    public init(config: ConsistencySchedulerConfig = .init()) { self.config = config }

    /// Generates images in model space [-1, 1]: (N, C, S, S). `denoise` runs the UNet on a batch.
    public func sample(_ requests: [GenerationRequest], steps: Int, channels: Int, size: Int,
                       denoise: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let schedule = ConsistencySchedule(config: config, steps: steps)
        let n = requests.count, per = channels * size * size
        var generators = requests.map { TorchGenerator(seed: $0.seed) }
        let labels: [Int]? = requests.allSatisfy({ $0.label != nil }) ? requests.map { $0.label! } : nil
        // prepare_latents: randn * init_noise_sigma (sigma_max).
        var sample = Tensor(zeros: [n, channels, size, size])
        let sigmaMax = Float(config.sigmaMax)
        for i in 0..<n {
            let noise = generators[i].randn(count: per)
            for j in 0..<per { sample.data[i * per + j] = noise[j] * sigmaMax }
        }
        let sigmaData = Float(config.sigmaData), sigmaMin = Float(config.sigmaMin)
        for (k, t) in schedule.timesteps.enumerated() {
            let sigma = schedule.sigmas[k]
            // scale_model_input
            let inScale = (sigma * sigma + sigmaData * sigmaData).squareRoot()
            let scaled = Tensor(shape: sample.shape, data: sample.data.map { $0 / inScale })
            let out = denoise(scaled, t, labels)
            // get_scalings_for_boundary_condition, in float32 like the 0-d sigma tensor.
            let sm = sigma - sigmaMin
            let cSkip = sigmaData * sigmaData / (sm * sm + sigmaData * sigmaData)
            let cOut = sm * sigmaData / (sigma * sigma + sigmaData * sigmaData).squareRoot()
            var denoised = sample
            for j in 0..<denoised.count {
                var v = cOut * out.data[j] + cSkip * sample.data[j]
                if config.clipDenoised { v = min(max(v, -1), 1) }
                denoised.data[j] = v
            }
            if schedule.timesteps.count > 1 {
                // Every step of a multi-step run draws noise, even the last, whose sigma_next = sigma_min gives it
                // weight 0: drawing it keeps each generator's stream in step with diffusers'.
                let sigmaNext = schedule.sigmas[k + 1]
                let sigmaHat = min(max(sigmaNext, sigmaMin), Float(config.sigmaMax))
                let noiseScale = (sigmaHat * sigmaHat - sigmaMin * sigmaMin).squareRoot() * Float(config.sNoise)
                for i in 0..<n {
                    let z = generators[i].randn(count: per)
                    for j in 0..<per { denoised.data[i * per + j] += z[j] * noiseScale }
                }
            }
            sample = denoised
        }
        return sample
    }
}

public enum ImageQuantizer {
    /// Model-space images (N, C, H, W) in [-1, 1] to uint8 (N, H, W, C): round(clamp(x/2 + 0.5, 0, 1) * 255),
    /// rounding half to even as torch.round. NaN becomes 0: clamping lets NaN through, and converting NaN to
    /// UInt8 traps in checked builds (the process dies) and is undefined under the release build's -Ounchecked.
    public static func toUInt8(_ images: Tensor) -> [UInt8] {
        let n = images.shape[0], c = images.shape[1], h = images.shape[2], w = images.shape[3]
        var out = [UInt8](repeating: 0, count: images.count)
        for i in 0..<n { for ch in 0..<c { for y in 0..<h { for x in 0..<w {
            let v = images.data[((i * c + ch) * h + y) * w + x]
            guard !v.isNaN else { continue }
            let u = min(max(v / 2 + 0.5, 0), 1) * 255
            out[((i * h + y) * w + x) * c + ch] = UInt8(u.rounded(.toNearestOrEven))
        } } } }
        return out
    }
}

extension ConsistencySampler {
    /// One step from given standard-normal noise (N, C, S, S) instead of seeds: what run-unet and the golden
    /// vectors use.
    public func sampleOneStep(noise: Tensor, labels: [Int]?,
                              denoise: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let schedule = ConsistencySchedule(config: config, steps: 1)
        let sigma = schedule.sigmas[0], sd = Float(config.sigmaData), smin = Float(config.sigmaMin)
        let sample = noise.data.map { $0 * Float(config.sigmaMax) }
        let inScale = (sigma * sigma + sd * sd).squareRoot()
        let out = denoise(Tensor(shape: noise.shape, data: sample.map { $0 / inScale }), schedule.timesteps[0], labels)
        let sm = sigma - smin
        let cSkip = sd * sd / (sm * sm + sd * sd), cOut = sm * sd / (sigma * sigma + sd * sd).squareRoot()
        return Tensor(shape: noise.shape, data: zip(out.data, sample).map { o, s in
            let v = cOut * o + cSkip * s
            return config.clipDenoised ? min(max(v, -1), 1) : v
        })
    }
}

// Deterministic EDM Heun sampling of a teacher denoiser (Karras et al. 2022, Algorithm 2 with S_churn = 0),
// the sampler openai/consistency_models uses for its EDM teachers (karras_sample with sampler="heun").
//
// The teacher is an EDM denoiser in UNet2DModel form, D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with the
// coefficients of Preconditioning.edm (c_noise = 250 ln(sigma), the consistency-model timestep). With N sigmas it
// costs 2N - 1 evaluations (18 sigmas -> 35); N = 1 is one Euler step, which returns D(x; sigma_max).
// The run interleaves the two halves of each Heun step as diffusers' HeunDiscreteScheduler does (its timesteps
// list repeats every sigma but the first), so it fits the common sampler loop.
//
// Config: diffusers has no EDM Heun scheduler, so Onestep writes `"_class_name": "OnestepEDMHeunScheduler"`, a
// name no diffusers loader will mistake for one of its own; files written before, naming "EDMHeunScheduler", are
// read too.
import Foundation

public struct EDMSchedulerConfig: Sendable, Equatable {
    public var sigmaMin: Double = 0.002
    public var sigmaMax: Double = 80
    public var sigmaData: Double = 0.5
    public var rho: Double = 7
    /// Sigmas used when a request does not say how many steps.
    public var defaultSteps = 18
    public init() {}

    /// Karras sigmas sigma_0 > ... > sigma_{N-1}, then 0. (N + 1)
    public func karrasSigmas(_ n: Int) -> [Double] {
        precondition(n >= 1, "need at least one sigma")
        let minInv = Foundation.pow(sigmaMin, 1 / rho), maxInv = Foundation.pow(sigmaMax, 1 / rho)
        let s = (0..<n).map { i -> Double in
            let ramp = n == 1 ? 0 : Double(i) / Double(n - 1)
            return Foundation.pow(maxInv + ramp * (minInv - maxInv), rho)
        }
        return s + [0]
    }
}

public struct EDMHeunSampler: Sampler {
    public static let className = "OnestepEDMHeunScheduler"
    public static let legacyClassNames = ["EDMHeunScheduler"]
    /// Most sigmas a request may ask for.
    public static let maxSigmas = 64
    public var config: EDMSchedulerConfig
    public init(config: EDMSchedulerConfig = .init()) { self.config = config }

    public init(config c: SchedulerConfig) throws {
        var s = EDMSchedulerConfig()
        s.sigmaMin = try c.double("sigma_min", default: 0.002)
        s.sigmaMax = try c.double("sigma_max", default: 80)
        s.sigmaData = try c.double("sigma_data", default: 0.5)
        s.rho = try c.double("rho", default: 7)
        s.defaultSteps = try c.int("num_inference_steps", default: 18, range: 1...Self.maxSigmas)
        guard s.sigmaMin > 0, s.sigmaMax > s.sigmaMin, s.sigmaData > 0, s.rho > 0 else {
            throw ModelLoadError(path: c.path, problem: "needs 0 < sigma_min < sigma_max, sigma_data > 0 and rho > 0")
        }
        config = s
    }

    public var stepRange: ClosedRange<Int> { 1...Self.maxSigmas }
    public var defaultSteps: Int { config.defaultSteps }
    public var description: String { "OnestepEDMHeunScheduler (EDM teacher, Heun on Karras sigmas)" }

    public var configDictionary: [String: Any] {
        ["_class_name": Self.className, "sigma_min": config.sigmaMin, "sigma_max": config.sigmaMax,
         "sigma_data": config.sigmaData, "rho": config.rho, "num_inference_steps": config.defaultSteps]
    }

    public func start(steps: Int) -> any SamplerRun { Run(config: config, sigmas: config.karrasSigmas(steps)) }

    struct Run: SamplerRun {
        let config: EDMSchedulerConfig
        /// (N + 1), the last 0.
        let sigmas: [Double]
        /// For each model call: the step it belongs to and whether it is the Heun correction.
        let calls: [(step: Int, second: Bool)]
        // First half's state, for the correction.
        var x = Tensor(zeros: [0]), slope = Tensor(zeros: [0])

        init(config: EDMSchedulerConfig, sigmas: [Double]) {
            self.config = config
            self.sigmas = sigmas
            var c: [(Int, Bool)] = []
            for i in 0..<(sigmas.count - 1) {
                c.append((i, false))
                if sigmas[i + 1] > 0 { c.append((i, true)) }
            }
            calls = c
        }

        func sigma(_ k: Int) -> Double { calls[k].second ? sigmas[calls[k].step + 1] : sigmas[calls[k].step] }
        var timesteps: [Float] { calls.indices.map { Float(Preconditioning.edm(sigma: sigma($0), sigmaData: config.sigmaData).cNoise) } }
        var initNoiseSigma: Float { Float(sigmas[0]) }

        func scaleModelInput(_ sample: Tensor, index k: Int) -> Tensor {
            let cIn = Float(Preconditioning.edm(sigma: sigma(k), sigmaData: config.sigmaData).cIn)
            return Tensor(shape: sample.shape, data: sample.data.map { $0 * cIn })
        }

        mutating func step(_ f: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let s = sigma(k), sc = Preconditioning.edm(sigma: s, sigmaData: config.sigmaData)
            let cSkip = Float(sc.cSkip), cOut = Float(sc.cOut)
            // d = (x - D(x; sigma)) / sigma, D = c_skip x + c_out F.
            let d = zip(sample.data, f.data).map { x, f in (x - (cSkip * x + cOut * f)) / Float(s) }
            let i = calls[k].step
            let h = Float(sigmas[i + 1] - sigmas[i])
            var next: Tensor
            if !calls[k].second {
                x = sample
                slope = Tensor(shape: sample.shape, data: d)
                next = Tensor(shape: sample.shape, data: zip(sample.data, d).map { $0 + h * $1 })
            } else {
                // Heun correction: the mean of the slopes at sigma_i and sigma_{i+1}, from the step's start.
                let avg = zip(slope.data, d).map { ($0 + $1) / 2 }
                next = Tensor(shape: sample.shape, data: zip(x.data, avg).map { $0 + h * $1 })
            }
            if k == calls.count - 1 { next.data = next.data.map { min(max($0, -1), 1) } }
            return next
        }
    }

    /// Images in model space, clipped to [-1, 1]: (N, C, S, S). Noise per image from its own seed, as the
    /// consistency sampler draws it, so teacher and student start from the same x_T for the same seed.
    public func sample(_ requests: [GenerationRequest], steps: Int, channels: Int, size: Int,
                       denoise model: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let labels = GenerationRequest.labels(of: requests)
        return sample(requests, steps: steps, channels: channels, size: size, model: { x, t in model(x, t, labels) })
    }
}

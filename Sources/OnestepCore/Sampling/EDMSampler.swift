// Deterministic EDM Heun sampling of a teacher denoiser (Karras et al. 2022, Algorithm 2 with S_churn = 0),
// the sampler openai/consistency_models uses for its EDM teachers (karras_sample with sampler="heun").
//
// The teacher is an EDM denoiser in UNet2DModel form: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with
//   c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
//   c_noise = 250 ln(sigma)  (the consistency-model timestep, so teacher and student share the time embedding).
// With N sigmas it costs 2N - 1 evaluations (18 sigmas -> 35); N = 1 is one Euler step, which returns D(x; sigma_max).
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

public enum EDM {
    /// EDM preconditioning coefficients for one sigma.
    public static func scalings(sigma: Double, sigmaData sd: Double) -> (cSkip: Double, cOut: Double, cIn: Double, cNoise: Double) {
        let v = sigma * sigma + sd * sd
        return (sd * sd / v, sigma * sd / v.squareRoot(), 1 / v.squareRoot(), 250 * Foundation.log(sigma))
    }

    /// D(x; sigma) for a batch at one sigma. x (N, C, H, W).
    public static func denoise(_ x: Tensor, sigma: Double, sigmaData: Double, labels: [Int]?,
                               model: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let s = scalings(sigma: sigma, sigmaData: sigmaData)
        let scaled = Tensor(shape: x.shape, data: x.data.map { $0 * Float(s.cIn) })
        let f = model(scaled, Float(s.cNoise), labels)
        let cSkip = Float(s.cSkip), cOut = Float(s.cOut)
        return Tensor(shape: x.shape, data: zip(x.data, f.data).map { cSkip * $0 + cOut * $1 })
    }
}

public struct EDMHeunSampler: Sendable {
    public var config: EDMSchedulerConfig
    public init(config: EDMSchedulerConfig = .init()) { self.config = config }

    /// Images in model space, clipped to [-1, 1]: (N, C, S, S). Noise per image from its own seed, as the
    /// consistency sampler draws it, so teacher and student start from the same x_T for the same seed.
    public func sample(_ requests: [GenerationRequest], steps: Int, channels: Int, size: Int,
                       denoise model: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let sigmas = config.karrasSigmas(steps)
        let per = channels * size * size, n = requests.count
        let labels: [Int]? = requests.allSatisfy({ $0.label != nil }) ? requests.map { $0.label! } : nil
        var x = Tensor(zeros: [n, channels, size, size])
        for (i, r) in requests.enumerated() {
            var g = TorchGenerator(seed: r.seed)
            let noise = g.randn(count: per)
            for j in 0..<per { x.data[i * per + j] = noise[j] * Float(sigmas[0]) }
        }
        for i in 0..<steps {
            let (s, sNext) = (sigmas[i], sigmas[i + 1])
            let d0 = EDM.denoise(x, sigma: s, sigmaData: config.sigmaData, labels: labels, model: model)
            // d = (x - D) / sigma; Euler to sNext.
            let h = Float(sNext - s)
            var slope = Tensor(shape: x.shape, data: zip(x.data, d0.data).map { ($0 - $1) / Float(s) })
            var next = Tensor(shape: x.shape, data: zip(x.data, slope.data).map { $0 + h * $1 })
            if sNext > 0 {
                // Heun correction with the slope at sNext.
                let d1 = EDM.denoise(next, sigma: sNext, sigmaData: config.sigmaData, labels: labels, model: model)
                let slope2 = zip(next.data, d1.data).map { ($0 - $1) / Float(sNext) }
                slope = Tensor(shape: x.shape, data: zip(slope.data, slope2).map { ($0 + $1) / 2 })
                next = Tensor(shape: x.shape, data: zip(x.data, slope.data).map { $0 + h * $1 })
            }
            x = next
        }
        x.data = x.data.map { min(max($0, -1), 1) }
        return x
    }
}

// The one place the denoiser parameterizations are written down, shared by samplers and trainers:
//   EDM (Karras et al. 2022, table 1): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise),
//     c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
//     c_noise = 250 ln(sigma) (the consistency-model timestep, so an EDM teacher and its consistency student share
//     the time embedding);
//   consistency boundary condition (Song et al. 2023; diffusers CMStochasticIterativeScheduler
//     get_scalings_for_boundary_condition): c_skip = sd^2/((sigma-sigma_min)^2+sd^2),
//     c_out = (sigma-sigma_min) sd/sqrt(sigma^2+sd^2), so that D(x; sigma_min) = x;
//   variance-preserving <-> variance-exploding: sigma = sqrt((1 - alphas_cumprod)/alphas_cumprod),
//     alphas_cumprod = 1/(sigma^2 + 1) (diffusers Euler/DPM-Solver: alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma alpha_t).
import Foundation

public enum Preconditioning {
    /// EDM coefficients for one sigma, in double.
    public struct Scalings: Sendable, Equatable {
        public var cSkip: Double
        public var cOut: Double
        public var cIn: Double
        public var cNoise: Double
    }

    public static func edm(sigma: Double, sigmaData sd: Double) -> Scalings {
        let v = sigma * sigma + sd * sd
        return Scalings(cSkip: sd * sd / v, cOut: sigma * sd / v.squareRoot(), cIn: 1 / v.squareRoot(),
                        cNoise: timestep(sigma: sigma))
    }

    /// Consistency-model timestep 1000 * 0.25 * ln(sigma + 1e-44) (diffusers sigma_to_t), computed in double.
    public static func timestep(sigma: Double) -> Double { 1000 * 0.25 * Foundation.log(sigma + 1e-44) }

    /// Consistency-model coefficients in double (the trainers' form): the boundary-condition c_skip/c_out and EDM's
    /// c_in/c_noise, so f(x, sigma_min) = x.
    public static func consistency(sigma: Double, sigmaMin: Double, sigmaData sd: Double) -> Scalings {
        let sm = sigma - sigmaMin, v = sigma * sigma + sd * sd
        return Scalings(cSkip: sd * sd / (sm * sm + sd * sd), cOut: sm * sd / v.squareRoot(), cIn: 1 / v.squareRoot(),
                        cNoise: timestep(sigma: sigma))
    }

    /// Consistency boundary condition in float32, as diffusers computes it on the 0-d sigma tensor.
    public static func consistency(sigma: Float, sigmaMin: Float, sigmaData sd: Float) -> (cSkip: Float, cOut: Float) {
        let sm = sigma - sigmaMin
        return (sd * sd / (sm * sm + sd * sd), sm * sd / (sigma * sigma + sd * sd).squareRoot())
    }

    /// LCM's discrete boundary condition (diffusers LCMScheduler.get_scalings_for_boundary_condition_discrete):
    /// sigma_data 0.5 and timestep * timestep_scaling in place of sigma; unlike the consistency form, c_out has no
    /// sigma_data factor. float32, as diffusers computes it on the timestep tensor.
    public static func lcm(timestep t: Int, scaling: Float) -> (cSkip: Float, cOut: Float) {
        let s = Float(t) * scaling, sd: Float = 0.5
        return (sd * sd / (s * s + sd * sd), s / (s * s + sd * sd).squareRoot())
    }

    /// The input scale 1/sqrt(sigma^2 + sd^2) is applied as a division by this, as diffusers scale_model_input does.
    public static func inputDivisor(sigma: Float, sigmaData sd: Float) -> Float { (sigma * sigma + sd * sd).squareRoot() }

    /// sigma = sqrt((1 - a) / a), float32.
    public static func sigma(alphaCumprod a: Float) -> Float { ((1 - a) / a).squareRoot() }

    /// alphas_cumprod of a sigma: 1 / (sigma^2 + 1).
    public static func alphaCumprod(sigma: Float) -> Float { 1 / (sigma * sigma + 1) }

    /// (alpha_t, sigma_t) = (1/sqrt(sigma^2+1), sigma alpha_t): diffusers _sigma_to_alpha_sigma_t.
    public static func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let a = 1 / (sigma * sigma + 1).squareRoot()
        return (a, sigma * a)
    }
}

/// Kept for the trainers' call sites: EDM denoising of a batch.
public enum EDM {
    /// EDM preconditioning coefficients for one sigma (Preconditioning.edm as a tuple).
    public static func scalings(sigma: Double, sigmaData sd: Double) -> (cSkip: Double, cOut: Double, cIn: Double, cNoise: Double) {
        let s = Preconditioning.edm(sigma: sigma, sigmaData: sd)
        return (s.cSkip, s.cOut, s.cIn, s.cNoise)
    }

    /// D(x; sigma) for a batch at one sigma. x (N, C, H, W).
    public static func denoise(_ x: Tensor, sigma: Double, sigmaData: Double, labels: [Int]?,
                               model: (_ x: Tensor, _ timestep: Float, _ labels: [Int]?) -> Tensor) -> Tensor {
        let s = Preconditioning.edm(sigma: sigma, sigmaData: sigmaData)
        let scaled = Tensor(shape: x.shape, data: x.data.map { $0 * Float(s.cIn) })
        let f = model(scaled, Float(s.cNoise), labels)
        let cSkip = Float(s.cSkip), cOut = Float(s.cOut)
        return Tensor(shape: x.shape, data: zip(x.data, f.data).map { cSkip * $0 + cOut * $1 })
    }
}

// A diffusers DDPM-family UNet2DModel (epsilon or v_prediction, DDPMScheduler / DDIMScheduler alphas_cumprod) as
// an EDM denoiser in the variance-exploding sigma of the DDPM's own noise levels.
// Matches k-diffusion k_diffusion/external.py (DiscreteSchedule.sigma_to_t with quantize=False,
// DiscreteEpsDDPMDenoiser, DiscreteVDDPMDenoiser; sigma_data = 1):
//   sigma_t = sqrt((1 - abar_t) / abar_t)                       t = 0 .. T-1, ascending
//   t(sigma) = linear interpolation of the index t in log sigma_t, clamped to [0, T-1]
//   c_in = 1 / sqrt(sigma^2 + 1)            (x_ddpm = sqrt(abar) (x0 + sigma eps) = c_in x)
//   epsilon:       D(x; sigma) = x - sigma * eps(c_in x, t(sigma))
//   v_prediction:  D(x; sigma) = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v(c_in x, t(sigma))
//   sample:        D(x; sigma) = x0(c_in x, t(sigma))
// Checked against diffusers' UNet2DModel with the scheduler's alphas_cumprod by DDPMTeacherTests
// (golden: scripts/golden/make_ddpm_teacher_golden.py).
import Foundation
import OnestepCore

public struct DiscreteDDPMTeacher: TeacherDenoiser {
    public let model: UNet2DModel
    public let prediction: PredictionType
    /// log sigma_t, t = 0 ..< T (ascending).
    public let logSigmas: [Double]
    public let className: String

    public init(model: UNet2DModel, alphasCumprod: [Float], prediction: PredictionType, className: String = "DDPMScheduler") throws {
        guard alphasCumprod.count >= 2, alphasCumprod.allSatisfy({ $0 > 0 && $0 < 1 }) else {
            throw TeacherLoadError("the scheduler's alphas_cumprod must be \(alphasCumprod.count < 2 ? "at least 2 values" : "strictly between 0 and 1"); check its betas")
        }
        // As k-diffusion computes them: in float32 from the float32 alphas_cumprod, then the log.
        let ls = alphasCumprod.map { Double(Foundation.log(((1 - $0) / $0).squareRoot())) }
        guard zip(ls, ls.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw TeacherLoadError("the scheduler's alphas_cumprod are not decreasing; a DDPM teacher needs increasing noise with t")
        }
        (self.model, self.prediction, self.logSigmas, self.className) = (model, prediction, ls, className)
    }

    public var sigmaRange: ClosedRange<Double> { Foundation.exp(logSigmas[0])...Foundation.exp(logSigmas[logSigmas.count - 1]) }
    public var description: String {
        String(format: "%@ %@, %d timesteps, sigma %.4g..%.4g", className, prediction.rawValue, logSigmas.count, sigmaRange.lowerBound, sigmaRange.upperBound)
    }

    /// k-diffusion DiscreteSchedule.sigma_to_t (quantize=False): the continuous timestep of a sigma.
    public func timestep(sigma: Double) -> Double {
        let l = Foundation.log(sigma), n = logSigmas.count
        // low = the last index with log sigma_t <= log sigma (0 if none), at most T-2.
        var low = 0
        for (k, v) in logSigmas.enumerated() where l - v >= 0 { low = k }
        low = min(low, n - 2)
        let lo = logSigmas[low], hi = logSigmas[low + 1]
        let w = min(max((lo - l) / (lo - hi), 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    public func preconditioning(sigma s: Double) -> TeacherScalings {
        let cIn = 1 / (s * s + 1).squareRoot()
        switch prediction {
        case .epsilon: return TeacherScalings(cSkip: 1, cOut: -s, cIn: cIn, timestep: timestep(sigma: s))
        case .vPrediction: return TeacherScalings(cSkip: 1 / (s * s + 1), cOut: -s * cIn, cIn: cIn, timestep: timestep(sigma: s))
        case .sample: return TeacherScalings(cSkip: 0, cOut: 1, cIn: cIn, timestep: timestep(sigma: s))
        }
    }

    public func denoise(_ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>) {
        let b = sigmas.count, cfg = model.config, per = cfg.inChannels * cfg.sampleSize * cfg.sampleSize
        var input = Tensor(zeros: [b, cfg.inChannels, cfg.sampleSize, cfg.sampleSize])  // (B, C, S, S)
        var t = [Float](repeating: 0, count: b)
        for i in 0..<b {
            t[i] = Float(timestep(sigma: sigmas[i]))
            let cIn = Float(1 / (sigmas[i] * sigmas[i] + 1).squareRoot())
            for j in 0..<per { input.data[i * per + j] = cIn * x[i * per + j] }
        }
        let f = model.forwardBatched(input, timesteps: t, classLabels: labels, pool: .forCurrentThread)  // (B, C, S, S)
        for i in 0..<b {
            let s = sigmas[i]
            let cSkip: Float, cOut: Float
            switch prediction {
            case .epsilon: (cSkip, cOut) = (1, Float(-s))
            case .vPrediction: (cSkip, cOut) = (Float(1 / (s * s + 1)), Float(-s / (s * s + 1).squareRoot()))
            case .sample: (cSkip, cOut) = (0, 1)
            }
            for j in (i * per)..<((i + 1) * per) { out[j] = cSkip * x[j] + cOut * f.data[j] }
        }
    }
}

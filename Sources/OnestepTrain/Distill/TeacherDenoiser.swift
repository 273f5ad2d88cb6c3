// The teacher as a distillation method calls it: an EDM denoiser D(x; sigma) on per-image sigmas, whatever the
// teacher's own parameterisation (Onestep's EDM teachers: EDMTeacher; diffusers DDPM-family UNet2DModels:
// DiscreteDDPMTeacher), plus the Heun step of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
// that consistency distillation takes with it (Karras et al. 2022, Algorithm 1, one step).
//
// Legend: B batch, P = C*S*S values per image.
import Foundation
import OnestepCore

public protocol TeacherDenoiser: Sendable {
    /// The inference network (its config is the student's when the student is the teacher's copy).
    var model: UNet2DModel { get }
    /// The sigmas the teacher was trained on: a student's sigma range is clamped to this.
    var sigmaRange: ClosedRange<Double> { get }
    /// What the teacher is, for the run's first lines (e.g. "DDPMScheduler epsilon, 1000 timesteps").
    var description: String { get }
    /// D(x_i; sigma_i) for a batch x (B, P), written into `out` (B, P). Labels (B) for class-conditional teachers.
    func denoise(_ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>)
    /// The teacher's parameterisation at one sigma: D(x; sigma) = cSkip x + cOut F(cIn x, timestep). A network
    /// initialised as the teacher's copy (DMD's fake score) is trained in it, so it starts equal to the teacher.
    func preconditioning(sigma: Double) -> TeacherScalings
}

public struct TeacherScalings: Sendable {
    public var cSkip: Double, cOut: Double, cIn: Double, timestep: Double
    public init(cSkip: Double, cOut: Double, cIn: Double, timestep: Double) { (self.cSkip, self.cOut, self.cIn, self.timestep) = (cSkip, cOut, cIn, timestep) }
}

extension TeacherDenoiser {
    /// One Heun step of dx/dsigma = (x - D(x; sigma)) / sigma from `from` to `to` (both > 0), per image.
    /// x and out (B, P).
    public func heunStep(_ x: UnsafePointer<Float>, from: [Double], to: [Double], labels: [Int]?, into out: UnsafeMutablePointer<Float>) {
        let b = from.count, per = model.config.inChannels * model.config.sampleSize * model.config.sampleSize
        let d0 = UnsafeMutablePointer<Float>.allocate(capacity: b * per), d1 = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        let euler = UnsafeMutablePointer<Float>.allocate(capacity: b * per)
        defer { d0.deallocate(); d1.deallocate(); euler.deallocate() }
        denoise(x, sigmas: from, labels: labels, into: d0)
        for i in 0..<b {
            let h = Float(to[i] - from[i]), inv = Float(1 / from[i])
            for j in (i * per)..<((i + 1) * per) { euler[j] = x[j] + h * (x[j] - d0[j]) * inv }
        }
        denoise(euler, sigmas: to, labels: labels, into: d1)
        for i in 0..<b {
            let h = Float(to[i] - from[i]), inv0 = Float(1 / from[i]), inv1 = Float(1 / to[i])
            for j in (i * per)..<((i + 1) * per) {
                let slope = ((x[j] - d0[j]) * inv0 + (euler[j] - d1[j]) * inv1) / 2
                out[j] = x[j] + h * slope
            }
        }
    }

    /// The student's EDM schedule with its sigma range clamped to the teacher's (a DDPM teacher with linear betas
    /// 1e-4..0.02 knows sigmas 0.0100..157; a student asking for 0.002 would query it where it never learned).
    public func clamped(_ schedule: EDMSchedulerConfig) -> EDMSchedulerConfig {
        var s = schedule
        s.sigmaMin = min(max(s.sigmaMin, sigmaRange.lowerBound), sigmaRange.upperBound)
        s.sigmaMax = max(min(s.sigmaMax, sigmaRange.upperBound), s.sigmaMin)
        return s
    }
}

/// Loads a teacher folder as a TeacherDenoiser: an OnestepEDMHeunScheduler folder (onestep-distill teacher) as
/// EDMTeacher, a DDPM-family one (DDPMScheduler, its legacy name GaussianDDPMScheduler, DDIMScheduler,
/// DPMSolverMultistepScheduler; bare or pipeline layout) as DiscreteDDPMTeacher. Other schedulers are refused.
public enum TeacherLoader {
    public struct Loaded: Sendable {
        public let pipeline: ImagePipeline
        public let denoiser: any TeacherDenoiser
        /// The Onestep EDM schedule of an EDM teacher (nil for a DDPM-family teacher).
        public let edmSchedule: EDMSchedulerConfig?
    }

    public static func load(path: String) throws -> Loaded {
        let p = try ImagePipeline.load(path: path)
        return try wrap(p, path: path)
    }

    public static func wrap(_ p: ImagePipeline, path: String) throws -> Loaded {
        if let edm = p.sampler as? EDMHeunSampler {
            return Loaded(pipeline: p, denoiser: EDMTeacher(model: p.model, sigmaData: edm.config.sigmaData), edmSchedule: edm.config)
        }
        guard let (schedule, prediction) = ddpmFamilySchedule(of: p.sampler) else {
            throw TeacherLoadError("\(path): its scheduler is \(type(of: p.sampler).className); a teacher needs OnestepEDMHeunScheduler (onestep-distill teacher) or a DDPM-family scheduler (DDPMScheduler, GaussianDDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler) with the UNet's training betas")
        }
        let teacher = try DiscreteDDPMTeacher(model: p.model, alphasCumprod: schedule.alphasCumprod, prediction: prediction,
                                              className: type(of: p.sampler).className)
        return Loaded(pipeline: p, denoiser: teacher, edmSchedule: nil)
    }
}

public struct TeacherLoadError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The training schedule and prediction type of a DDPM-family sampler (DDPM / GaussianDDPM, DDIM,
/// DPMSolverMultistep); nil for any other scheduler.
func ddpmFamilySchedule(of sampler: any Sampler) -> (DiscreteSchedule, PredictionType)? {
    switch sampler {
    case let s as DDPMSampler: return (s.schedule, s.prediction)
    case let s as DDIMSampler: return (s.schedule, s.prediction)
    case let s as DPMSolverMultistepSampler: return (s.schedule, s.prediction)
    default: return nil
    }
}

// The one-step student's output parameterisation, chosen by the teacher and shared by every method that starts the
// student from the teacher's weights (cd, ect, dmd). The trainers work in the variance-exploding sigma of
// TeacherDenoiser (x = x0 + sigma z); each form writes the student as
//   f(x, sigma) = cSkip(sigma) x + cOut(sigma) F(cIn(sigma) x; timestep(sigma))
// and names the diffusers scheduler that samples the exported folder the same way.
//
// consistency (an Onestep EDM teacher; diffusers CMStochasticIterativeScheduler): Preconditioning.consistency,
//   the EDM c_in / c_noise = 250 ln sigma of the teacher with the boundary-condition c_skip / c_out.
//
// latentConsistency (a diffusers DDPM-family teacher; diffusers LCMScheduler, Luo et al. 2023): the network keeps
//   the teacher's own input, timestep and output (epsilon / v / sample at the DDPM timestep t), inside LCM's
//   discrete boundary condition (scheduling_lcm.py step(), get_scalings_for_boundary_condition_discrete):
//     x_vp = sqrt(abar_t) x = x / sqrt(sigma^2 + 1)          (sigma = sqrt((1 - abar_t) / abar_t))
//     x0_pred = (x_vp - sqrt(1 - abar_t) eps) / sqrt(abar_t) = the teacher form's D(x; sigma) = tSkip x + tOut F
//     f = c_skip(t) x_vp + c_out(t) x0_pred,  c_skip = sd^2 / ((10 t)^2 + sd^2), c_out = 10 t / sqrt((10 t)^2 + sd^2)
//   so cSkip = c_skip(t) cIn + c_out(t) tSkip, cOut = c_out(t) tOut, with t = t(sigma) interpolated in log sigma as
//   DiscreteDDPMTeacher does (integer at the schedule's own sigmas, which is where LCMScheduler samples).
//   A copy of the teacher is then already the teacher's one-step x0 prediction at sigma_max (c_skip(t) ~ 1e-8),
//   and f(x, sigma_min) = c_in x ~ x (t = 0: c_skip 1, c_out 0; c_in = sqrt(abar_0) = 0.99995 for linear betas).
//
//   The terminal timestep. LCMScheduler takes its one step at t = K-1 of its num_train_timesteps K. For an epsilon
//   teacher x0_pred's error is the eps error times sqrt(1 - abar_t) / sqrt(abar_t) = sigma_t: 157 at t = 999 of the
//   DDPM linear 1e-4..0.02 schedule (shapes16-ddpm: 5% eps RMSE -> x0 RMSE 8.1, 16x the error of the mean image),
//   against 14.6 at t = 999 of Stable Diffusion's scaled_linear 0.00085..0.012 schedule that LCM was made for. So
//   the student's schedule is the teacher's first K timesteps (LCMScheduler config: num_train_timesteps K and
//   trained_betas = the teacher's first K betas, so alphas_cumprod are the teacher's bit for bit), K by default
//   the largest multiple of original_inference_steps with sigma_{K-1} <= 15 (LCM's own terminal noise level, 14.6):
//   700 for the linear schedule (sigma 11.94). The 1-step sample then starts from pure noise at a level where the
//   data still has 8% of the amplitude (abar 0.0069; SD's LCM: 0.0047), as LCM and SD-Turbo do at t = 999.
import Foundation
import OnestepCore

/// The LCM form of a DDPM-family teacher: its alphas_cumprod, prediction type and scheduler config.
public struct LatentConsistencyForm: @unchecked Sendable {
    // @unchecked: `teacherConfig` holds JSONSerialization values, never mutated.
    /// The teacher's schedule in sigma (t(sigma), the eps / v / sample scalings); its network is not called here.
    public let ddpm: DiscreteDDPMTeacher
    public let alphasCumprod: [Float]
    public let prediction: PredictionType
    /// LCMScheduler's original_inference_steps (the skipped timesteps k-1, 2k-1, ... with k = T / this).
    public let originalInferenceSteps: Int
    public let timestepScaling: Double = 10, sigmaData: Double = 0.5
    /// The teacher's scheduler config values (betas, num_train_timesteps), for the exported LCMScheduler config.
    let teacherConfig: [String: Any]
    /// The teacher's num_train_timesteps T and its betas (T).
    public let teacherTimesteps: Int
    let teacherBetas: [Float]
    /// The default bound on the student's sigma_max: LCM's terminal sigma on Stable Diffusion's schedule
    /// (scaled_linear 0.00085..0.012, t = 999: 14.61), rounded up.
    public static let defaultTerminalSigma = 15.0

    /// - Parameter timesteps: the student's num_train_timesteps K <= T (its one step at t = K-1); nil: the largest
    ///   multiple of original_inference_steps whose sigma_{K-1} <= `defaultTerminalSigma` (at least one multiple).
    /// - Throws: TeacherLoadError when the sampler is not DDPM-family, K is out of range, or the betas cannot be
    ///   restated for LCMScheduler so that its alphas_cumprod equal the teacher's bit for bit.
    public init(teacher sampler: any Sampler, model: UNet2DModel, originalInferenceSteps: Int = 50, timesteps: Int? = nil) throws {
        guard let (schedule, prediction) = ddpmFamilySchedule(of: sampler) else {
            throw TeacherLoadError("an LCM-form student needs a DDPM-family teacher scheduler, not \(type(of: sampler).className)")
        }
        let t = schedule.numTrainTimesteps, orig = min(originalInferenceSteps, t)
        let sigmas = schedule.alphasCumprod.map { Double(((1 - $0) / $0).squareRoot()) }
        let k = timesteps ?? max(orig, Array(stride(from: orig, through: t, by: orig)).last { sigmas[$0 - 1] <= Self.defaultTerminalSigma } ?? orig)
        guard (orig...t).contains(k) else {
            throw TeacherLoadError("the student's num_train_timesteps (--lcm-timesteps) \(k) must lie in \(orig)...\(t) (original_inference_steps ... the teacher's)")
        }
        let ac = Array(schedule.alphasCumprod.prefix(k))
        ddpm = try DiscreteDDPMTeacher(model: model, alphasCumprod: ac, prediction: prediction)
        (alphasCumprod, self.prediction, self.originalInferenceSteps) = (ac, prediction, orig)
        (teacherTimesteps, teacherBetas) = (t, schedule.betas)
        teacherConfig = sampler.configDictionary
        let check = try lcmSampler()
        guard check.schedule.alphasCumprod == alphasCumprod else {
            throw TeacherLoadError("the teacher's betas read as LCMScheduler give other alphas_cumprod; the student could not be sampled as trained")
        }
    }

    /// The LCMScheduler config of the student folder: the teacher's betas (its first K as trained_betas when K < T)
    /// and prediction type, clip_sample false (the student was trained on the unclipped f), timestep_scaling 10.
    public func schedulerDictionary() throws -> [String: Any] {
        let c = SchedulerConfig(values: teacherConfig, path: "the teacher's scheduler config")
        var d: [String: Any] = [
            "_class_name": LCMSampler.className,
            "num_train_timesteps": try c.int("num_train_timesteps", default: 1000, range: 2...100_000, aliases: ["timesteps"]),
            // DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler defaults (LCMScheduler's differ: written out).
            "beta_start": try c.double("beta_start", default: 0.0001, valid: { $0 >= 0 && $0 < 1 }, expect: "a number in [0, 1)"),
            "beta_end": try c.double("beta_end", default: 0.02, valid: { $0 >= 0 && $0 < 1 }, expect: "a number in [0, 1)"),
            "beta_schedule": try c.string("beta_schedule", default: "linear", allowed: ["linear", "scaled_linear", "squaredcos_cap_v2"]),
            "prediction_type": prediction.rawValue,
            "original_inference_steps": originalInferenceSteps,
            "timestep_scaling": timestepScaling,
            "clip_sample": false, "clip_sample_range": 1.0, "thresholding": false, "dynamic_thresholding_ratio": 0.995,
            "sample_max_value": 1.0, "set_alpha_to_one": true, "steps_offset": 0, "timestep_spacing": "leading",
            "rescale_betas_zero_snr": false,
        ]
        d["trained_betas"] = try c.doubles("trained_betas") ?? NSNull()
        if alphasCumprod.count < teacherTimesteps {
            d["num_train_timesteps"] = alphasCumprod.count
            d["trained_betas"] = teacherBetas.prefix(alphasCumprod.count).map { Double($0) }
        }
        return d
    }

    func lcmSampler() throws -> LCMSampler {
        try LCMSampler(config: SchedulerConfig(values: schedulerDictionary(), path: "the student's LCMScheduler config", className: LCMSampler.className))
    }

    /// The first timestep of LCMScheduler's 1-step run: original * (T / original) - 1.
    public var firstTimestep: Int { originalInferenceSteps * (alphasCumprod.count / originalInferenceSteps) - 1 }
    /// The student's sigma range: the schedule's sigma at t = 0 (boundary) .. at the 1-step timestep.
    public var sigmaMin: Double { Foundation.exp(ddpm.logSigmas[0]) }
    public var sigmaMax: Double { Foundation.exp(ddpm.logSigmas[firstTimestep]) }

    /// LCM's discrete c_skip / c_out at a continuous timestep, in double.
    public func boundary(timestep t: Double) -> (cSkip: Double, cOut: Double) {
        let s = t * timestepScaling, v = s * s + sigmaData * sigmaData
        return (sigmaData * sigmaData / v, s / v.squareRoot())
    }
}

public enum StudentParameterization: Sendable {
    /// Song et al. 2023 / CMStochasticIterativeScheduler, sigma_min and sigma_data of the schedule.
    case consistency(EDMSchedulerConfig)
    /// LCMScheduler around a DDPM-family teacher's own form.
    case latentConsistency(LatentConsistencyForm)

    /// The form a teacher's students take: consistency for an Onestep EDM teacher (its `schedule`), the LCM form for
    /// a diffusers DDPM-family teacher.
    /// `lcmTimesteps`: the LCM form's num_train_timesteps K (nil: LatentConsistencyForm's default).
    public static func forTeacher(_ loaded: TeacherLoader.Loaded, schedule: EDMSchedulerConfig, lcmTimesteps: Int? = nil) throws -> StudentParameterization {
        if loaded.edmSchedule != nil { return .consistency(schedule) }
        return .latentConsistency(try LatentConsistencyForm(teacher: loaded.pipeline.sampler, model: loaded.pipeline.model, timesteps: lcmTimesteps))
    }

    /// f(x, sigma) = cSkip x + cOut F(cIn x; timestep), in double.
    public func scalings(sigma: Double) -> TeacherScalings {
        switch self {
        case .consistency(let s):
            let c = Preconditioning.consistency(sigma: sigma, sigmaMin: s.sigmaMin, sigmaData: s.sigmaData)
            return TeacherScalings(cSkip: c.cSkip, cOut: c.cOut, cIn: c.cIn, timestep: c.cNoise)
        case .latentConsistency(let l):
            let tf = l.ddpm.preconditioning(sigma: sigma), b = l.boundary(timestep: tf.timestep)
            return TeacherScalings(cSkip: b.cSkip * tf.cIn + b.cOut * tf.cSkip, cOut: b.cOut * tf.cOut, cIn: tf.cIn, timestep: tf.timestep)
        }
    }

    /// The student's schedule: `schedule` itself for the consistency form; for the LCM form its sigma range
    /// replaced by the teacher schedule's [sigma_0, sigma at the 1-step timestep] (rho and sigma_data kept).
    public func schedule(_ base: EDMSchedulerConfig) -> EDMSchedulerConfig {
        guard case .latentConsistency(let l) = self else { return base }
        var s = base
        (s.sigmaMin, s.sigmaMax) = (l.sigmaMin, l.sigmaMax)
        return s
    }

    /// The VE sample the exported scheduler's 1-step run starts from, per unit of noise: x = scale z.
    /// Consistency: init_noise_sigma = sigma_max; LCM: z is x_vp at t_first, so x = z / sqrt(abar) = sqrt(sigma^2+1) z.
    public func initialNoiseScale(sigmaMax: Double) -> Double {
        switch self {
        case .consistency: return sigmaMax
        case .latentConsistency: return (sigmaMax * sigmaMax + 1).squareRoot()
        }
    }

    /// The sampler of the exported folder (num_train_timesteps = `timesteps` for the consistency form).
    public func sampler(timesteps: Int) throws -> any Sampler {
        switch self {
        case .consistency(let s):
            var c = ConsistencySchedulerConfig()
            (c.numTrainTimesteps, c.sigmaMin, c.sigmaMax, c.sigmaData, c.rho) = (timesteps, s.sigmaMin, s.sigmaMax, s.sigmaData, s.rho)
            return ConsistencySampler(config: c)
        case .latentConsistency(let l):
            return try l.lcmSampler()
        }
    }

    public var description: String {
        switch self {
        case .consistency(let s):
            return String(format: "consistency form (CMStochasticIterativeScheduler), sigma %.4g..%.4g", s.sigmaMin, s.sigmaMax)
        case .latentConsistency(let l):
            return String(format: "LCM form of the teacher's %@ network (LCMScheduler, num_train_timesteps %d of the teacher's %d, original_inference_steps %d), sigma %.4g..%.4g (t 0..%d)",
                          l.prediction.rawValue, l.alphasCumprod.count, l.teacherTimesteps, l.originalInferenceSteps, l.sigmaMin, l.sigmaMax, l.firstTimestep)
        }
    }
}

/// f_theta(x_i, sigma_i) of a trainable student for a batch in `form`: runs the forward (leaving its caches for
/// backward) and writes cSkip x + cOut F into `out`. x and out (B, P).
func studentOutput(_ m: TrainableUNet, _ x: UnsafePointer<Float>, sigmas: [Double], labels: [Int]?, form: StudentParameterization,
                   scratch: Buffer, into out: UnsafeMutablePointer<Float>) {
    preconditionedOutput(m, x, scalings: sigmas.map(form.scalings), labels: labels, scratch: scratch, into: out)
}

/// Settings of the methods whose student starts as the teacher's copy (cd, ect, dmd): the form is chosen by the
/// teacher (`StudentParameterization.forTeacher`) and set with `use(_:)`, which also sets the schedule's sigma range.
public protocol TeacherCopyStudentSettings: StudentRunSettings {
    /// The LCM form of a DDPM-family teacher, nil for the consistency form of `schedule`.
    var lcmForm: LatentConsistencyForm? { get set }
}

extension TeacherCopyStudentSettings {
    public var parameterization: StudentParameterization { lcmForm.map { .latentConsistency($0) } ?? .consistency(schedule) }

    public mutating func use(_ p: StudentParameterization) {
        schedule = p.schedule(schedule)
        if case .latentConsistency(let l) = p { lcmForm = l } else { lcmForm = nil }
    }
}

extension DistillSettings: TeacherCopyStudentSettings {}
extension ECTSettings: TeacherCopyStudentSettings {}
extension DMDSettings: TeacherCopyStudentSettings {}

// Euler sampling of the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 2 without the
// correction), matches diffusers EulerDiscreteScheduler (scheduling_euler_discrete.py: __init__, set_timesteps,
// init_noise_sigma, scale_model_input, step with s_churn 0). timestep_spacing linspace / leading / trailing
// (SD-Turbo and SDXS: trailing, so 1 step is timestep 999), interpolation_type linear, final_sigmas_type zero or
// sigma_min. Deterministic (s_churn 0, as every diffusers pipeline calls it).
//
// Refused (the key is named): Karras/exponential/beta sigmas, log_linear interpolation, continuous timesteps.
import Foundation

public struct EulerDiscreteSampler: Sampler {
    public static let className = "EulerDiscreteScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let spacing: TimestepSpacing
    public let stepsOffset: Int
    public let finalSigmaZero: Bool

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c)
        prediction = try PredictionType.read(c)
        spacing = try TimestepSpacing.read(c, default: .linspace)
        stepsOffset = try c.int("steps_offset", default: 0, range: 0...1000)
        finalSigmaZero = try c.string("final_sigmas_type", default: "zero", allowed: ["zero", "sigma_min"]) == "zero"
        _ = try c.string("interpolation_type", default: "linear", allowed: ["linear"])
        _ = try c.string("timestep_type", default: "discrete", allowed: ["discrete"])
        let advice = "this port uses the model's own sigmas; remove the key or set it to false"
        for k in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"] { try c.requireFalse(k, advice: advice) }
        try c.requireDefault("sigma_min", { _ in false }, advice: "only used with Karras/exponential sigmas, which are not supported")
        try c.requireDefault("sigma_max", { _ in false }, advice: "only used with Karras/exponential sigmas, which are not supported")
    }

    public var stepRange: ClosedRange<Int> { 1...schedule.numTrainTimesteps }
    public var defaultSteps: Int { min(50, schedule.numTrainTimesteps) }
    public var description: String { "EulerDiscreteScheduler (\(prediction.rawValue), \(spacing.rawValue) spacing)" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    public func start(steps: Int) -> any SamplerRun {
        let (ts, sigmas) = Self.timestepsAndSigmas(schedule: schedule, spacing: spacing, stepsOffset: stepsOffset, steps: steps,
                                                   finalSigma: finalSigmaZero ? 0 : schedule.sigmas[0])
        // init_noise_sigma: max sigma for linspace/trailing spacing, sqrt(max^2 + 1) for leading.
        let maxSigma = sigmas.max()!
        let initSigma = spacing == .leading ? (maxSigma * maxSigma + 1).squareRoot() : maxSigma
        return Run(prediction: prediction, timesteps: ts, sigmas: sigmas, initNoiseSigma: initSigma)
    }

    /// set_timesteps shared with Euler ancestral: float32 timesteps (K), sigmas np.interp'ed at them + final (K + 1).
    static func timestepsAndSigmas(schedule: DiscreteSchedule, spacing: TimestepSpacing, stepsOffset: Int, steps: Int,
                                   finalSigma: Float) -> ([Float], [Float]) {
        let train = schedule.numTrainTimesteps
        let ts: [Float]
        switch spacing {
        case .linspace: ts = TimestepSpacing.npLinspace(0, Double(train - 1), steps).reversed().map { Float($0) }
        case .leading: ts = (0..<steps).reversed().map { Float($0 * (train / steps) + stepsOffset) }
        case .trailing:
            ts = TimestepSpacing.trailingArange(from: Double(train), ratio: Double(train) / Double(steps)).map { Float($0.rounded(.toNearestOrEven)) - 1 }
        }
        let all = schedule.sigmas
        return (ts, ts.map { Float(DiscreteSchedule.interp(Double($0), all)) } + [finalSigma])
    }

    struct Run: SamplerRun {
        let prediction: PredictionType
        let timesteps: [Float]
        let sigmas: [Float]
        let initNoiseSigma: Float

        func scaleModelInput(_ sample: Tensor, index k: Int) -> Tensor {
            let d = (sigmas[k] * sigmas[k] + 1).squareRoot()
            return Tensor(shape: sample.shape, data: sample.data.map { $0 / d })
        }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let sigma = sigmas[k], dt = sigmas[k + 1] - sigma
            let x0 = EulerDiscreteSampler.predictedOriginal(prediction, out, sample: sample, sigma: sigma)
            // derivative = (x - x0) / sigma; x + derivative * dt.
            return Tensor(shape: sample.shape, data: zip(sample.data, x0.data).map { x, p in x + (x - p) / sigma * dt })
        }
    }

    /// pred_original_sample in sigma space, diffusers' float32 order.
    static func predictedOriginal(_ p: PredictionType, _ out: Tensor, sample: Tensor, sigma: Float) -> Tensor {
        switch p {
        case .epsilon: return Tensor(shape: out.shape, data: zip(sample.data, out.data).map { $0 - sigma * $1 })
        case .sample: return out
        case .vPrediction:
            let a = -sigma / (sigma * sigma + 1).squareRoot(), b = sigma * sigma + 1
            return Tensor(shape: out.shape, data: zip(sample.data, out.data).map { $1 * a + $0 / b })
        }
    }
}

// DDIM (Song et al. 2021), matches diffusers DDIMScheduler (scheduling_ddim.py: set_timesteps, step) driven by
// DDIMPipeline / StableDiffusionPipeline: init_noise_sigma 1, scale_model_input the identity, integer timesteps.
// eta 0 is deterministic; eta > 0 adds sigma_t-scaled noise from each image's generator after every step.
import Foundation

public struct DDIMSampler: Sampler {
    public static let className = "DDIMScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let clipping: SampleClipping
    public let setAlphaToOne: Bool
    public let stepsOffset: Int
    public let spacing: TimestepSpacing
    /// DDIM's eta: a pipeline argument, not a config key (DDIMPipeline and StableDiffusionPipeline default to 0).
    public var eta: Float = 0
    public var useClippedModelOutput = false

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c)
        prediction = try PredictionType.read(c)
        clipping = try SampleClipping.read(c, hasClipSample: true, clipDefault: true)
        setAlphaToOne = try c.bool("set_alpha_to_one", default: true)
        stepsOffset = try c.int("steps_offset", default: 0, range: 0...1000)
        spacing = try TimestepSpacing.read(c, default: .leading)
    }

    public var stepRange: ClosedRange<Int> { 1...schedule.numTrainTimesteps }
    /// DDIMPipeline's num_inference_steps default.
    public var defaultSteps: Int { min(50, schedule.numTrainTimesteps) }
    public var description: String { "DDIMScheduler (\(prediction.rawValue), \(spacing.rawValue) spacing, eta \(eta))" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    public func start(steps: Int) -> any SamplerRun {
        Run(sampler: self, steps: steps, timesteps: spacing.timesteps(steps: steps, train: schedule.numTrainTimesteps, stepsOffset: stepsOffset))
    }

    struct Run: SamplerRun {
        let sampler: DDIMSampler
        let steps: Int
        let ints: [Int]
        init(sampler: DDIMSampler, steps: Int, timesteps: [Int]) { (self.sampler, self.steps, ints) = (sampler, steps, timesteps) }
        var timesteps: [Float] { ints.map(Float.init) }
        var initNoiseSigma: Float { 1 }
        func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor { sample }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let s = sampler, ac = s.schedule.alphasCumprod
            let t = ints[k], prev = t - s.schedule.numTrainTimesteps / steps
            let aT = ac[t], aPrev = prev >= 0 ? ac[prev] : (s.setAlphaToOne ? 1 : ac[0])
            let bT = 1 - aT
            let (x0Raw, epsRaw) = s.prediction.split(out, sample: sample, alphaProd: aT)
            let x0 = s.clipping.apply(x0Raw)
            // _get_variance: (1 - a_prev)/(1 - a_t) * (1 - a_t/a_prev).
            let variance = (1 - aPrev) / bT * (1 - aT / aPrev)
            let std = s.eta * variance.squareRoot()
            var eps = epsRaw
            if s.useClippedModelOutput {
                let sa = aT.squareRoot(), sb = bT.squareRoot()
                eps = Tensor(shape: sample.shape, data: zip(sample.data, x0.data).map { ($0 - sa * $1) / sb })
            }
            let dirCoeff = (1 - aPrev - std * std).squareRoot(), x0Coeff = aPrev.squareRoot()
            var prevSample = Tensor(shape: sample.shape, data: zip(x0.data, eps.data).map { x0Coeff * $0 + dirCoeff * $1 })
            if s.eta > 0 {
                let z = TorchGenerator.perImageNoise(&generators, like: sample)
                for j in 0..<prevSample.count { prevSample.data[j] += std * z.data[j] }
            }
            return prevSample
        }
    }
}

extension PredictionType {
    /// (pred_original_sample, pred_epsilon) from the network output at alpha_prod_t, in diffusers' float32 order
    /// (scheduling_ddim.py step, 3.).
    func split(_ out: Tensor, sample: Tensor, alphaProd a: Float) -> (x0: Tensor, eps: Tensor) {
        let sa = a.squareRoot(), sb = (1 - a).squareRoot()
        switch self {
        case .epsilon:
            return (Tensor(shape: out.shape, data: zip(sample.data, out.data).map { ($0 - sb * $1) / sa }), out)
        case .sample:
            return (out, Tensor(shape: out.shape, data: zip(sample.data, out.data).map { ($0 - sa * $1) / sb }))
        case .vPrediction:
            return (Tensor(shape: out.shape, data: zip(sample.data, out.data).map { sa * $0 - sb * $1 }),
                    Tensor(shape: out.shape, data: zip(sample.data, out.data).map { sa * $1 + sb * $0 }))
        }
    }
}

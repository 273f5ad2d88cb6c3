// Ancestral DDPM sampling (Ho et al. 2020), matches diffusers DDPMScheduler (scheduling_ddpm.py: set_timesteps,
// _get_variance, step) as DDPMPipeline drives it: x0 from the prediction (clipped or thresholded), the posterior
// mean, plus noise of the posterior's std from each image's generator at every step but t = 0.
// Also read for the oldest diffusers configs, `"_class_name": "GaussianDDPMScheduler"` with `"timesteps"`.
// variance_type fixed_small, fixed_small_log or fixed_large (learned variances need a 2C-channel UNet: refused).
import Foundation

public struct DDPMSampler: Sampler {
    public static let className = "DDPMScheduler"
    public static let legacyClassNames = ["GaussianDDPMScheduler"]
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let clipping: SampleClipping
    public let varianceType: String
    public let spacing: TimestepSpacing
    public let stepsOffset: Int

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c)
        prediction = try PredictionType.read(c)
        clipping = try SampleClipping.read(c, hasClipSample: true, clipDefault: true)
        varianceType = try c.string("variance_type", default: "fixed_small", allowed: ["fixed_small", "fixed_small_log", "fixed_large"])
        spacing = try TimestepSpacing.read(c, default: .leading)
        stepsOffset = try c.int("steps_offset", default: 0, range: 0...1000)
    }

    public var stepRange: ClosedRange<Int> { 1...schedule.numTrainTimesteps }
    /// DDPMPipeline's default: every training timestep.
    public var defaultSteps: Int { schedule.numTrainTimesteps }
    public var description: String { "DDPMScheduler (ancestral, \(prediction.rawValue), \(varianceType)); DDIMScheduler gives similar images in 50 steps" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    public func start(steps: Int) -> any SamplerRun {
        Run(sampler: self, ints: spacing.timesteps(steps: steps, train: schedule.numTrainTimesteps, stepsOffset: stepsOffset))
    }

    struct Run: SamplerRun {
        let sampler: DDPMSampler
        let ints: [Int]
        var timesteps: [Float] { ints.map(Float.init) }
        var initNoiseSigma: Float { 1 }
        func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor { sample }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let s = sampler, ac = s.schedule.alphasCumprod
            let t = ints[k], prev = k + 1 < ints.count ? ints[k + 1] : -1  // previous_timestep
            let aT = ac[t], aPrev: Float = prev >= 0 ? ac[prev] : 1
            let bT = 1 - aT, bPrev = 1 - aPrev
            let curAlpha = aT / aPrev, curBeta = 1 - curAlpha
            let x0 = s.clipping.apply(s.prediction.split(out, sample: sample, alphaProd: aT).x0)
            let x0Coeff = aPrev.squareRoot() * curBeta / bT
            let sampleCoeff = curAlpha.squareRoot() * bPrev / bT
            var x = Tensor(shape: sample.shape, data: zip(x0.data, sample.data).map { x0Coeff * $0 + sampleCoeff * $1 })
            guard t > 0 else { return x }
            // _get_variance: posterior variance clamped at 1e-20; fixed_large uses beta_t.
            let variance = max(bPrev / bT * curBeta, 1e-20)
            let std: Float
            switch s.varianceType {
            case "fixed_small_log": std = Foundation.exp(0.5 * Foundation.log(variance))
            case "fixed_large": std = curBeta.squareRoot()
            default: std = variance.squareRoot()
            }
            let z = TorchGenerator.perImageNoise(&generators, like: sample)
            for j in 0..<x.count { x.data[j] += std * z.data[j] }
            return x
        }
    }
}

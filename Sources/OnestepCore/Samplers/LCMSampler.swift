// Latent consistency model sampling (Luo et al. 2023), matches diffusers LCMScheduler (scheduling_lcm.py:
// set_timesteps with original_inference_steps, get_scalings_for_boundary_condition_discrete, step): the
// consistency function c_skip x + c_out x0 with c_skip/c_out of timestep * timestep_scaling, then fresh noise from
// each image's generator to the next timestep's level between steps (none after the last).
import Foundation

public struct LCMSampler: Sampler {
    public static let className = "LCMScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let clipping: SampleClipping
    public let setAlphaToOne: Bool
    public let originalInferenceSteps: Int
    public let timestepScaling: Float

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c, betaStart: 0.00085, betaEnd: 0.012, schedule: "scaled_linear")
        prediction = try PredictionType.read(c)
        clipping = try SampleClipping.read(c, hasClipSample: true, clipDefault: false)
        setAlphaToOne = try c.bool("set_alpha_to_one", default: true)
        originalInferenceSteps = try c.int("original_inference_steps", default: 50, range: 1...schedule.numTrainTimesteps)
        timestepScaling = Float(try c.double("timestep_scaling", default: 10, valid: { $0 > 0 }, expect: "a positive number"))
        // LCM's timesteps ignore timestep_spacing and steps_offset (diffusers reads neither in set_timesteps).
        _ = try TimestepSpacing.read(c, default: .leading)
    }

    public var stepRange: ClosedRange<Int> { 1...originalInferenceSteps }
    /// LatentConsistencyModelPipeline's default.
    public var defaultSteps: Int { min(4, originalInferenceSteps) }
    public var description: String { "LCMScheduler (\(prediction.rawValue), original_inference_steps \(originalInferenceSteps))" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    /// LCM/TCD set_timesteps: the `original` skipped timesteps k-1, 2k-1, ... (k = T // original), reversed, then
    /// `steps` of them at floor(linspace(0, count, steps, endpoint=False)).
    static func skippingTimesteps(train: Int, original: Int, steps: Int) -> [Int] {
        let k = train / original
        let origin = (1...original).map { $0 * k - 1 }.reversed().map { $0 }
        return (0..<steps).map { i in origin[Int((Double(i) * (Double(origin.count) / Double(steps))).rounded(.down))] }
    }

    public func start(steps: Int) -> any SamplerRun {
        Run(sampler: self, ints: Self.skippingTimesteps(train: schedule.numTrainTimesteps, original: originalInferenceSteps, steps: steps))
    }

    struct Run: SamplerRun {
        let sampler: LCMSampler
        let ints: [Int]
        var timesteps: [Float] { ints.map(Float.init) }
        var initNoiseSigma: Float { 1 }
        func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor { sample }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let s = sampler, ac = s.schedule.alphasCumprod
            let t = ints[k], prev = k + 1 < ints.count ? ints[k + 1] : t
            let aT = ac[t], aPrev = prev >= 0 ? ac[prev] : (s.setAlphaToOne ? 1 : ac[0])
            let (cSkip, cOut) = Preconditioning.lcm(timestep: t, scaling: s.timestepScaling)
            let x0 = s.clipping.apply(s.prediction.split(out, sample: sample, alphaProd: aT).x0)
            let denoised = Tensor(shape: sample.shape, data: zip(x0.data, sample.data).map { cOut * $0 + cSkip * $1 })
            guard k != ints.count - 1 else { return denoised }
            let z = TorchGenerator.perImageNoise(&generators, like: sample)
            let a = aPrev.squareRoot(), b = (1 - aPrev).squareRoot()
            return Tensor(shape: sample.shape, data: zip(denoised.data, z.data).map { a * $0 + b * $1 })
        }
    }
}

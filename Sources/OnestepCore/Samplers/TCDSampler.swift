// Trajectory consistency distillation sampling (Zheng et al. 2024, strategic stochastic sampling), matches
// diffusers TCDScheduler (scheduling_tcd.py: set_timesteps, step): from timestep t predict x0 and epsilon, jump to
// s = floor((1 - eta) * t_prev), then (eta > 0) re-noise from s to t_prev with noise from each image's generator,
// except after the last step. eta is the pipeline's `eta` argument (TCD pipelines default 0.3).
import Foundation

public struct TCDSampler: Sampler {
    public static let className = "TCDScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let setAlphaToOne: Bool
    public let originalInferenceSteps: Int
    /// gamma in the paper; a pipeline argument in diffusers (StableDiffusionXLPipeline passes eta through).
    public var eta: Double = 0.3

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c, betaStart: 0.00085, betaEnd: 0.012, schedule: "scaled_linear")
        prediction = try PredictionType.read(c)
        setAlphaToOne = try c.bool("set_alpha_to_one", default: true)
        originalInferenceSteps = try c.int("original_inference_steps", default: 50, range: 1...schedule.numTrainTimesteps)
        _ = try SampleClipping.read(c, hasClipSample: true, clipDefault: false)  // read for validation; TCD's step does not clip
        _ = try TimestepSpacing.read(c, default: .leading)
    }

    public var stepRange: ClosedRange<Int> { 1...originalInferenceSteps }
    public var defaultSteps: Int { min(4, originalInferenceSteps) }
    public var description: String { "TCDScheduler (\(prediction.rawValue), eta \(eta))" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    public func start(steps: Int) -> any SamplerRun {
        Run(sampler: self, ints: LCMSampler.skippingTimesteps(train: schedule.numTrainTimesteps, original: originalInferenceSteps, steps: steps))
    }

    struct Run: SamplerRun {
        let sampler: TCDSampler
        let ints: [Int]
        var timesteps: [Float] { ints.map(Float.init) }
        var initNoiseSigma: Float { 1 }
        func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor { sample }

        func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let s = sampler, ac = s.schedule.alphasCumprod, eta = s.eta
            let t = ints[k], prev = k + 1 < ints.count ? ints[k + 1] : 0
            let ts = Int((Float(1 - eta) * Float(prev)).rounded(.down))  // floor((1 - eta) * prev_timestep), float32 tensor maths
            let aT = ac[t], aPrev = prev >= 0 ? ac[prev] : (s.setAlphaToOne ? 1 : ac[0])
            let aS = ac[ts], bS = 1 - aS
            let (x0, eps) = s.prediction.split(out, sample: sample, alphaProd: aT)
            let sa = aS.squareRoot(), sb = bS.squareRoot()
            let noised = Tensor(shape: sample.shape, data: zip(x0.data, eps.data).map { sa * $0 + sb * $1 })
            guard eta > 0, k != ints.count - 1 else { return noised }
            let z = TorchGenerator.perImageNoise(&generators, like: sample)
            let a = (aPrev / aS).squareRoot(), b = (1 - aPrev / aS).squareRoot()
            return Tensor(shape: sample.shape, data: zip(noised.data, z.data).map { a * $0 + b * $1 })
        }
    }
}

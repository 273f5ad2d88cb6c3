// Ancestral Euler (k-diffusion sample_euler_ancestral, eta 1), matches diffusers EulerAncestralDiscreteScheduler
// (scheduling_euler_ancestral_discrete.py: set_timesteps, scale_model_input, step): an Euler step down to sigma_down,
// then fresh noise of std sigma_up from each image's generator, every step including the last (whose sigma_up is 0;
// drawing it keeps the generator streams as diffusers leaves them).
import Foundation

public struct EulerAncestralDiscreteSampler: Sampler {
    public static let className = "EulerAncestralDiscreteScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let spacing: TimestepSpacing
    public let stepsOffset: Int

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c)
        prediction = try PredictionType.read(c, allowed: [.epsilon, .vPrediction])  // diffusers: "sample" not implemented
        spacing = try TimestepSpacing.read(c, default: .linspace)
        stepsOffset = try c.int("steps_offset", default: 0, range: 0...1000)
    }

    public var stepRange: ClosedRange<Int> { 1...schedule.numTrainTimesteps }
    public var defaultSteps: Int { min(50, schedule.numTrainTimesteps) }
    public var description: String { "EulerAncestralDiscreteScheduler (\(prediction.rawValue), \(spacing.rawValue) spacing)" }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    public func start(steps: Int) -> any SamplerRun {
        let (ts, sigmas) = EulerDiscreteSampler.timestepsAndSigmas(schedule: schedule, spacing: spacing, stepsOffset: stepsOffset,
                                                                   steps: steps, finalSigma: 0)
        let maxSigma = sigmas.max()!
        let initSigma = spacing == .leading ? (maxSigma * maxSigma + 1).squareRoot() : maxSigma
        return Run(prediction: prediction, timesteps: ts, sigmas: sigmas, initNoiseSigma: initSigma)
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
            let from = sigmas[k], to = sigmas[k + 1]
            let x0 = EulerDiscreteSampler.predictedOriginal(prediction, out, sample: sample, sigma: from)
            let up = (to * to * (from * from - to * to) / (from * from)).squareRoot()
            let down = (to * to - up * up).squareRoot()
            let dt = down - from
            let z = TorchGenerator.perImageNoise(&generators, like: sample)
            var x = sample
            for j in 0..<x.count {
                let derivative = (sample.data[j] - x0.data[j]) / from
                x.data[j] = sample.data[j] + derivative * dt + z.data[j] * up
            }
            return x
        }
    }
}

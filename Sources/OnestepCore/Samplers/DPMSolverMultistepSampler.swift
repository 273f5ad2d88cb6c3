// DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
// Probabilistic Models"), matches diffusers DPMSolverMultistepScheduler (scheduling_dpmsolver_multistep.py:
// set_timesteps, convert_model_output, dpm_solver_first_order_update, multistep_dpm_solver_second_order_update,
// step) with algorithm_type "dpmsolver++", solver_order 1 or 2, solver_type midpoint or heun, optional dynamic
// thresholding of the x0 prediction. Deterministic: no generator is used.
//
// Refused (the key is named): the SDE and plain dpmsolver variants, order 3, Karras/exponential/beta/lu/flow
// sigmas, learned variance, lambda_min_clipped, euler_at_final. Use DDIMScheduler or EulerDiscreteScheduler for those
// models instead.
import Foundation

public struct DPMSolverMultistepSampler: Sampler {
    public static let className = "DPMSolverMultistepScheduler"
    public let schedule: DiscreteSchedule
    public let prediction: PredictionType
    public let clipping: SampleClipping
    public let solverOrder: Int
    public let heun: Bool
    public let lowerOrderFinal: Bool
    public let finalSigmaZero: Bool
    public let spacing: TimestepSpacing
    public let stepsOffset: Int

    public let source: SchedulerConfig

    public init(config c: SchedulerConfig) throws {
        source = c
        schedule = try DiscreteSchedule(config: c)
        prediction = try PredictionType.read(c)
        clipping = try SampleClipping.read(c, hasClipSample: false, clipDefault: false)
        solverOrder = try c.int("solver_order", default: 2, range: 1...2)
        _ = try c.string("algorithm_type", default: "dpmsolver++", allowed: ["dpmsolver++"])
        heun = try c.string("solver_type", default: "midpoint", allowed: ["midpoint", "heun"]) == "heun"
        lowerOrderFinal = try c.bool("lower_order_final", default: true)
        finalSigmaZero = try c.string("final_sigmas_type", default: "zero", allowed: ["zero", "sigma_min"]) == "zero"
        spacing = try TimestepSpacing.read(c, default: .linspace)
        stepsOffset = try c.int("steps_offset", default: 0, range: 0...1000)
        let advice = "this port samples DPM-Solver++ on the model's own sigmas; remove the key or use DDIMScheduler"
        for k in ["euler_at_final", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                  "use_flow_sigmas", "use_dynamic_shifting"] {
            try c.requireFalse(k, advice: advice)
        }
        // DDPM configs carry variance_type "fixed_small" into from_config; only the learned kinds change DPM-Solver.
        try c.requireDefault("variance_type", { !["learned", "learned_range"].contains($0 as? String ?? "") },
                             advice: "learned variance needs a 2C-channel UNet, which is not supported")
        try c.requireDefault("lambda_min_clipped", { ($0 as? String) == "-Infinity" }, advice: advice)
    }

    public var stepRange: ClosedRange<Int> { 1...schedule.numTrainTimesteps }
    /// What DPM-Solver++ 2M is usually run with.
    public var defaultSteps: Int { min(20, schedule.numTrainTimesteps) }
    public var description: String {
        "DPMSolverMultistepScheduler (dpmsolver++ order \(solverOrder), \(prediction.rawValue)\(clipping.thresholding ? ", thresholding" : ""))"
    }

    /// The file it was read from, under this class name (what diffusers' save_config writes back).
    public var configDictionary: [String: Any] { source.dictionary(className: Self.className) }

    /// set_timesteps: integer timesteps (K) and sigmas interpolated at them plus the final sigma (K + 1).
    func timestepsAndSigmas(steps: Int) -> ([Int], [Float]) {
        let train = schedule.numTrainTimesteps
        let ts: [Int]
        switch spacing {
        case .linspace:
            ts = Array(TimestepSpacing.npLinspace(0, Double(train - 1), steps + 1).map { Int($0.rounded(.toNearestOrEven)) }.reversed().dropLast())
        case .leading:
            let ratio = train / (steps + 1)
            ts = Array((0...steps).reversed().map { $0 * ratio + stepsOffset }.dropLast())
        case .trailing:
            ts = TimestepSpacing.trailingArange(from: Double(train), ratio: Double(train) / Double(steps)).map { Int($0.rounded(.toNearestOrEven)) - 1 }
        }
        let all = schedule.sigmas
        let last: Float = finalSigmaZero ? 0 : all[0]
        return (ts, ts.map { Float(DiscreteSchedule.interp(Double($0), all)) } + [last])
    }

    public func start(steps: Int) -> any SamplerRun {
        let (ts, sigmas) = timestepsAndSigmas(steps: steps)
        return Run(sampler: self, ints: ts, sigmas: sigmas)
    }

    struct Run: SamplerRun {
        let sampler: DPMSolverMultistepSampler
        let ints: [Int]
        let sigmas: [Float]
        /// x0 predictions of earlier steps, newest last (model_outputs).
        var previous: [Tensor] = []
        var lowerOrderNums = 0
        var timesteps: [Float] { ints.map(Float.init) }
        var initNoiseSigma: Float { 1 }
        func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor { sample }

        /// convert_model_output for dpmsolver++: the x0 prediction, thresholded when configured.
        func x0(_ out: Tensor, sample: Tensor, k: Int) -> Tensor {
            let (alpha, sigma) = Preconditioning.alphaSigma(sigmas[k])
            let x: Tensor
            switch sampler.prediction {
            case .epsilon: x = Tensor(shape: out.shape, data: zip(sample.data, out.data).map { ($0 - sigma * $1) / alpha })
            case .sample: x = out
            case .vPrediction: x = Tensor(shape: out.shape, data: zip(sample.data, out.data).map { alpha * $0 - sigma * $1 })
            }
            return sampler.clipping.thresholding ? sampler.clipping.threshold(x) : x
        }

        mutating func step(_ out: Tensor, index k: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor {
            let n = ints.count
            let lowerFinal = k == n - 1 && ((sampler.lowerOrderFinal && n < 15) || sampler.finalSigmaZero)
            let m0 = x0(out, sample: sample, k: k)
            previous.append(m0)
            if previous.count > 2 { previous.removeFirst() }
            let (alphaT, sigmaT) = Preconditioning.alphaSigma(sigmas[k + 1])
            let (alphaS0, sigmaS0) = Preconditioning.alphaSigma(sigmas[k])
            let lambdaT = Foundation.log(alphaT) - Foundation.log(sigmaT)
            let lambdaS0 = Foundation.log(alphaS0) - Foundation.log(sigmaS0)
            let h = lambdaT - lambdaS0
            let ratio = sigmaT / sigmaS0, expm = alphaT * (Foundation.exp(-h) - 1)
            var result: Tensor
            if sampler.solverOrder == 1 || lowerOrderNums < 1 || lowerFinal {
                // dpm_solver_first_order_update: x_t = (sigma_t/sigma_s) x - alpha_t (e^-h - 1) x0.
                result = Tensor(shape: sample.shape, data: zip(sample.data, m0.data).map { ratio * $0 - expm * $1 })
            } else {
                // multistep_dpm_solver_second_order_update with D1 = (m0 - m1) / r0.
                let (alphaS1, sigmaS1) = Preconditioning.alphaSigma(sigmas[k - 1])
                let lambdaS1 = Foundation.log(alphaS1) - Foundation.log(sigmaS1)
                let r0 = (lambdaS0 - lambdaS1) / h, inv = 1 / r0
                let m1 = previous[0]
                let c1: Float = sampler.heun ? -(alphaT * ((Foundation.exp(-h) - 1) / h + 1)) : 0.5 * expm
                result = sample
                for j in 0..<sample.count {
                    let d1 = inv * (m0.data[j] - m1.data[j])
                    result.data[j] = ratio * sample.data[j] - expm * m0.data[j] - c1 * d1
                }
            }
            if lowerOrderNums < sampler.solverOrder { lowerOrderNums += 1 }
            return result
        }
    }
}

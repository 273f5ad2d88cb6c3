// What the DDPM-family schedulers (DDPM, DDIM, DPM-Solver, Euler, LCM, TCD) share, computed in float32 as
// diffusers computes it so a seed gives diffusers' image:
//   betas (linear / scaled_linear / squaredcos_cap_v2 / trained_betas, optional zero-terminal-SNR rescale),
//   alphas_cumprod = cumprod(1 - betas), the prediction type, timestep spacing, dynamic thresholding.
// Sources: diffusers schedulers/scheduling_ddim.py (__init__, betas_for_alpha_bar, rescale_zero_terminal_snr,
// _threshold_sample, set_timesteps) and the same code copied into the other scheduler files.
import Foundation

/// What the network predicts (diffusers `prediction_type`).
public enum PredictionType: String, Sendable {
    case epsilon, sample, vPrediction = "v_prediction"

    static func read(_ c: SchedulerConfig, allowed: [PredictionType] = [.epsilon, .sample, .vPrediction]) throws -> PredictionType {
        let s = try c.string("prediction_type", default: "epsilon", allowed: allowed.map(\.rawValue))
        return PredictionType(rawValue: s)!
    }
}

/// diffusers `timestep_spacing`.
public enum TimestepSpacing: String, Sendable {
    case linspace, leading, trailing

    static func read(_ c: SchedulerConfig, default d: TimestepSpacing) throws -> TimestepSpacing {
        TimestepSpacing(rawValue: try c.string("timestep_spacing", default: d.rawValue, allowed: ["linspace", "leading", "trailing"]))!
    }

    /// Integer timesteps of DDPM/DDIM set_timesteps (descending), before any offset clipping.
    func timesteps(steps: Int, train: Int, stepsOffset: Int) -> [Int] {
        switch self {
        case .linspace:  // np.linspace(0, T-1, steps).round()[::-1]
            return Self.npLinspace(0, Double(train - 1), steps).reversed().map { Int($0.rounded(.toNearestOrEven)) }
        case .leading:   // (arange(steps) * (T // steps))[::-1] + steps_offset
            return (0..<steps).reversed().map { $0 * (train / steps) + stepsOffset }
        case .trailing:  // round(arange(T, 0, -T/steps)) - 1
            return Self.trailingArange(from: Double(train), ratio: Double(train) / Double(steps)).map { Int($0.rounded(.toNearestOrEven)) - 1 }
        }
    }

    /// np.linspace(start, stop, n) in float64: i * ((stop - start) / (n - 1)) + start, the last value exactly stop.
    static func npLinspace(_ start: Double, _ stop: Double, _ n: Int) -> [Double] {
        guard n > 1 else { return n == 1 ? [start] : [] }
        let step = (stop - start) / Double(n - 1)
        return (0..<n).map { $0 == n - 1 ? stop : Double($0) * step + start }
    }

    /// np.arange(start, 0, -ratio) in float64: start - i*ratio while > 0.
    static func trailingArange(from start: Double, ratio: Double) -> [Double] {
        let n = Int((start / ratio).rounded(.up))
        return (0..<n).map { start - Double($0) * ratio }.filter { $0 > 0 }
    }
}

/// betas and alphas_cumprod over the training timesteps, float32 as torch holds them.
public struct DiscreteSchedule: Sendable {
    public let numTrainTimesteps: Int
    /// (T)
    public let betas: [Float]
    /// cumprod(1 - betas), accumulated in double as torch's CPU cumprod does, stored float32. (T)
    public let alphasCumprod: [Float]

    /// Reads num_train_timesteps (older configs: "timesteps"), beta_start, beta_end, beta_schedule, trained_betas,
    /// rescale_betas_zero_snr.
    public init(config c: SchedulerConfig, betaStart: Double = 0.0001, betaEnd: Double = 0.02,
                schedule: String = "linear") throws {
        let t = try c.int("num_train_timesteps", default: 1000, range: 2...100_000, aliases: ["timesteps"])
        let start = try c.double("beta_start", default: betaStart, valid: { $0 >= 0 && $0 < 1 }, expect: "a number in [0, 1)")
        let end = try c.double("beta_end", default: betaEnd, valid: { $0 >= 0 && $0 < 1 }, expect: "a number in [0, 1)")
        var b: [Float]
        if let trained = try c.doubles("trained_betas") {
            guard trained.count == t, trained.allSatisfy({ $0 >= 0 && $0 < 1 }) else {
                throw c.error("trained_betas", "needs \(t) values in [0, 1) (num_train_timesteps)")
            }
            b = trained.map { Float($0) }
        } else {
            switch try c.string("beta_schedule", default: schedule, allowed: ["linear", "scaled_linear", "squaredcos_cap_v2"]) {
            case "linear": b = Self.linspace(Float(start), Float(end), t)
            case "scaled_linear": b = Self.linspace(Float(start.squareRoot()), Float(end.squareRoot()), t).map { $0 * $0 }
            default: b = Self.cosineBetas(t)
            }
        }
        // A zero beta gives a zero sigma, which Euler and DPM-Solver divide by (NaN images); diffusers would run it.
        guard b.allSatisfy({ $0 > 0 && $0 < 1 }) else {
            throw ModelLoadError(path: c.path, problem: "the betas (beta_start, beta_end, beta_schedule or trained_betas) must all lie in (0, 1)")
        }
        let rescale = try c.bool("rescale_betas_zero_snr", default: false)
        if rescale { b = Self.rescaleZeroTerminalSNR(b) }
        numTrainTimesteps = t
        betas = b
        var ac = Self.cumprod(b.map { 1 - $0 })
        if rescale { ac[t - 1] = Float(sign: .plus, exponent: -24, significand: 1) }  // diffusers: 2**-24, not 0
        alphasCumprod = ac
    }

    /// torch.linspace(start, end, n, dtype=float32): the step in float32, each value one fused multiply-add from
    /// the nearer end (ATen RangeFactoriesKernel; checked bit-exact against torch for the DDPM and SD betas).
    public static func linspace(_ start: Float, _ end: Float, _ n: Int) -> [Float] {
        guard n > 1 else { return [start] }
        let step = (end - start) / Float(n - 1), half = n / 2
        return (0..<n).map { i in i < half ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - i - 1)) }
    }

    /// torch.cumprod on CPU float32: double accumulator, each partial product rounded to float.
    static func cumprod(_ a: [Float]) -> [Float] {
        var acc = 1.0
        return a.map { acc *= Double($0); return Float(acc) }
    }

    /// betas_for_alpha_bar(T, max_beta=0.999, "cosine") in double, then float32.
    static func cosineBetas(_ t: Int) -> [Float] {
        func alphaBar(_ x: Double) -> Double { let c = Foundation.cos((x + 0.008) / 1.008 * Double.pi / 2); return c * c }
        return (0..<t).map { i in Float(min(1 - alphaBar(Double(i + 1) / Double(t)) / alphaBar(Double(i) / Double(t)), 0.999)) }
    }

    /// rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1), float32 as diffusers.
    static func rescaleZeroTerminalSNR(_ betas: [Float]) -> [Float] {
        var s = cumprod(betas.map { 1 - $0 }).map { $0.squareRoot() }
        let s0 = s[0], sT = s[s.count - 1]
        let scale = s0 / (s0 - sT)
        s = s.map { ($0 - sT) * scale }
        let bar = s.map { $0 * $0 }
        var alphas = [bar[0]]
        for i in 1..<bar.count { alphas.append(bar[i] / bar[i - 1]) }
        return alphas.map { 1 - $0 }
    }

    /// Karras-style sigmas of every training timestep, sqrt((1 - a) / a) in float32. (T)
    public var sigmas: [Float] { alphasCumprod.map { Preconditioning.sigma(alphaCumprod: $0) } }

    /// np.interp(x, arange(T), sigmas) in float64 (numpy's formula: slope * (x - x_j) + y_j).
    public static func interp(_ x: Double, _ ys: [Float]) -> Double {
        if x <= 0 { return Double(ys[0]) }
        if x >= Double(ys.count - 1) { return Double(ys[ys.count - 1]) }
        let j = Int(x.rounded(.down))
        let y0 = Double(ys[j]), y1 = Double(ys[j + 1])
        return (y1 - y0) * (x - Double(j)) + y0
    }
}

/// Clipping of the predicted x0: dynamic thresholding (Imagen, Saharia et al. 2022) or a plain clamp.
/// Matches diffusers _threshold_sample / clip_sample.
public struct SampleClipping: Sendable {
    public var thresholding = false
    public var dynamicThresholdingRatio: Float = 0.995
    public var sampleMaxValue: Float = 1
    public var clipSample = false
    public var clipSampleRange: Float = 1

    /// Reads thresholding, dynamic_thresholding_ratio, sample_max_value, and (when `hasClipSample`) clip_sample,
    /// clip_sample_range with diffusers' default for clip_sample.
    static func read(_ c: SchedulerConfig, hasClipSample: Bool, clipDefault: Bool) throws -> SampleClipping {
        var s = SampleClipping()
        s.thresholding = try c.bool("thresholding", default: false)
        s.dynamicThresholdingRatio = Float(try c.double("dynamic_thresholding_ratio", default: 0.995, valid: { $0 > 0 && $0 <= 1 }, expect: "a ratio in (0, 1]"))
        s.sampleMaxValue = Float(try c.double("sample_max_value", default: 1, valid: { $0 >= 1 }, expect: "a number >= 1"))
        if hasClipSample {
            s.clipSample = try c.bool("clip_sample", default: clipDefault)
            s.clipSampleRange = Float(try c.double("clip_sample_range", default: 1, valid: { $0 > 0 }, expect: "a positive number"))
        }
        return s
    }

    /// x0 (N, C, H, W) clipped per image.
    public func apply(_ x0: Tensor) -> Tensor {
        if thresholding { return threshold(x0) }
        guard clipSample else { return x0 }
        let r = clipSampleRange
        return Tensor(shape: x0.shape, data: x0.data.map { min(max($0, -r), r) })
    }

    /// s = clamp(quantile(|x|, ratio), 1, sample_max_value) per image; x -> clamp(x, -s, s) / s.
    func threshold(_ x: Tensor) -> Tensor {
        let n = x.shape[0], per = x.count / n
        var out = x
        for i in 0..<n {
            let row = x.data[(i * per)..<((i + 1) * per)]
            let sorted = row.map { abs($0) }.sorted()
            // torch.quantile, linear: rank = q * (n - 1) in float32, lerp of the neighbours.
            let rank = dynamicThresholdingRatio * Float(per - 1)
            let lo = Int(rank), hi = Int(rank.rounded(.up))
            let w = rank - Float(lo), a = sorted[lo], b = sorted[hi]
            let q = w < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w)
            let s = min(max(q, 1), sampleMaxValue)
            for j in 0..<per { out.data[i * per + j] = min(max(x.data[i * per + j], -s), s) / s }
        }
        return out
    }
}

// A loaded pixel-space pipeline ready to generate: denoiser (UNet2DModel) + sampler + its name and class names.
// This is what the server keeps resident and the commands use. It owns the model call the sampler runs (the
// conditioning goes in there, see Conditioning.swift); the sampler owns the timesteps, scaling and steps.
import Foundation
import PNGCodec

public struct ImagePipeline: Sendable {
    public let name: String
    public let model: UNet2DModel
    public let sampler: any Sampler
    /// Set when the directory had no scheduler config and a sampler was assumed: says which and how to choose another.
    public let samplerAssumption: String?
    /// "float32", or "int8" when the weights file was quantized (and then the convolutions run in int8).
    public let weightDType: String
    /// How the convolutions run.
    public let precision: ConvPrecision

    public var config: UNetConfig { model.config }
    public var imageSize: Int { config.sampleSize }
    public var channels: Int { config.outChannels }
    public var classNames: [String]? { config.classNames }
    /// Real classes (a null label of a guidance model is not one). nil: unconditional.
    public var numClasses: Int? { config.numClasses }
    /// Classifier-free guidance scale w for models with a null label (withClassGuidance); nil: no guidance.
    public private(set) var classGuidance: Float?

    /// Packs the model's convolutions for `precision` (default: int8 for an int8 file, else fp32).
    public init(name: String, model: UNet2DModel, sampler: any Sampler, weightDType: String, precision: ConvPrecision? = nil,
                samplerAssumption: String? = nil) {
        let p = precision ?? (weightDType == "int8" ? .int8 : .fp32)
        var m = model
        m.packForServing(p)
        self.name = name
        self.model = m
        self.sampler = sampler
        self.samplerAssumption = samplerAssumption
        self.weightDType = weightDType
        self.precision = p
    }

    /// The same model with its convolutions run at another precision (the bench compares them).
    public func with(precision: ConvPrecision) -> ImagePipeline {
        ImagePipeline(name: name, model: model, sampler: sampler, weightDType: weightDType, precision: precision,
                      samplerAssumption: samplerAssumption)
    }

    /// The same network sampled by another scheduler class built from this pipeline's scheduler config, as
    /// diffusers' `DDIMScheduler.from_config(pipe.scheduler.config)` does: the config's values are kept (keys the
    /// new class does not take are ignored, keys it takes and the config lacks get their defaults). How a DDPM
    /// teacher is sampled with DDIM or DPM-Solver++ without writing another folder.
    /// - Throws: ModelLoadError naming the class and the supported ones when no sampler reads `className`, or the
    ///   key whose value the new class refuses.
    public func withScheduler(_ className: String) throws -> ImagePipeline {
        let config = Data(try SamplerRegistry.json(for: sampler))
        let s = try SamplerRegistry.sampler(json: config, path: "\(name)'s scheduler config read as \(className)", className: className)
        var p = ImagePipeline(name: name, model: model, sampler: s, weightDType: weightDType, precision: precision)
        p.classGuidance = classGuidance
        return p
    }

    /// The same pipeline sampled with classifier-free guidance at scale `w` (diffusers' guidance_scale:
    /// out = uncond + w (cond - uncond) on the network output, uncond = the null label's; w = 1 is the plain
    /// conditional model, 0 the unconditional one). Each step runs one forward of 2N images.
    /// - Throws: ModelLoadError when the model has no null label (unet/config.json "null_class_label"; train it with
    ///   label dropout) or w is not a finite number in 0...GuidanceLimits.maxScale.
    public func withClassGuidance(_ w: Double) throws -> ImagePipeline {
        try GuidanceLimits.check(scale: w, config: config, what: name)
        var p = self
        p.classGuidance = Float(w)
        return p
    }

    /// Loads a model directory (see ModelDirectory for the layouts).
    public static func load(path: String, name: String? = nil, precision: ConvPrecision? = nil) throws -> ImagePipeline {
        let dir = try ModelDirectory(path: path)
        let (model, file) = try dir.loadModel()
        let loaded = try dir.loadSampler()
        guard model.config.inChannels == model.config.outChannels else {
            throw ModelLoadError(path: dir.unetConfigPath, problem: "in_channels \(model.config.inChannels) != out_channels \(model.config.outChannels); an image generator needs them equal")
        }
        let dtype = file.metadata["onestep.quantization"] == nil ? "float32" : "int8"
        return ImagePipeline(name: name ?? dir.name, model: model, sampler: loaded.sampler, weightDType: dtype, precision: precision,
                             samplerAssumption: loaded.assumption)
    }

    /// Resolves a class given by index or name. nil input picks class 0 for conditional models.
    public func resolveLabel(_ text: String?) -> Result<Int?, LabelError> {
        guard let n = numClasses else {
            return text == nil ? .success(nil) : .failure(.unconditional)
        }
        guard let text else { return .success(0) }
        if let i = Int(text) {
            return (0..<n).contains(i) ? .success(i) : .failure(.outOfRange(i, n))
        }
        if let names = classNames, let i = names.firstIndex(where: { $0.caseInsensitiveCompare(text) == .orderedSame }) {
            return .success(i)
        }
        return .failure(.unknownName(text, classNames ?? []))
    }

    public enum LabelError: Error, CustomStringConvertible, Equatable {
        case unconditional
        case outOfRange(Int, Int)
        case unknownName(String, [String])
        public var description: String {
            switch self {
            case .unconditional: return "this model is unconditional; leave out label"
            case .outOfRange(let i, let n): return "label \(i) is out of range; use 0...\(n - 1)"
            case .unknownName(let s, let names):
                return names.isEmpty ? "label '\(s)' is not a class index and this model has no class names"
                                     : "unknown label '\(s)'; valid labels: \(names.joined(separator: ", "))"
            }
        }
    }

    /// The UNet as the samplers call it: the same timestep for every image of the batch. Runs the batched
    /// channel-major forward with this thread's buffer pool.
    public func denoise(_ x: Tensor, _ t: Float, _ labels: [Int]?) -> Tensor {
        model.forwardBatched(x, timesteps: Array(repeating: t, count: x.shape[0]), classLabels: labels, pool: .forCurrentThread)
    }

    /// The model call a sampler runs for this batch's conditioning. x (N, C, S, S) -> raw UNet output (N, C, S, S).
    public func modelCall(_ conditioning: Conditioning) -> ModelCall {
        { x, t in conditioning.apply(x, t, denoise: self.denoise) }
    }

    /// Images in model space (N, C, S, S) for the requests, all with the same step count (in sampler.stepRange).
    public func generate(_ requests: [GenerationRequest], steps: Int) -> Tensor {
        let labels = GenerationRequest.labels(of: requests)
        let conditioning: Conditioning
        if let l = labels, let w = classGuidance, let null = config.nullClassLabel {
            conditioning = .guidedClassLabels(l, null: null, scale: w)
        } else {
            conditioning = labels.map { .classLabels($0) } ?? .none
        }
        return sampler.sample(requests, steps: steps, channels: config.inChannels, size: imageSize, model: modelCall(conditioning))
    }

    /// PNG bytes for each image of a batch (N, C, S, S) in model space: 1 channel is gray, 2 gray + alpha,
    /// 3 RGB, 4 RGBA (PNG's own colour types, so nothing is dropped).
    public static func pngs(_ images: Tensor) throws -> [[UInt8]] {
        let n = images.shape[0], c = images.shape[1], h = images.shape[2], w = images.shape[3]
        let pixels = ImageQuantizer.toUInt8(images)
        let per = h * w * c
        return try (0..<n).map { i in
            try PNG.encode(PixelImage(width: w, height: h, channels: c, pixels: Array(pixels[(i * per)..<((i + 1) * per)])))
        }
    }

    /// Tiles images (N, C, S, S) into one grid image with `columns` columns and a 1-pixel gap.
    public static func grid(_ images: Tensor, columns: Int) -> PixelImage {
        let n = images.shape[0], c = images.shape[1], s = images.shape[2]
        let cols = max(1, min(columns, n)), rows = (n + cols - 1) / cols
        let outC = c
        let w = cols * (s + 1) - 1, h = rows * (s + 1) - 1
        var img = PixelImage(width: w, height: h, channels: outC, fill: 255)
        let px = ImageQuantizer.toUInt8(images)
        for i in 0..<n {
            let ox = (i % cols) * (s + 1), oy = (i / cols) * (s + 1)
            for y in 0..<s { for x in 0..<s { for k in 0..<outC {
                img.pixels[((oy + y) * w + ox + x) * outC + k] = px[((i * s + y) * s + x) * c + k]
            } } }
        }
        return img
    }
}

/// What a classifier-free guidance scale of a class-conditional pixel model may be, checked in one place for the
/// pipeline (serving, eval rows) and the distillation teacher.
public enum GuidanceLimits {
    /// Beyond ~10 guided samples of these models saturate; 50 leaves room while catching typos (e.g. 75 for 7.5).
    public static let maxScale = 50.0

    /// - Throws: ModelLoadError naming `what` when the config has no null label (unconditional, or trained
    ///   without label dropout) or `scale` is not finite or outside 0...maxScale.
    public static func check(scale: Double, config: UNetConfig, what: String) throws {
        guard scale.isFinite, scale >= 0, scale <= maxScale else {
            throw ModelLoadError(path: what, problem: "guidance \(scale) is not a number in 0...\(Int(maxScale)) (1 = no guidance, the conditional model; 0 = the unconditional model; typical 1.5-5)")
        }
        guard config.numClassEmbeds != nil else {
            throw ModelLoadError(path: what, problem: "is unconditional (no num_class_embeds): classifier-free guidance needs a class-conditional model with a null label")
        }
        guard config.nullClassLabel != nil else {
            throw ModelLoadError(path: what, problem: "has no null label (\"null_class_label\" in unet/config.json), so it has no unconditional output to guide with; train it with label dropout (scripts/teacher/train_ddpm_shapes.py --label-dropout 0.15)")
        }
    }
}

// The one type a server or command keeps for "a model folder": a pixel pipeline (UNet2DModel, ImagePipeline) or a
// latent text-to-image pipeline (TextToImagePipeline), told apart by model_index.json's denoiser class. `fields`
// is the one place that says which request fields a model takes; /v1/models publishes it.
import Foundation

public enum GenerationPipeline: Sendable {
    case pixel(ImagePipeline)
    case text(TextToImagePipeline)

    /// Loads any supported model folder: a diffusers pipeline whose model_index.json lists a UNet2DConditionModel
    /// is a text-to-image pipeline; anything else goes through ImagePipeline.load (pixel UNet2DModel folders).
    /// `extras`: LoRA files fused at load, a decoder folder replacing vae/, a TAESD folder loaded beside it
    /// (text-to-image models only, TextToImagePipeline.load); a scheduler class run on the folder's scheduler
    /// config (any model, as diffusers' `from_config`).
    /// - Throws: ModelLoadError naming the file and the reason (also: extras given for a pixel model).
    public static func load(path: String, name: String? = nil, precision: ConvPrecision? = nil,
                            variant: String? = nil, extras: TextModelExtras = TextModelExtras()) throws -> GenerationPipeline {
        let indexPath = path + "/model_index.json"
        if FileManager.default.fileExists(atPath: indexPath), try ModelIndex(path: indexPath).isTextToImage {
            return .text(try TextToImagePipeline.load(path: path, name: name, variant: variant, decoderPath: extras.decoderPath,
                                                      taesdPath: extras.taesdPath, loras: extras.loras,
                                                      schedulerClass: extras.schedulerClass))
        }
        if !extras.loras.isEmpty || extras.taesdPath != nil || extras.decoderPath != nil {
            throw ModelLoadError(path: path, problem: "is a pixel model (UNet2DModel); --lora and --taesd apply to text-to-image pipelines (model_index.json with a UNet2DConditionModel)")
        }
        let pipeline = try ImagePipeline.load(path: path, name: name, precision: precision)
        guard let schedulerClass = extras.schedulerClass else { return .pixel(pipeline) }
        // A DDPM-family UNet2DModel sampled by another scheduler class from its own config (diffusers from_config).
        guard SamplerRegistry.classNames.contains(schedulerClass) else {
            throw ModelLoadError(path: path, problem: "scheduler class '\(schedulerClass)' (--scheduler) is not one this build runs; choose one of \(SamplerRegistry.classNames.joined(separator: ", "))")
        }
        return .pixel(try pipeline.withScheduler(schedulerClass))
    }

    public var name: String {
        switch self { case .pixel(let p): return p.name; case .text(let p): return p.name }
    }

    public var sampler: any Sampler {
        switch self { case .pixel(let p): return p.sampler; case .text(let p): return p.sampler }
    }

    /// Request fields the model takes (the `fields` array of its /v1/models entry).
    public var fields: [String] {
        switch self { case .pixel(let p): return p.fields; case .text(let p): return p.fields }
    }
}

extension ImagePipeline {
    /// Request fields a pixel model takes: seed, steps, n, label for a class-conditional model, and guidance_scale
    /// for one that `takesClassGuidance`.
    public var fields: [String] {
        (numClasses == nil ? [] : ["label"]) + (takesClassGuidance ? ["guidance_scale"] : []) + ["seed", "steps", "n"]
    }

    /// Whether a request may set a classifier-free guidance scale: a class-conditional model with a null label
    /// sampled by a diffusion sampler (DDIM, DDPM, Euler, DPM-Solver, EDM Heun). A consistency, LCM or TCD student
    /// is not: its guidance, if any, was distilled in (student --teacher-guidance), and its null row is the teacher's
    /// copy, never trained through the student's own objective.
    public var takesClassGuidance: Bool {
        config.nullClassLabel != nil && !(sampler is ConsistencySampler || sampler is LCMSampler || sampler is TCDSampler)
    }
}

/// What a text-to-image model is loaded with beyond its folder (command-line flags): LoRAs fused at load, a
/// decoder folder in place of vae/, a TAESD folder beside it, a scheduler class in place of model_index.json's.
public struct TextModelExtras: Sendable, Equatable {
    public var loras: [LoRASpec]
    public var decoderPath: String?
    public var taesdPath: String?
    /// A SamplerRegistry class run with the folder's scheduler_config.json values, as diffusers'
    /// `pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config)` (Hyper-SD / TCD / LCM LoRAs need it).
    public var schedulerClass: String?
    public init(loras: [LoRASpec] = [], decoderPath: String? = nil, taesdPath: String? = nil, schedulerClass: String? = nil) {
        self.loras = loras
        self.decoderPath = decoderPath
        self.taesdPath = taesdPath
        self.schedulerClass = schedulerClass
    }
    public var isEmpty: Bool { loras.isEmpty && decoderPath == nil && taesdPath == nil && schedulerClass == nil }
}

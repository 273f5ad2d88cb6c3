// How the server describes text-to-image pipelines (OnestepCore's TextToImagePipeline: tokenizer + CLIP text
// encoder + UNet2DConditionModel + sampler + VAE/TAESD decoder from a diffusers StableDiffusionPipeline folder):
// the sizes a request may ask for and how guidance_scale acts. Validation (GenerationParams+Text.swift) and
// /v1/models read these, so the two cannot disagree.
import OnestepCore

/// A size in pixels, width x height.
public struct ImageSize: Sendable, Hashable, CustomStringConvertible {
    public var width: Int
    public var height: Int
    public init(width: Int, height: Int) { (self.width, self.height) = (width, height) }
    public var description: String { "\(width)x\(height)" }
}

/// How a text model uses `guidance_scale`.
public enum GuidanceSupport: Sendable, Equatable {
    /// Distilled one-step models (SD-Turbo, SDXS, TCD at guidance 0): guidance_scale is not a field.
    case none
    /// Classifier-free guidance (two UNet branches; the negative prompt is the unconditional one): scale >= 1
    /// runs CFG as diffusers does (`do_classifier_free_guidance = guidance_scale > 1`).
    case classifierFree(default: Double)
    /// A guidance-scale embedding fed to the UNet (LCM's w-embedding, `time_cond_proj_dim`): one branch; negative
    /// prompts have no effect (diffusers' LatentConsistencyModelPipeline takes none).
    case embedding(default: Double)

    public var defaultScale: Double {
        switch self {
        case .none: return 0
        case .classifierFree(let d), .embedding(let d): return d
        }
    }
}

/// The sizes a text model accepts: multiples of `multiple` pixels per side within `range`, plus `extra`
/// (the model's own size, e.g. the golden tiny pipelines' 64x64, which is below SD's 256).
public struct SizeRule: Sendable, Equatable {
    public var range: ClosedRange<Int>
    public var multiple: Int
    public var extra: Set<Int>

    /// SD-family latent models: 256...768 pixels a side in multiples of 8 (one latent cell is 8x8 pixels),
    /// plus the model's own default side.
    public static func stableDiffusion(ownSide: Int, latentScale: Int = 8) -> SizeRule {
        SizeRule(range: 256...768, multiple: latentScale, extra: [ownSide])
    }

    public func allows(_ side: Int) -> Bool {
        extra.contains(side) || (range.contains(side) && side % multiple == 0)
    }

    /// What to send, for error messages.
    public var describe: String {
        let own = extra.sorted().filter { !range.contains($0) }.map(String.init)
        return "multiples of \(multiple) in \(range.lowerBound)...\(range.upperBound)" + (own.isEmpty ? "" : " or \(own.joined(separator: ", "))")
    }
}

extension TextToImagePipeline {
    /// The size generated when a request sends none: unet sample_size x the decoder's scale factor.
    var defaultImageSize: ImageSize { ImageSize(width: defaultSize, height: defaultSize) }

    /// SD-family sizes in multiples of the decoder's scale factor, plus the model's own size.
    var sizeRule: SizeRule { .stableDiffusion(ownSide: defaultSize, latentScale: decoder.scaleFactor) }

    /// How guidance_scale acts here, and the scale used when a request sends none: 0 (no guidance, one UNet call
    /// per step) for CFG-capable models, since the models served are distilled to run without it (SD-Turbo, SDXS,
    /// TCD); 8.5 for LCM's guidance embedding (diffusers' LatentConsistencyModelPipeline default).
    var guidance: GuidanceSupport {
        usesGuidanceEmbedding ? .embedding(default: 8.5) : .classifierFree(default: 0)
    }
}

extension GenerationPipeline {
    /// The size generated when a request sends none.
    var defaultImageSize: ImageSize {
        switch self {
        case .pixel(let p): return ImageSize(width: p.imageSize, height: p.imageSize)
        case .text(let t): return t.defaultImageSize
        }
    }
}

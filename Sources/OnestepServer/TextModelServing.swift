// What the server needs of a text-to-image pipeline (tokenizer + CLIP text encoder + UNet2DConditionModel +
// sampler + VAE/TAESD decoder, loaded from a diffusers StableDiffusionPipeline folder). The pipeline lives in
// OnestepCore/Pipelines; this protocol is the seam the server batches through, so the HTTP layer never sees
// networks. The two calls are separate because prompt embeddings are cached across requests (`LRUCache`, keyed by
// (model, prompt)) while the denoising runs per batch.
import OnestepCore
import PNGCodec

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

/// One image of a text-to-image batch.
public struct TextImageRequest: Sendable, Hashable {
    public var seed: UInt64
    public var prompt: String
    /// The unconditional branch's text under classifier-free guidance ("" when the client sent none, as diffusers).
    public var negativePrompt: String
    public init(seed: UInt64, prompt: String, negativePrompt: String = "") {
        (self.seed, self.prompt, self.negativePrompt) = (seed, prompt, negativePrompt)
    }
}

/// A loaded text-to-image pipeline as the server drives it.
///
/// Implementations must be batch invariant: image i of `generate` depends only on request i (its seed, prompt
/// embeddings) and the batch's shared settings, never on the other images or their count, so one request answers
/// the same bytes alone or inside any batch.
public protocol TextToImageModel: Sendable {
    var name: String { get }
    /// Chosen by scheduler/scheduler_config.json `_class_name`; gives step range and default.
    var sampler: any Sampler { get }
    /// The size generated when a request sends none: unet sample_size x the VAE's scale factor.
    var defaultSize: ImageSize { get }
    var sizeRule: SizeRule { get }
    var guidance: GuidanceSupport { get }
    /// Parameters of all components (for /v1/models).
    var parameterCount: Int { get }
    /// (1, L, D) last hidden state of the text encoder for one prompt (tokenized, padded/truncated to L).
    func encodePrompt(_ prompt: String) throws -> Tensor
    /// One 8-bit RGB image per request (diffusers' `output_type="np"` image rounded as `round(x * 255)`).
    /// - Parameters:
    ///   - prompts: (1, L, D) per request, from `encodePrompt`.
    ///   - negatives: (1, L, D) per request under classifier-free guidance, else nil.
    ///   - steps: in `sampler.stepRange`; size: allowed by `sizeRule`; guidanceScale: the batch's one scale.
    func generate(_ requests: [TextImageRequest], prompts: [Tensor], negatives: [Tensor]?, steps: Int,
                  size: ImageSize, guidanceScale: Double) throws -> [PixelImage]
}

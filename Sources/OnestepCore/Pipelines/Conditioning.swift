// What a batch is conditioned on, as an explicit value the pipeline turns into the sampler's model call.
// Classifier-free guidance and guidance embeddings belong here, not in samplers: a sampler sees one network
// output per model call whatever produced it.
import Foundation

public enum Conditioning: Sendable {
    /// An unconditional model.
    case none
    /// One class index per image (UNet2DModel num_class_embeds).
    case classLabels([Int])
    /// Classifier-free guidance of a class-conditional UNet with a null label (UNetConfig.nullClassLabel): one
    /// forward of 2N images (N with the null label, then the N labels), out = uncond + scale * (cond - uncond)
    /// on the raw network output, diffusers' order of operations (TextConditioning.combine).
    case guidedClassLabels([Int], null: Int, scale: Float)
    /// Text embeddings (N, L, D) for a UNet2DConditionModel, with optional guidance.
    case text(TextConditioning)

    /// Runs the denoiser `(x, t, labels)` under this conditioning. x (N, C, H, W).
    /// A text conditioning needs a text-conditioned denoiser; pixel pipelines never build one (it is refused at
    /// request parsing), so reaching it here is a programming error.
    func apply(_ x: Tensor, _ t: Float, denoise: (Tensor, Float, [Int]?) -> Tensor) -> Tensor {
        switch self {
        case .none: return denoise(x, t, nil)
        case .classLabels(let l): return denoise(x, t, l)
        case .guidedClassLabels(let l, let null, let w):
            let n = x.shape[0], per = x.count / max(n, 1)
            let both = denoise(Tensor(shape: [2 * n] + x.shape.dropFirst(), data: x.data + x.data),
                               t, Array(repeating: null, count: n) + l)  // (2N, C, H, W): null rows, then labelled
            let u = Tensor(shape: x.shape, data: Array(both.data[0..<(n * per)]))
            let c = Tensor(shape: x.shape, data: Array(both.data[(n * per)...]))
            return TextConditioning.combine(unconditional: u, conditional: c, scale: w)
        case .text: preconditionFailure("text conditioning given to a class-conditional denoiser")
        }
    }
}

/// Text conditioning of a batch: prompt embeddings and how guidance is applied.
public struct TextConditioning: Sendable {
    /// (N, L, D) encoder hidden states of the prompts.
    public var embeddings: Tensor
    public var guidance: Guidance

    public enum Guidance: Sendable {
        /// One network call per step, no guidance (SD-Turbo, SDXS, TCD at guidance 0).
        case none
        /// Guidance-scale embedding fed to the UNet (LCM's w-embedding, `timestep_cond`): one call per step. (N, E)
        case embedding(Tensor)
        /// Classifier-free guidance: the unconditional (or negative-prompt) embeddings (N, L, D) and the scale w;
        /// out = uncond + w * (cond - uncond), diffusers' order of operations.
        case classifierFree(unconditional: Tensor, scale: Float)
    }

    public init(embeddings: Tensor, guidance: Guidance = .none) {
        self.embeddings = embeddings
        self.guidance = guidance
    }

    /// Combines CFG branch outputs as diffusers does: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).
    public static func combine(unconditional u: Tensor, conditional c: Tensor, scale w: Float) -> Tensor {
        Tensor(shape: c.shape, data: zip(u.data, c.data).map { $0 + w * ($1 - $0) })
    }
}

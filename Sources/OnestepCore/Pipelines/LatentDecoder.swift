// The decoder of a latent pipeline's `vae/` folder: AutoencoderKL (SD's VAE) or AutoencoderTiny (TAESD), chosen
// by the class model_index.json names. The pipeline divides latents by `scaling_factor` before decoding, as
// diffusers' StableDiffusionPipeline does (`vae.decode(latents / vae.config.scaling_factor)`) for both classes.
import Foundation

public enum LatentDecoder: Sendable {
    case kl(AutoencoderKLDecoder)
    case tiny(AutoencoderTinyDecoder)

    /// Loads `directory` (config.json + diffusion_pytorch_model[.variant].safetensors) as the class named in
    /// model_index.json. The encoder's tensors are skipped; any other tensor the config does not use is refused.
    /// Throws ModelLoadError naming the file (config errors name config.json and the key).
    public static func load(directory: String, className: String, variant: String? = nil) throws -> LatentDecoder {
        guard className == "AutoencoderKL" || className == "AutoencoderTiny" else {
            throw ModelLoadError(path: directory, problem: "holds a \(className), which this build cannot decode with; supported decoders: AutoencoderKL, AutoencoderTiny")
        }
        return className == "AutoencoderKL" ? .kl(try AutoencoderKLDecoder.load(directory: directory, variant: variant))
                                            : .tiny(try AutoencoderTinyDecoder.load(directory: directory, variant: variant))
    }

    public var className: String {
        switch self { case .kl: return "AutoencoderKL"; case .tiny: return "AutoencoderTiny" }
    }
    public var latentChannels: Int {
        switch self { case .kl(let d): return d.config.latentChannels; case .tiny(let d): return d.config.latentChannels }
    }
    public var scalingFactor: Float {
        switch self { case .kl(let d): return d.config.scalingFactor; case .tiny(let d): return d.config.scalingFactor }
    }
    /// Pixels per latent position: diffusers' vae_scale_factor, 2^(len(block_out_channels) - 1).
    public var scaleFactor: Int {
        switch self {
        case .kl(let d): return 1 << (d.config.blockOutChannels.count - 1)
        case .tiny(let d): return 1 << (d.config.decoderBlockOutChannels.count - 1)
        }
    }

    /// `vae.decode(latents / scaling_factor).sample`: latents (N, latent_channels, h, w) as the sampler leaves them
    /// -> images (N, 3, h * scaleFactor, w * scaleFactor) in about [-1, 1].
    public func decodeScaled(_ latents: Tensor, threads: Int = 1) throws -> Tensor {
        let s = scalingFactor
        let scaled = Tensor(shape: latents.shape, data: latents.data.map { $0 / s })
        return try decodeRaw(scaled, threads: threads)
    }

    /// `vae.decode(latents).sample` without the scaling (what run-pipeline's vae_latents -> vae_decoded checks).
    public func decodeRaw(_ latents: Tensor, threads: Int = 1) throws -> Tensor {
        switch self {
        case .kl(let d): return try d.decode(latents, threads: threads)
        case .tiny(let d): return try d.decode(latents, threads: threads)
        }
    }
}

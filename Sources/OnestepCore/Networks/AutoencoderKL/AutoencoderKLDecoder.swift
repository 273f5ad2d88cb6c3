// The decoding half of AutoencoderKL (matches diffusers autoencoder_kl.py _decode: post_quant_conv, then
// vae.py Decoder: conv_in, UNetMidBlock2D (resnet, one-head attention over all positions, resnet), UpDecoderBlock2D
// x levels, conv_norm_out, SiLU, conv_out). Latents go in as the pipeline hands them to vae.decode, i.e. already
// divided by scaling_factor: this network does not scale.
import Foundation

public struct AutoencoderKLDecoder: Sendable {
    public let config: AutoencoderKLConfig
    public let plan: LatentPlan
    public let weights: LatentWeights

    /// The layer plan of `config`'s decoder; keys are those of the whole AutoencoderKL checkpoint.
    public static func plan(_ cfg: AutoencoderKLConfig) -> LatentPlan {
        let b = cfg.blockOutChannels, groups = cfg.normNumGroups, eps: Float = 1e-6, top = b[b.count - 1]
        var steps: [LatentStep] = []
        let lc = cfg.latentChannels
        if cfg.usePostQuantConv {
            steps.append(.conv(ConvSpec(prefix: "post_quant_conv", geometry: ConvGeometry(inChannels: lc, outChannels: lc, kernel: 1, padding: 0), bias: true), .none))
        }
        steps.append(.conv(ConvSpec(prefix: "decoder.conv_in", geometry: ConvGeometry(inChannels: lc, outChannels: top, kernel: 3, padding: 1), bias: true), .none))
        steps.append(.resnet(ResnetSpec("decoder.mid_block.resnets.0", in: top, out: top, temb: nil, groups: groups, eps: eps)))
        if cfg.midBlockAddAttention {
            // attention_head_dim = width: one head over all H*W positions.
            let p = "decoder.mid_block.attentions.0"
            steps.append(.spatialAttention(SpatialAttentionSpec(
                norm: NormSpec(prefix: p + ".group_norm", channels: top, groups: groups, eps: eps),
                attention: AttentionSpec(p, queryDim: top, contextDim: nil, heads: 1, qkvBias: true), rescaleOutputFactor: 1)))
        }
        steps.append(.resnet(ResnetSpec("decoder.mid_block.resnets.1", in: top, out: top, temb: nil, groups: groups, eps: eps)))
        var output = top
        for i in 0..<b.count {
            let input = output
            output = b[b.count - 1 - i]
            for j in 0..<(cfg.layersPerBlock + 1) {
                steps.append(.resnet(ResnetSpec("decoder.up_blocks.\(i).resnets.\(j)", in: j == 0 ? input : output, out: output, temb: nil, groups: groups, eps: eps)))
            }
            if i < b.count - 1 {
                steps.append(.conv(ConvSpec(prefix: "decoder.up_blocks.\(i).upsamplers.0.conv", geometry: ConvGeometry(inChannels: output, outChannels: output, kernel: 3, padding: 1), bias: true), .double))
            }
        }
        steps.append(.groupNormSiLU(NormSpec(prefix: "decoder.conv_norm_out", channels: b[0], groups: groups, eps: eps)))
        steps.append(.conv(ConvSpec(prefix: "decoder.conv_out", geometry: ConvGeometry(inChannels: b[0], outChannels: cfg.outChannels, kernel: 3, padding: 1), bias: true), .none))
        return LatentPlan(steps: steps, inChannels: lc)
    }

    public init(config cfg: AutoencoderKLConfig, weights src: WeightSource) throws {
        config = cfg
        plan = Self.plan(cfg)
        weights = try LatentWeights(plan: plan, source: src)
    }

    /// Loads the decoder from a diffusers `vae/` folder. The encoder's tensors (encoder.*, quant_conv.*) are
    /// skipped; any other tensor the config does not use is refused.
    public static func load(directory: String, variant: String? = nil) throws -> AutoencoderKLDecoder {
        try ComponentFolder.load(directory: directory, variant: variant, ignoring: ["encoder.", "quant_conv."]) { configPath, src in
            try AutoencoderKLDecoder(config: try AutoencoderKLConfig.load(path: configPath), weights: src)
        }
    }

    /// `vae.decode(latents).sample`: latents (N, latent_channels, h, w) -> images (N, out_channels, 2^(levels-1) h,
    /// 2^(levels-1) w), roughly in [-1, 1], not clamped. Throws LatentInputError on a wrong shape.
    public func decode(_ latents: Tensor, pool: BufferPool = .forCurrentThread, threads: Int = 1,
                        profile: LatentProfile? = nil) throws -> Tensor {
        guard latents.rank == 4, latents.shape[0] >= 1, latents.shape[1] == config.latentChannels, latents.shape[2] >= 1, latents.shape[3] >= 1 else {
            throw LatentInputError(problem: "latents have shape \(latents.shape); the VAE decoder needs (N, \(config.latentChannels), h, w)")
        }
        try LatentRunner.checkLatentSize(height: latents.shape[2], width: latents.shape[3])
        let y = LatentRunner(plan: plan, weights: weights, threads: threads, profile: profile).run(ChannelMajor.fromNCHW(latents, pool: pool), pool: pool)
        defer { y.release(to: pool) }
        return ChannelMajor.toNCHW(y)
    }

    public func flops(batch: Int, height: Int, width: Int) -> Double {
        plan.flops(batch: batch, height: height, width: width).flops
    }
}

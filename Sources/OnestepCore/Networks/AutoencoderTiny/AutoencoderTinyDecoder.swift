// The decoder of AutoencoderTiny / TAESD (matches diffusers autoencoders/vae.py DecoderTiny.forward, which
// AutoencoderTiny.decode calls directly): x = tanh(x / 3) * 3, then decoder.layers = [conv, ReLU,
// (AutoencoderTinyBlock x num_blocks, Upsample(2, nearest), conv without bias) per level, the last level ending
// in a conv with bias to out_channels], and the [0, 1] output mapped to [-1, 1] by 2x - 1. Latents go in as the
// pipeline hands them to vae.decode (already divided by scaling_factor, 1.0 for TAESD): this network does not
// scale or shift them.
import Foundation

public struct AutoencoderTinyDecoder: Sendable {
    public let config: AutoencoderTinyConfig
    public let plan: LatentPlan
    public let weights: LatentWeights

    /// The layer plan; `decoder.layers.K` is the K-th module of DecoderTiny's nn.Sequential, as in the checkpoint.
    public static func plan(_ cfg: AutoencoderTinyConfig) -> LatentPlan {
        var steps: [LatentStep] = [.tanhClamp(3)]
        let c = cfg.decoderBlockOutChannels[0]
        func conv3(_ k: Int, _ cin: Int, _ cout: Int, bias: Bool) -> ConvSpec {
            ConvSpec(prefix: "decoder.layers.\(k)", geometry: ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1), bias: bias)
        }
        steps += [.conv(conv3(0, cfg.latentChannels, c, bias: true), .none), .relu]   // layers.1 is the ReLU
        var k = 2
        for (i, blocks) in cfg.numDecoderBlocks.enumerated() {
            let width = cfg.decoderBlockOutChannels[i], isFinal = i == cfg.numDecoderBlocks.count - 1
            for _ in 0..<blocks {
                let p = "decoder.layers.\(k)"
                let convs = [0, 2, 4].map {
                    ConvSpec(prefix: "\(p).conv.\($0)", geometry: ConvGeometry(inChannels: width, outChannels: width, kernel: 3, padding: 1), bias: true)
                }
                steps.append(.tinyBlock(TinyBlockSpec(convs: convs, skip: nil)))   // in == out: the skip is Identity
                k += 1
            }
            if isFinal {
                steps.append(.conv(conv3(k, width, cfg.outChannels, bias: true), .none))
            } else {
                k += 1   // layers.k is nn.Upsample: fused into the next conv's input reads
                steps.append(.conv(conv3(k, width, width, bias: false), .double))
            }
            k += 1
        }
        steps.append(.affine(scale: 2, shift: -1))
        return LatentPlan(steps: steps, inChannels: cfg.latentChannels)
    }

    public init(config cfg: AutoencoderTinyConfig, weights src: WeightSource) throws {
        config = cfg
        plan = Self.plan(cfg)
        weights = try LatentWeights(plan: plan, source: src)
    }

    /// Loads the decoder from a diffusers AutoencoderTiny `vae/` folder; encoder.* tensors are skipped, any other
    /// tensor the config does not use is refused.
    public static func load(directory: String, variant: String? = nil) throws -> AutoencoderTinyDecoder {
        try ComponentFolder.load(directory: directory, variant: variant, ignoring: ["encoder."]) { configPath, src in
            try AutoencoderTinyDecoder(config: try AutoencoderTinyConfig.load(path: configPath), weights: src)
        }
    }

    /// `vae.decode(latents).sample`: latents (N, latent_channels, h, w) -> images (N, out_channels,
    /// 2^(levels-1) h, 2^(levels-1) w) in about [-1, 1]. Throws LatentInputError on a wrong shape.
    public func decode(_ latents: Tensor, pool: BufferPool = .forCurrentThread, threads: Int = 1,
                        profile: LatentProfile? = nil) throws -> Tensor {
        guard latents.rank == 4, latents.shape[0] >= 1, latents.shape[1] == config.latentChannels, latents.shape[2] >= 1, latents.shape[3] >= 1 else {
            throw LatentInputError(problem: "latents have shape \(latents.shape); the TAESD decoder needs (N, \(config.latentChannels), h, w)")
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

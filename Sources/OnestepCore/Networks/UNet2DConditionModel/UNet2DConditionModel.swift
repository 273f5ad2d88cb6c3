// UNet2DConditionModel, the denoiser of the SD 1.x / 2.x family (matches diffusers unets/unet_2d_condition.py
// forward, with the blocks of unet_2d_blocks.py and transformers/transformer_2d.py): the config becomes a layer
// plan whose layer names are the checkpoint keys; weights are packed once for the fast kernels.
import Foundation

/// Bad input to a latent network's forward pass: what was wrong and what was expected.
public struct LatentInputError: Error, CustomStringConvertible, Equatable {
    public var problem: String
    public var description: String { problem }
}

public struct UNet2DConditionModel: Sendable {
    public let config: UNet2DConditionConfig
    public let plan: LatentPlan
    public let weights: LatentWeights
    // Time embedding MLP (timestep_embedding.py TimestepEmbedding), run once per batch on (N, .) rows with BLAS.
    let linear1: (weight: Tensor, bias: Tensor)   // (T, C0), (T)
    let linear2: (weight: Tensor, bias: Tensor)   // (T, T), (T)
    let condProjection: Tensor?                   // (C0, time_cond_proj_dim), no bias

    /// The layer plan of `config` (no weights): conv_in, down blocks, mid block, up blocks, conv_norm_out, conv_out.
    public static func plan(_ cfg: UNet2DConditionConfig) -> LatentPlan {
        var steps: [LatentStep] = []
        var skipChannels: [Int] = []
        let temb = cfg.timeEmbedDim, groups = cfg.normNumGroups, eps = cfg.normEps, b = cfg.blockOutChannels
        func transformer(_ p: String, _ c: Int, level: Int, onlyCross: Bool) -> LatentStep {
            .transformer(Transformer2DSpec(p, channels: c, heads: cfg.heads[level], layers: cfg.transformerLayersPerBlock[level],
                                           contextDim: cfg.crossAttentionDim[level], groups: groups,
                                           linearProjection: cfg.useLinearProjection, onlyCrossAttention: onlyCross))
        }
        let kIn = cfg.convInKernel
        steps += [.conv(ConvSpec(prefix: "conv_in", geometry: ConvGeometry(inChannels: cfg.inChannels, outChannels: b[0], kernel: kIn, padding: (kIn - 1) / 2), bias: true), .none), .pushSkip]
        skipChannels.append(b[0])
        var output = b[0]
        for i in 0..<cfg.levels {
            let input = output
            output = b[i]
            for j in 0..<cfg.layersPerBlock[i] {
                let p = "down_blocks.\(i)"
                steps.append(.resnet(ResnetSpec("\(p).resnets.\(j)", in: j == 0 ? input : output, out: output, temb: temb, groups: groups, eps: eps)))
                if cfg.downBlockTypes[i] == .crossAttnDown {
                    steps.append(transformer("\(p).attentions.\(j)", output, level: i, onlyCross: cfg.onlyCrossAttention[i]))
                }
                steps.append(.pushSkip)
                skipChannels.append(output)
            }
            if i < cfg.levels - 1 {
                // Downsample2D(use_conv=True): padding 0 pads (0, 1, 0, 1) first, then a stride-2 conv.
                let pad = cfg.downsamplePadding
                let g = ConvGeometry(inChannels: output, outChannels: output, kernelH: 3, kernelW: 3, stride: 2,
                                     padTop: pad, padLeft: pad, padBottom: pad == 0 ? 1 : pad, padRight: pad == 0 ? 1 : pad)
                steps += [.conv(ConvSpec(prefix: "down_blocks.\(i).downsamplers.0.conv", geometry: g, bias: true), .none), .pushSkip]
                skipChannels.append(output)
            }
        }
        if cfg.midBlock {
            let c = b[cfg.levels - 1], last = cfg.levels - 1
            steps.append(.resnet(ResnetSpec("mid_block.resnets.0", in: c, out: c, temb: temb, groups: groups, eps: eps, outputScaleFactor: cfg.midBlockScaleFactor)))
            steps.append(transformer("mid_block.attentions.0", c, level: last, onlyCross: cfg.midBlockOnlyCrossAttention))
            steps.append(.resnet(ResnetSpec("mid_block.resnets.1", in: c, out: c, temb: temb, groups: groups, eps: eps, outputScaleFactor: cfg.midBlockScaleFactor)))
        }
        // Up blocks walk the levels in reverse: level index i of up block u is levels-1-u (diffusers reverses
        // heads, cross dims, layer counts and only_cross_attention the same way).
        var current = b[cfg.levels - 1]
        for u in 0..<cfg.levels {
            let level = cfg.levels - 1 - u
            let out = b[level]
            for j in 0..<(cfg.layersPerBlock[level] + 1) {
                let p = "up_blocks.\(u)"
                let skip = skipChannels.removeLast()
                steps += [.concatSkip, .resnet(ResnetSpec("\(p).resnets.\(j)", in: current + skip, out: out, temb: temb, groups: groups, eps: eps))]
                current = out
                if cfg.upBlockTypes[u] == .crossAttnUp {
                    steps.append(transformer("\(p).attentions.\(j)", out, level: level, onlyCross: cfg.onlyCrossAttention[level]))
                }
            }
            if u < cfg.levels - 1 {
                // Upsample2D(use_conv=True): nearest to the next skip's size (upsample_size), then a 3x3 conv.
                steps.append(.conv(ConvSpec(prefix: "up_blocks.\(u).upsamplers.0.conv", geometry: ConvGeometry(inChannels: out, outChannels: out, kernel: 3, padding: 1), bias: true), .toSkip))
            }
        }
        let kOut = cfg.convOutKernel
        steps.append(.groupNormSiLU(NormSpec(prefix: "conv_norm_out", channels: b[0], groups: groups, eps: eps)))
        steps.append(.conv(ConvSpec(prefix: "conv_out", geometry: ConvGeometry(inChannels: b[0], outChannels: cfg.outChannels, kernel: kOut, padding: (kOut - 1) / 2), bias: true), .none))
        return LatentPlan(steps: steps, inChannels: cfg.inChannels)
    }

    /// Builds the plan and loads (and packs) every weight from `src`. Errors name the missing or mis-shaped key.
    public init(config cfg: UNet2DConditionConfig, weights src: WeightSource) throws {
        config = cfg
        plan = Self.plan(cfg)
        weights = try LatentWeights(plan: plan, source: src)
        let c0 = cfg.blockOutChannels[0], t = cfg.timeEmbedDim
        linear1 = (try src.tensor("time_embedding.linear_1.weight", shape: [t, c0]), try src.tensor("time_embedding.linear_1.bias", shape: [t]))
        linear2 = (try src.tensor("time_embedding.linear_2.weight", shape: [t, t]), try src.tensor("time_embedding.linear_2.bias", shape: [t]))
        condProjection = try cfg.timeCondProjDim.map { try src.tensor("time_embedding.cond_proj.weight", shape: [c0, $0]) }
    }

    /// Loads a diffusers `unet/` folder: config.json and diffusion_pytorch_model.safetensors. Refuses a weight
    /// file holding tensors the config does not use (they belong to another architecture).
    /// `loras`: LoRA files (with their scales) fused into the weights as they are read, before packing; their
    /// UNet layers are matched against `loraTargets(config)` (LoRAFusion.swift).
    /// - Throws: ModelLoadError naming config.json, the weights file or the LoRA file and the reason.
    public static func load(directory: String, variant: String? = nil,
                            loras: [(file: LoRAFile, scale: Float)] = []) throws -> UNet2DConditionModel {
        try ComponentFolder.load(directory: directory, variant: variant) { configPath, src in
            let config = try UNet2DConditionConfig.load(path: configPath)
            let fusion = try LoRAFusion(files: loras, targets: loraTargets(config))
            guard !fusion.isEmpty else { return try UNet2DConditionModel(config: config, weights: src) }
            let fusing = FusingWeightSource(base: src, fusion: fusion)
            let model = try UNet2DConditionModel(config: config, weights: fusing)
            try fusing.checkAllFused()
            return model
        }
    }

    /// Every weight of the UNet a LoRA may adapt: the plan's convolutions and projections plus the time
    /// embedding's linears (LCM-LoRA and kohya files adapt time_embedding.linear_1 / linear_2 too).
    public static func loraTargets(_ cfg: UNet2DConditionConfig) -> LoRATargets {
        let c0 = cfg.blockOutChannels[0], t = cfg.timeEmbedDim
        var params = plan(cfg).parameters
        params += [("time_embedding.linear_1.weight", [t, c0]), ("time_embedding.linear_2.weight", [t, t])]
        if let d = cfg.timeCondProjDim { params.append(("time_embedding.cond_proj.weight", [c0, d])) }
        return LoRATargets(component: .unet, parameters: params)
    }

    /// silu(time_embedding(time_proj(t) [+ cond_proj(timestep_cond)])): what every resnet's time_emb_proj reads.
    /// (N) timesteps, (N, time_cond_proj_dim) condition -> (N, T).
    public func activatedTimeEmbedding(timesteps: [Float], timestepCond: Tensor?) -> Tensor {
        var e = TimestepEmbedding.sinusoidal(timesteps, dim: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos,
                                             freqShift: config.freqShift)
        if let cond = timestepCond, let w = condProjection {
            let add = Linear.forward(cond, weight: w, bias: nil)
            for i in e.data.indices { e.data[i] += add.data[i] }
        }
        let h = Activations.silu(Linear.forward(e, weight: linear1.weight, bias: linear1.bias))
        return Activations.silu(Linear.forward(h, weight: linear2.weight, bias: linear2.bias))
    }

    /// The noise (or v / x0) prediction, as `unet(sample, timesteps, encoder_hidden_states, timestep_cond).sample`.
    /// - sample (N, in_channels, H, W), any H, W >= 1; timesteps (N); encoderHiddenStates (N, Lc, cross_attention_dim);
    ///   timestepCond (N, time_cond_proj_dim), only for a config with time_cond_proj_dim (LCM), optional there.
    /// - Returns (N, out_channels, H, W). Throws LatentInputError on a shape that does not fit the config.
    public func forward(_ sample: Tensor, timesteps: [Float], encoderHiddenStates ehs: Tensor, timestepCond: Tensor? = nil,
                        pool: BufferPool = .forCurrentThread, threads: Int = 1,
                        profile: LatentProfile? = nil) throws -> Tensor {
        try checkInputs(sample, timesteps: timesteps, encoderHiddenStates: ehs, timestepCond: timestepCond)
        let n = sample.shape[0], lc = ehs.shape[1], dc = ehs.shape[2]
        var input = sample
        if config.centerInputSample { input.data = input.data.map { 2 * $0 - 1 } }
        let temb = activatedTimeEmbedding(timesteps: timesteps, timestepCond: timestepCond)
        // (N, Lc, Dc) -> (Dc, N, Lc): every text projection is then one GEMM over the batch's tokens.
        let ctx = pool.acquire(dc * n * lc)
        defer { pool.release(ctx, count: dc * n * lc) }
        for i in 0..<n { for t in 0..<lc { for d in 0..<dc { ctx[d * n * lc + i * lc + t] = ehs.data[(i * lc + t) * dc + d] } } }
        let x = ChannelMajor.fromNCHW(input, pool: pool)
        let y = LatentRunner(plan: plan, weights: weights, threads: threads, profile: profile)
            .run(x, timeEmbedding: temb, context: LatentContext(data: ctx, channels: dc, batch: n, length: lc), pool: pool)
        defer { y.release(to: pool) }
        return ChannelMajor.toNCHW(y)
    }

    func checkInputs(_ sample: Tensor, timesteps: [Float], encoderHiddenStates ehs: Tensor, timestepCond: Tensor?) throws {
        let cfg = config
        guard sample.rank == 4, sample.shape[0] >= 1, sample.shape[1] == cfg.inChannels, sample.shape[2] >= 1, sample.shape[3] >= 1 else {
            throw LatentInputError(problem: "sample has shape \(sample.shape); the UNet needs (N, \(cfg.inChannels), H, W)")
        }
        try LatentRunner.checkLatentSize(height: sample.shape[2], width: sample.shape[3])
        let n = sample.shape[0]
        guard timesteps.count == n, timesteps.allSatisfy({ $0.isFinite }) else {
            throw LatentInputError(problem: "\(timesteps.count) timesteps for \(n) samples; give one finite timestep per sample")
        }
        guard ehs.rank == 3, ehs.shape[0] == n, ehs.shape[1] >= 1, ehs.shape[2] == cfg.crossAttentionDim[0] else {
            throw LatentInputError(problem: "encoder_hidden_states has shape \(ehs.shape); the UNet needs (\(n), tokens, \(cfg.crossAttentionDim[0]))")
        }
        if let cond = timestepCond {
            guard let d = cfg.timeCondProjDim else {
                throw LatentInputError(problem: "timestep_cond given but the config has no time_cond_proj_dim; leave it out")
            }
            guard cond.shape == [n, d] else {
                throw LatentInputError(problem: "timestep_cond has shape \(cond.shape); the UNet needs (\(n), \(d))")
            }
        }
    }

    /// FLOPs of one forward pass on `batch` latents of `height` x `width` with `tokens` text tokens.
    public func flops(batch: Int, height: Int, width: Int, tokens: Int = 77) -> Double {
        plan.flops(batch: batch, height: height, width: width, contextLength: tokens).flops
    }
}

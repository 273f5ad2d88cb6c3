// Down, mid and up blocks of UNet2DModel (matches diffusers models/unets/unet_2d_blocks.py: DownBlock2D,
// AttnDownBlock2D, ResnetDownsampleBlock2D, UNetMidBlock2D, UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D,
// as get_down_block / get_up_block build them for UNet2DModel).

/// The resampler at the end of a down or up block.
public enum BlockResampler: Sendable {
    /// Downsample2D(use_conv=True): 3x3 stride-2 conv (key ".conv").
    case strideConv(Conv2DLayer)
    /// Upsample2D(use_conv=True): nearest 2x then 3x3 conv (key ".conv").
    case upsampleConv(Conv2DLayer)
    /// ResnetBlock2D(down=True) or (up=True).
    case resnet(ResnetBlock)

    func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        switch self {
        case .strideConv(let conv): return conv(x)
        case .upsampleConv(let conv): return conv(Resample.upsampleNearest2x(x))
        case .resnet(let block): return block(x, activatedTemb: activatedTemb)
        }
    }

    var parameters: [(String, Tensor)] {
        switch self {
        case .strideConv(let c), .upsampleConv(let c): return c.parameters
        case .resnet(let r): return r.parameters
        }
    }
}

public struct DownBlock: Sendable {
    public var type: DownBlockType
    public var resnets: [ResnetBlock]
    public var attentions: [AttentionBlock]
    public var downsampler: BlockResampler?

    init(index i: Int, config cfg: UNetConfig, in cin: Int, out cout: Int, isFinal: Bool, _ src: WeightSource) throws {
        let prefix = "down_blocks.\(i)"
        type = cfg.downBlockTypes[i]
        resnets = try (0..<cfg.layersPerBlock).map { j in
            try ResnetBlock("\(prefix).resnets.\(j)", src, in: j == 0 ? cin : cout, out: cout, temb: cfg.timeEmbedDim,
                            groups: cfg.normNumGroups, eps: cfg.normEps, conditioning: cfg.timeConditioning)
        }
        attentions = type.hasAttention ? try (0..<cfg.layersPerBlock).map { j in
            try AttentionBlock("\(prefix).attentions.\(j)", src, channels: cout, headDim: cfg.attentionHeadDim,
                               normGroups: cfg.normNumGroups, eps: cfg.normEps)
        } : []
        guard !isFinal else { downsampler = nil; return }
        // DownBlock2D always uses a conv; ResnetDownsampleBlock2D always a resnet; AttnDownBlock2D follows downsample_type.
        let useResnet = type == .resnetDownsample || (type == .attnDown && cfg.downsampleType == .resnet)
        if useResnet {
            downsampler = .resnet(try ResnetBlock("\(prefix).downsamplers.0", src, in: cout, out: cout, temb: cfg.timeEmbedDim,
                                                  groups: cfg.normNumGroups, eps: cfg.normEps,
                                                  conditioning: cfg.timeConditioning, resample: .down))
        } else {
            let p = cfg.downsamplePadding
            // padding=0 pads (left 0, right 1, top 0, bottom 1) before the conv (diffusers Downsample2D).
            let g = ConvGeometry(inChannels: cout, outChannels: cout, kernelH: 3, kernelW: 3, stride: 2,
                                 padTop: p, padLeft: p, padBottom: p == 0 ? 1 : p, padRight: p == 0 ? 1 : p)
            downsampler = .strideConv(try Conv2DLayer("\(prefix).downsamplers.0.conv", src, geometry: g))
        }
    }

    /// Returns the block output and the skip tensors it adds (one per resnet, plus the resampled one).
    func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> (Tensor, [Tensor]) {
        var h = x
        var skips: [Tensor] = []
        for (j, resnet) in resnets.enumerated() {
            h = resnet(h, activatedTemb: activatedTemb)
            if !attentions.isEmpty { h = attentions[j](h) }
            skips.append(h)
        }
        if let downsampler {
            h = downsampler(h, activatedTemb: activatedTemb)
            skips.append(h)
        }
        return (h, skips)
    }

    var parameters: [(String, Tensor)] {
        resnets.flatMap(\.parameters) + attentions.flatMap(\.parameters) + (downsampler?.parameters ?? [])
    }
}

public struct MidBlock: Sendable {
    public var resnets: [ResnetBlock]
    public var attention: AttentionBlock?

    init(config cfg: UNetConfig, _ src: WeightSource) throws {
        let c = cfg.blockOutChannels.last!
        resnets = try (0..<2).map { j in
            try ResnetBlock("mid_block.resnets.\(j)", src, in: c, out: c, temb: cfg.timeEmbedDim, groups: cfg.normNumGroups,
                            eps: cfg.normEps, conditioning: cfg.timeConditioning, outputScaleFactor: cfg.midBlockScaleFactor)
        }
        // UNetMidBlock2D: attn_groups defaults to resnet_groups only with "default" time conditioning, else no norm.
        let attnGroups = cfg.attnNormNumGroups ?? (cfg.timeConditioning == .default ? cfg.normNumGroups : nil)
        attention = cfg.addAttention
            ? try AttentionBlock("mid_block.attentions.0", src, channels: c, headDim: cfg.attentionHeadDim,
                                 normGroups: attnGroups, eps: cfg.normEps, rescaleOutputFactor: cfg.midBlockScaleFactor)
            : nil
    }

    func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        var h = resnets[0](x, activatedTemb: activatedTemb)
        if let attention { h = attention(h) }
        return resnets[1](h, activatedTemb: activatedTemb)
    }

    var parameters: [(String, Tensor)] { resnets.flatMap(\.parameters) + (attention?.parameters ?? []) }
}

public struct UpBlock: Sendable {
    public var type: UpBlockType
    public var resnets: [ResnetBlock]
    public var attentions: [AttentionBlock]
    public var upsampler: BlockResampler?

    init(index i: Int, config cfg: UNetConfig, in cin: Int, prev: Int, out cout: Int, isFinal: Bool, _ src: WeightSource) throws {
        let prefix = "up_blocks.\(i)"
        let layers = cfg.layersPerBlock + 1
        type = cfg.upBlockTypes[i]
        resnets = try (0..<layers).map { j in
            let skip = j == layers - 1 ? cin : cout
            let resIn = j == 0 ? prev : cout
            return try ResnetBlock("\(prefix).resnets.\(j)", src, in: resIn + skip, out: cout, temb: cfg.timeEmbedDim,
                                   groups: cfg.normNumGroups, eps: cfg.normEps, conditioning: cfg.timeConditioning)
        }
        attentions = type.hasAttention ? try (0..<layers).map { j in
            try AttentionBlock("\(prefix).attentions.\(j)", src, channels: cout, headDim: cfg.attentionHeadDim,
                               normGroups: cfg.normNumGroups, eps: cfg.normEps)
        } : []
        guard !isFinal else { upsampler = nil; return }
        let useResnet = type == .resnetUpsample || (type == .attnUp && cfg.upsampleType == .resnet)
        if useResnet {
            upsampler = .resnet(try ResnetBlock("\(prefix).upsamplers.0", src, in: cout, out: cout, temb: cfg.timeEmbedDim,
                                                groups: cfg.normNumGroups, eps: cfg.normEps,
                                                conditioning: cfg.timeConditioning, resample: .up))
        } else {
            let g = ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, padding: 1)
            upsampler = .upsampleConv(try Conv2DLayer("\(prefix).upsamplers.0.conv", src, geometry: g))
        }
    }

    /// Consumes skip tensors from the end of `skips`.
    func callAsFunction(_ x: Tensor, skips: inout [Tensor], activatedTemb: Tensor) -> Tensor {
        var h = x
        for (j, resnet) in resnets.enumerated() {
            h = concatChannels(h, skips.removeLast())
            h = resnet(h, activatedTemb: activatedTemb)
            if !attentions.isEmpty { h = attentions[j](h) }
        }
        if let upsampler { h = upsampler(h, activatedTemb: activatedTemb) }
        return h
    }

    var parameters: [(String, Tensor)] {
        resnets.flatMap(\.parameters) + attentions.flatMap(\.parameters) + (upsampler?.parameters ?? [])
    }
}

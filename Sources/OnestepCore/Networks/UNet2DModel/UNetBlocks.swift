// Down, mid and up blocks of UNet2DModel (matches diffusers models/unets/unet_2d_blocks.py: DownBlock2D,
// AttnDownBlock2D, ResnetDownsampleBlock2D, UNetMidBlock2D, UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D,
// as get_down_block / get_up_block build them for UNet2DModel). Which layers a block has is decided by
// UNet2DPlan; these types hold the loaded layers.

/// The resampler at the end of a down or up block.
public enum BlockResampler: Sendable {
    /// Downsample2D(use_conv=True): 3x3 stride-2 conv (key ".conv").
    case strideConv(Conv2DLayer)
    /// Upsample2D(use_conv=True): nearest 2x then 3x3 conv (key ".conv").
    case upsampleConv(Conv2DLayer)
    /// ResnetBlock2D(down=True) or (up=True).
    case resnet(ResnetBlock)

    init(_ plan: UNet2DPlan.Resampler, _ src: WeightSource) throws {
        switch plan {
        case .strideConv(let c): self = .strideConv(try Conv2DLayer(c, src))
        case .upsampleConv(let c): self = .upsampleConv(try Conv2DLayer(c, src))
        case .resnet(let r): self = .resnet(try ResnetBlock(r, src))
        }
    }

    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        switch self {
        case .strideConv(var c): v.visit(&c); self = .strideConv(c)
        case .upsampleConv(var c): v.visit(&c); self = .upsampleConv(c)
        case .resnet(var r): r.visitLayers(&v); self = .resnet(r)
        }
    }
}

public struct DownBlock: Sendable {
    public var type: DownBlockType
    public var resnets: [ResnetBlock]
    public var attentions: [AttentionBlock]
    public var downsampler: BlockResampler?

    init(_ plan: UNet2DPlan.Block, type: DownBlockType, _ src: WeightSource) throws {
        self.type = type
        resnets = try plan.resnets.map { try ResnetBlock($0, src) }
        attentions = try plan.attentions.map { try AttentionBlock($0, src) }
        downsampler = try plan.resampler.map { try BlockResampler($0, src) }
    }

    /// Checkpoint order, as UNet2DPlan.Block.layers.
    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        for j in resnets.indices { resnets[j].visitLayers(&v) }
        for j in attentions.indices { attentions[j].visitLayers(&v) }
        downsampler?.visitLayers(&v)
    }
}

public struct MidBlock: Sendable {
    public var resnets: [ResnetBlock]
    public var attention: AttentionBlock?

    init(_ plan: UNet2DPlan.Mid, _ src: WeightSource) throws {
        resnets = try plan.resnets.map { try ResnetBlock($0, src) }
        attention = try plan.attention.map { try AttentionBlock($0, src) }
    }

    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        for j in resnets.indices { resnets[j].visitLayers(&v) }
        attention?.visitLayers(&v)
    }
}

public struct UpBlock: Sendable {
    public var type: UpBlockType
    public var resnets: [ResnetBlock]
    public var attentions: [AttentionBlock]
    public var upsampler: BlockResampler?

    init(_ plan: UNet2DPlan.Block, type: UpBlockType, _ src: WeightSource) throws {
        self.type = type
        resnets = try plan.resnets.map { try ResnetBlock($0, src) }
        attentions = try plan.attentions.map { try AttentionBlock($0, src) }
        upsampler = try plan.resampler.map { try BlockResampler($0, src) }
    }

    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        for j in resnets.indices { resnets[j].visitLayers(&v) }
        for j in attentions.indices { attentions[j].visitLayers(&v) }
        upsampler?.visitLayers(&v)
    }
}

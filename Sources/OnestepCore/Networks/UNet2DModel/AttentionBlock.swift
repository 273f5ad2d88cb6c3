// The spatial self-attention block of AttnDownBlock2D / AttnUpBlock2D / UNetMidBlock2D (matches diffusers
// Attention(_from_deprecated_attn_block=True, residual_connection=True, bias=True) with AttnProcessor2_0 on a
// 4-D input): optional GroupNorm, q/k/v projections, softmax(QK^T/sqrt(d))V per head, to_out.0, + residual,
// / rescale_output_factor. Structure only: the serving forward is ChannelMajor.attention, the NCHW reference
// is in UNet2DModel+Reference.swift.

public struct AttentionBlock: Sendable {
    public var norm: GroupNormLayer?
    public var toQ: LinearLayer, toK: LinearLayer, toV: LinearLayer, toOut: LinearLayer
    public var heads: Int
    public var rescaleOutputFactor: Float
    /// The block's core (softmax(QK^T/sqrt(d))V of every head), `.attention` kind.
    public var core: LayerSpec
    /// How the heads run: set by packForServing from the Int8Policy (fp32 unless the policy says bf16).
    public var headPrecision: AttentionPrecision = .fp32
    /// to_q, to_k and to_v as one (3C, C) 1x1 int8 convolution (rows q, then k, then v; biases likewise), set by
    /// packForServing when all three are packed int8: their input is quantized once and the three products run
    /// as one GEMM (UNet2DModel+Int8Forward.swift). Each row is its layer's row, so q, k and v are the same bits.
    public var packedQKV8: PackedConvInt8?

    public init(_ plan: UNet2DPlan.Attention, _ src: WeightSource) throws {
        norm = try plan.norm.map { try GroupNormLayer($0, src) }
        toQ = try LinearLayer(plan.toQ, src)
        toK = try LinearLayer(plan.toK, src)
        toV = try LinearLayer(plan.toV, src)
        toOut = try LinearLayer(plan.toOut, src)
        heads = plan.heads
        rescaleOutputFactor = plan.rescaleOutputFactor
        core = plan.core
    }

    /// Checkpoint order, as UNet2DPlan.Attention.layers.
    mutating func visitLayers<V: LayerVisitor>(_ v: inout V) {
        if norm != nil { v.visit(&norm!) }
        v.visit(&toQ)
        v.visit(&toK)
        v.visit(&toV)
        v.visit(attentionCore: core, precision: &headPrecision)
        v.visit(&toOut)
    }
}

extension AttentionBlock {
    /// Sets packedQKV8 from toQ / toK / toV's int8 packing (their codes, scales and biases, concatenated), or nil.
    mutating func packFusedProjections() {
        guard let q = toQ.packed8, let k = toK.packed8, let v = toV.packed8 else { packedQKV8 = nil; return }
        let parts = [q, k, v].map { $0.unpacked() }, c = toQ.inFeatures, out = 3 * toQ.outFeatures
        let weights = Int8Tensor(shape: [out, c, 1, 1], codes: parts.flatMap(\.codes), scales: parts.flatMap(\.scales))
        packedQKV8 = PackedConvInt8(geometry: ConvGeometry(inChannels: c, outChannels: out, kernel: 1, padding: 0),
                                    bias: toQ.bias.data + toK.bias.data + toV.bias.data, weights: weights)
    }
}

// The description of a network's layers that every part of Onestep reads: a network's plan (e.g. UNet2DPlan)
// is derived once from its config and lists each layer with its checkpoint key, its kind (which fixes the
// shapes of its tensors) and where it runs (pixels per image, for FLOPs). Constructors (inference and
// trainable), parameter listing, packing for serving, FLOP counts and the int8 policy all walk this one list,
// so they cannot disagree about which layers exist.
//
// Legend: key = the diffusers module path ("down_blocks.0.resnets.1.conv1"); tensors are key + ".weight" /
// ".bias" exactly as diffusers saves them, so no remapping table is needed.

/// What a layer is. Parameterised kinds fix their tensors' shapes; `.attention` is the parameter-free core
/// softmax(QK^T/sqrt(d))V of an attention block (its projections are `.linear` layers of their own).
public enum LayerKind: Sendable, Equatable {
    /// weight (Cout, Cin, KH, KW), bias (Cout).
    case conv2d(ConvGeometry)
    /// weight (out, in), bias (out).
    case linear(inFeatures: Int, outFeatures: Int)
    /// weight = gamma (C), bias = beta (C).
    case groupNorm(channels: Int, groups: Int, eps: Float)
    /// weight (rows, dim): a lookup table (class_embedding).
    case embedding(rows: Int, dim: Int)
    /// No tensors: scores and weighted sum of `heads` heads over `channels` channels.
    case attention(channels: Int, heads: Int)
}

/// Why a layer is there, which decides how it is served (see Int8Policy).
public enum LayerRole: String, Sendable, Equatable {
    /// The first and last convolutions: a handful of input/output channels, next to the pixels.
    case edge
    /// Convolutions inside the network (resnets, shortcuts, resamplers).
    case inner
    /// The time MLP and every resnet's time projection: run once per image, not per pixel.
    case timeEmbedding
    /// q, k, v and out projections of attention blocks: one GEMM over all pixels.
    case attentionProjection
    /// GroupNorms, attention cores and embeddings: no GEMM to pack.
    case other
}

/// One layer of a network plan.
public struct LayerSpec: Sendable, Equatable {
    /// Module path; tensors are `key + ".weight"` and `key + ".bias"`.
    public var key: String
    public var kind: LayerKind
    public var role: LayerRole
    /// Output pixels per image where the layer runs (H*W; 1 for per-image layers such as the time MLP).
    public var pixels: Int

    public init(_ key: String, _ kind: LayerKind, role: LayerRole, pixels: Int) {
        self.key = key
        self.kind = kind
        self.role = role
        self.pixels = pixels
    }

    /// The checkpoint tensors of this layer, with their shapes, in the order diffusers lists them.
    public var tensors: [(key: String, shape: [Int])] {
        switch kind {
        case .conv2d(let g):
            return [(key + ".weight", [g.outChannels, g.inChannels, g.kernelH, g.kernelW]), (key + ".bias", [g.outChannels])]
        case .linear(let i, let o): return [(key + ".weight", [o, i]), (key + ".bias", [o])]
        case .groupNorm(let c, _, _): return [(key + ".weight", [c]), (key + ".bias", [c])]
        case .embedding(let rows, let dim): return [(key + ".weight", [rows, dim])]
        case .attention: return []
        }
    }

    /// FLOPs of one image through this layer, multiply and add counted separately (as GEMM GFLOP/s figures do).
    /// Norms and embedding lookups count 0: they are < 2% of these models' work.
    public var flopsPerImage: Double {
        switch kind {
        case .conv2d(let g): return 2 * Double(g.outChannels) * Double(g.reduction) * Double(pixels)
        case .linear(let i, let o): return 2 * Double(i) * Double(o) * Double(pixels)
        case .attention(let c, _):
            // Q^T K (L x L x C) and V P^T (C x L x L), all heads together.
            return 2 * 2 * Double(pixels) * Double(pixels) * Double(c)
        case .groupNorm, .embedding: return 0
        }
    }

    /// The convolution geometry when this is a conv layer.
    public var convGeometry: ConvGeometry? {
        if case .conv2d(let g) = kind { return g }
        return nil
    }
}

/// The arithmetic a layer runs in when a model is served at int8 (Int8Policy.precision(of:)).
public enum LayerPrecision: String, Sendable {
    case fp32, int8
    /// bf16 products summed in fp32 (vdpbf16ps; fp32 where the CPU lacks it): for layers int8 hurts.
    case bf16
}

/// Which layers run their GEMMs in int8, and which in bf16. One policy serves both sides of the int8 format:
/// `quantize` stores I8 codes for exactly the layers it selects and writes its name into the file's metadata
/// ("onestep.int8_policy"); loading reads the name back and packs those layers straight from the stored codes.
/// bf16 layers are stored F32 (rounded to bf16 at load), so a policy's I8 set alone decides the file.
public enum Int8Policy: String, Sendable, CaseIterable {
    /// Every convolution except the edge ones (conv_in, conv_out: 1 to 4 channels, where the error would show
    /// directly in the pixels). Linear layers stay fp32. This is also the rule for int8 files written before
    /// the policy key existed.
    case innerConvolutions = "inner-convolutions"
    /// innerConvolutions plus the attention blocks' q/k/v/out projections (1x1 int8 products over each
    /// image's pixels, activations quantized per image). Chosen explicitly (bench, quantize --policy).
    case innerConvolutionsAndAttention = "inner-convolutions+attention-projections"
    /// innerConvolutionsAndAttention, and the attention cores (softmax(scale Q^T K) V of each head) in bf16
    /// products (FastAttention, onestep_attention.c): the heads were the largest fp32 part of the int8 forward
    /// (24% of cd_imagenet64's). Same I8 tensors as innerConvolutionsAndAttention.
    case innerConvolutionsAndAttentionBF16Heads = "inner-convolutions+attention-projections+bf16-heads"
    /// Inner convolutions int8; the attention projections and cores bf16 (projections rounded to bf16 at load,
    /// PackedGemmBF16): for models whose attention int8 hurts. Same I8 tensors as innerConvolutions.
    case innerConvolutionsBF16Attention = "inner-convolutions+bf16-attention"

    public static let metadataKey = "onestep.int8_policy"

    /// How `layer` runs under this policy when the model is served at int8.
    public func precision(of layer: LayerSpec) -> LayerPrecision {
        let innerConv = layer.convGeometry != nil && layer.role == .inner
        let projection = layer.role == .attentionProjection
        let core: Bool = { if case .attention = layer.kind { return true } else { return false } }()
        switch self {
        case .innerConvolutions: return innerConv ? .int8 : .fp32
        case .innerConvolutionsAndAttention: return innerConv || projection ? .int8 : .fp32
        case .innerConvolutionsAndAttentionBF16Heads: return innerConv || projection ? .int8 : core ? .bf16 : .fp32
        case .innerConvolutionsBF16Attention: return innerConv ? .int8 : projection || core ? .bf16 : .fp32
        }
    }

    /// True when `layer` runs in int8 under this policy (and `quantize` stores it I8).
    public func selects(_ layer: LayerSpec) -> Bool { precision(of: layer) == .int8 }
}

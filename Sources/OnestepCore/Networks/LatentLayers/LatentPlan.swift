// The layer plan of the latent networks (UNet2DConditionModel, AutoencoderKL decoder, AutoencoderTiny decoder):
// a list of steps built from a config, each naming its layers by their diffusers module path, so a tensor's
// checkpoint key is always prefix + ".weight" / ".bias". The plan holds no weights: `LatentWeights` loads them
// for the plan's `parameters`, `LatentRunner` walks the steps on channel-major activations, and `flops` walks
// the same steps on shapes only.
//
// Shapes: activations (C, N, H, W) channel-major; context (text embeddings) (Dc, N, Lc) channel-major.

/// A convolution: weight (Cout, Cin, KH, KW), optional bias (Cout).
public struct ConvSpec: Sendable, Equatable {
    public var prefix: String
    public var geometry: ConvGeometry
    public var bias: Bool
}

/// A torch.nn.Linear (or a 1x1 nn.Conv2d used as one: weight (out, in, 1, 1)) applied to every column.
public struct LinearSpec: Sendable, Equatable {
    public var prefix: String
    public var inFeatures: Int
    public var outFeatures: Int
    public var bias: Bool
    /// The checkpoint stores the weight as a 1x1 convolution (out, in, 1, 1) (Transformer2DModel's conv proj_in/out).
    public var convShaped: Bool = false
    public var weightShape: [Int] { convShaped ? [outFeatures, inFeatures, 1, 1] : [outFeatures, inFeatures] }
}

/// GroupNorm (torch.nn.GroupNorm, affine) or LayerNorm over channels (torch.nn.LayerNorm(C), affine).
public struct NormSpec: Sendable, Equatable {
    public var prefix: String
    public var channels: Int
    public var groups: Int   // 0 for a LayerNorm
    public var eps: Float
}

/// diffusers ResnetBlock2D (resnet.py): norm1, silu, conv1, [+ time_emb_proj(silu(temb))], norm2, silu, conv2,
/// + shortcut(x) (conv_shortcut 1x1 when the widths differ), / output_scale_factor.
public struct ResnetSpec: Sendable, Equatable {
    public var norm1: NormSpec, conv1: ConvSpec
    public var timeProjection: LinearSpec?   // nil in the VAE (temb_channels None)
    public var norm2: NormSpec, conv2: ConvSpec
    public var shortcut: ConvSpec?
    public var outputScaleFactor: Float

    init(_ p: String, in cin: Int, out cout: Int, temb: Int?, groups: Int, eps: Float, outputScaleFactor: Float = 1) {
        norm1 = NormSpec(prefix: p + ".norm1", channels: cin, groups: groups, eps: eps)
        conv1 = ConvSpec(prefix: p + ".conv1", geometry: ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1), bias: true)
        timeProjection = temb.map { LinearSpec(prefix: p + ".time_emb_proj", inFeatures: $0, outFeatures: cout, bias: true) }
        norm2 = NormSpec(prefix: p + ".norm2", channels: cout, groups: groups, eps: eps)
        conv2 = ConvSpec(prefix: p + ".conv2", geometry: ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, padding: 1), bias: true)
        shortcut = cin == cout ? nil
            : ConvSpec(prefix: p + ".conv_shortcut", geometry: ConvGeometry(inChannels: cin, outChannels: cout, kernel: 1, padding: 0), bias: true)
        self.outputScaleFactor = outputScaleFactor
    }
}

/// diffusers Attention with AttnProcessor2_0: softmax(Q K^T / sqrt(D)) V per head, then to_out.0.
/// `contextDim` nil: self-attention (K, V from the same tokens); else cross-attention on the context.
public struct AttentionSpec: Sendable, Equatable {
    public var queryDim: Int
    public var contextDim: Int?
    public var heads: Int
    public var toQ: LinearSpec, toK: LinearSpec, toV: LinearSpec, toOut: LinearSpec

    init(_ p: String, queryDim c: Int, contextDim: Int?, heads: Int, qkvBias: Bool) {
        queryDim = c
        self.contextDim = contextDim
        self.heads = heads
        toQ = LinearSpec(prefix: p + ".to_q", inFeatures: c, outFeatures: c, bias: qkvBias)
        toK = LinearSpec(prefix: p + ".to_k", inFeatures: contextDim ?? c, outFeatures: c, bias: qkvBias)
        toV = LinearSpec(prefix: p + ".to_v", inFeatures: contextDim ?? c, outFeatures: c, bias: qkvBias)
        toOut = LinearSpec(prefix: p + ".to_out.0", inFeatures: c, outFeatures: c, bias: true)
    }
}

/// The VAE mid block's spatial attention (Attention(_from_deprecated_attn_block=True)): group_norm, one
/// attention over all H*W positions, + residual, / rescale_output_factor.
public struct SpatialAttentionSpec: Sendable, Equatable {
    public var norm: NormSpec
    public var attention: AttentionSpec
    public var rescaleOutputFactor: Float
}

/// diffusers BasicTransformerBlock (attention.py, norm_type "layer_norm"): x += attn1(norm1(x)); x += attn2(norm2(x), ctx);
/// x += ff(norm3(x)) with ff = net.2(GEGLU(net.0.proj(x))). attn1 reads the context when only_cross_attention.
public struct TransformerBlockSpec: Sendable, Equatable {
    public var norm1: NormSpec, attn1: AttentionSpec
    public var norm2: NormSpec, attn2: AttentionSpec
    public var norm3: NormSpec, ffIn: LinearSpec, ffOut: LinearSpec
}

/// diffusers Transformer2DModel on continuous inputs (transformer_2d.py): GroupNorm (eps 1e-6), proj_in,
/// transformer blocks, proj_out, + residual. proj_in/out are 1x1 convs or Linear (use_linear_projection).
public struct Transformer2DSpec: Sendable, Equatable {
    public var norm: NormSpec
    public var projIn: LinearSpec
    public var blocks: [TransformerBlockSpec]
    public var projOut: LinearSpec

    init(_ p: String, channels c: Int, heads: Int, layers: Int, contextDim: Int, groups: Int, linearProjection: Bool,
         onlyCrossAttention: Bool) {
        norm = NormSpec(prefix: p + ".norm", channels: c, groups: groups, eps: 1e-6)
        projIn = LinearSpec(prefix: p + ".proj_in", inFeatures: c, outFeatures: c, bias: true, convShaped: !linearProjection)
        projOut = LinearSpec(prefix: p + ".proj_out", inFeatures: c, outFeatures: c, bias: true, convShaped: !linearProjection)
        blocks = (0..<layers).map { i in
            let b = p + ".transformer_blocks.\(i)"
            return TransformerBlockSpec(
                norm1: NormSpec(prefix: b + ".norm1", channels: c, groups: 0, eps: 1e-5),
                attn1: AttentionSpec(b + ".attn1", queryDim: c, contextDim: onlyCrossAttention ? contextDim : nil, heads: heads, qkvBias: false),
                norm2: NormSpec(prefix: b + ".norm2", channels: c, groups: 0, eps: 1e-5),
                attn2: AttentionSpec(b + ".attn2", queryDim: c, contextDim: contextDim, heads: heads, qkvBias: false),
                norm3: NormSpec(prefix: b + ".norm3", channels: c, groups: 0, eps: 1e-5),
                ffIn: LinearSpec(prefix: b + ".ff.net.0.proj", inFeatures: c, outFeatures: 8 * c, bias: true),
                ffOut: LinearSpec(prefix: b + ".ff.net.2", inFeatures: 4 * c, outFeatures: c, bias: true))
        }
    }
}

/// diffusers AutoencoderTinyBlock (unet_2d_blocks.py): relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x)).
public struct TinyBlockSpec: Sendable, Equatable {
    public var convs: [ConvSpec]   // conv.0, conv.2, conv.4
    public var skip: ConvSpec?     // 1x1 without bias when the widths differ
}

/// How a convolution's input is resized first (diffusers Upsample2D / nn.Upsample, mode "nearest").
public enum Upsampling: Sendable, Equatable {
    case none
    /// 2x nearest (F.interpolate(scale_factor=2)), fused into the convolution's input reads.
    case double
    /// To the size of the skip tensor on top of the stack (UNet2DConditionModel's upsample_size): 2x when it
    /// is twice the input, else F.interpolate(size=...) nearest.
    case toSkip
}

public enum LatentStep: Sendable, Equatable {
    case conv(ConvSpec, Upsampling)
    case resnet(ResnetSpec)
    case transformer(Transformer2DSpec)
    case spatialAttention(SpatialAttentionSpec)
    case tinyBlock(TinyBlockSpec)
    /// Push the current activation on the skip stack (it stays current).
    case pushSkip
    /// Current = cat([current, pop()], dim=1).
    case concatSkip
    /// GroupNorm then SiLU (conv_norm_out + conv_act).
    case groupNormSiLU(NormSpec)
    case relu
    /// x = tanh(x / m) * m (DecoderTiny's clamp).
    case tanhClamp(Float)
    /// x = x * scale + shift.
    case affine(scale: Float, shift: Float)
}

/// A network as a list of steps on one current activation, a skip stack and (for the UNet) a time embedding
/// and a text context.
public struct LatentPlan: Sendable, Equatable {
    public var steps: [LatentStep]
    public var inChannels: Int

    /// Every tensor the plan reads, with its shape: key -> shape, in the order the walk meets them.
    public var parameters: [(key: String, shape: [Int])] {
        var out: [(String, [Int])] = []
        func conv(_ c: ConvSpec) {
            let g = c.geometry
            out.append((c.prefix + ".weight", [g.outChannels, g.inChannels, g.kernelH, g.kernelW]))
            if c.bias { out.append((c.prefix + ".bias", [g.outChannels])) }
        }
        func linear(_ l: LinearSpec) {
            out.append((l.prefix + ".weight", l.weightShape))
            if l.bias { out.append((l.prefix + ".bias", [l.outFeatures])) }
        }
        func norm(_ n: NormSpec) { out += [(n.prefix + ".weight", [n.channels]), (n.prefix + ".bias", [n.channels])] }
        func attention(_ a: AttentionSpec) { [a.toQ, a.toK, a.toV, a.toOut].forEach(linear) }
        for step in steps {
            switch step {
            case .conv(let c, _): conv(c)
            case .resnet(let r):
                norm(r.norm1); conv(r.conv1); r.timeProjection.map(linear); norm(r.norm2); conv(r.conv2); r.shortcut.map(conv)
            case .transformer(let t):
                norm(t.norm); linear(t.projIn)
                for b in t.blocks {
                    norm(b.norm1); attention(b.attn1); norm(b.norm2); attention(b.attn2); norm(b.norm3); linear(b.ffIn); linear(b.ffOut)
                }
                linear(t.projOut)
            case .spatialAttention(let s): norm(s.norm); attention(s.attention)
            case .tinyBlock(let b): b.convs.forEach(conv); b.skip.map(conv)
            case .groupNormSiLU(let n): norm(n)
            case .pushSkip, .concatSkip, .relu, .tanhClamp, .affine: break
            }
        }
        return out.map { (key: $0.0, shape: $0.1) }
    }

    /// Multiply-add FLOPs (2 per MAC) of the convolutions, projections and attention products of one forward
    /// pass on `batch` inputs of (inChannels, height, width) with a context of `contextLength` tokens.
    /// Walks the same steps as LatentRunner with shapes only. Returns the FLOPs and the output shape (C, H, W).
    public func flops(batch n: Int, height: Int, width: Int, contextLength lc: Int = 77) -> (flops: Double, output: (c: Int, h: Int, w: Int)) {
        var c = inChannels, h = height, w = width
        var skips: [(Int, Int, Int)] = []
        var total = 0.0
        func conv(_ s: ConvSpec, _ hin: Int, _ win: Int) -> (Int, Int) {
            total += Double(n) * s.geometry.flops(height: hin, width: win)
            return (s.geometry.outputHeight(hin), s.geometry.outputWidth(win))
        }
        func linear(_ l: LinearSpec, columns: Int) { total += 2 * Double(l.inFeatures * l.outFeatures) * Double(columns) }
        func attention(_ a: AttentionSpec, length l: Int) {
            let lk = a.contextDim == nil ? l : lc
            linear(a.toQ, columns: n * l); linear(a.toK, columns: n * lk); linear(a.toV, columns: n * lk); linear(a.toOut, columns: n * l)
            total += 4 * Double(n) * Double(l) * Double(lk) * Double(a.queryDim)  // QK^T and PV over all heads
        }
        for step in steps {
            switch step {
            case .conv(let s, let up):
                var (hi, wi) = (h, w)
                switch up {
                case .none: break
                case .double: (hi, wi) = (2 * h, 2 * w)
                case .toSkip: (hi, wi) = (skips.last!.1, skips.last!.2)
                }
                (h, w) = conv(s, hi, wi)
                c = s.geometry.outChannels
            case .resnet(let r):
                _ = conv(r.conv1, h, w); _ = conv(r.conv2, h, w)
                if let s = r.shortcut { _ = conv(s, h, w) }
                if let t = r.timeProjection { linear(t, columns: n) }
                c = r.conv2.geometry.outChannels
            case .transformer(let t):
                let l = h * w
                linear(t.projIn, columns: n * l); linear(t.projOut, columns: n * l)
                for b in t.blocks {
                    attention(b.attn1, length: l); attention(b.attn2, length: l)
                    linear(b.ffIn, columns: n * l); linear(b.ffOut, columns: n * l)
                }
            case .spatialAttention(let s): attention(s.attention, length: h * w)
            case .tinyBlock(let b):
                b.convs.forEach { _ = conv($0, h, w) }
                if let s = b.skip { _ = conv(s, h, w) }
                c = b.convs.last!.geometry.outChannels
            case .pushSkip: skips.append((c, h, w))
            case .concatSkip: c += skips.removeLast().0
            case .groupNormSiLU, .relu, .tanhClamp, .affine: break
            }
        }
        return (total, (c, h, w))
    }
}

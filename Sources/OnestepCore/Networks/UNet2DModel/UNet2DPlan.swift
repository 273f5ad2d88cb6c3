// The one description of a UNet2DModel's structure, derived from its UNetConfig (matches how diffusers
// models/unets/unet_2d.py UNet2DModel.__init__ and unet_2d_blocks.py get_down_block / get_up_block /
// UNetMidBlock2D build the modules): every layer's checkpoint key, kind, shapes, role and the image size it
// runs at. The inference model (UNet2DModel), the trainable model (OnestepTrain's TrainableUNet), parameter
// listing, packing, FLOPs and the int8 policy are all built from this plan; the channel arithmetic and the
// block rules (which resampler, which attention norm) live here and nowhere else.
//
// Legend: S = sample_size, s = the side of the feature map where a layer runs, C = channels, T = time-embedding
// width. Down blocks halve s after their resampler, up blocks double it.

public struct UNet2DPlan: Sendable, Equatable {
    /// ResnetBlock2D: norm1, conv1, time_emb_proj, norm2, conv2 and a 1x1 conv_shortcut when Cin != Cout.
    public struct Resnet: Sendable, Equatable {
        public var key: String
        public var inChannels: Int, outChannels: Int
        public var resample: ResnetResample
        public var conditioning: TimeConditioning
        public var outputScaleFactor: Float
        public var norm1: LayerSpec, conv1: LayerSpec, timeProjection: LayerSpec, norm2: LayerSpec, conv2: LayerSpec
        public var shortcut: LayerSpec?

        public var layers: [LayerSpec] { [norm1, conv1, timeProjection, norm2, conv2] + (shortcut.map { [$0] } ?? []) }
    }

    /// Attention(_from_deprecated_attn_block=True): optional group_norm, to_q/k/v, the attention core, to_out.0.
    public struct Attention: Sendable, Equatable {
        public var key: String
        public var channels: Int, heads: Int
        public var rescaleOutputFactor: Float
        public var norm: LayerSpec?
        public var toQ: LayerSpec, toK: LayerSpec, toV: LayerSpec, core: LayerSpec, toOut: LayerSpec

        public var layers: [LayerSpec] { (norm.map { [$0] } ?? []) + [toQ, toK, toV, core, toOut] }
    }

    /// The resampler at the end of a down or up block.
    public enum Resampler: Sendable, Equatable {
        /// Downsample2D(use_conv=True): 3x3 stride-2 conv.
        case strideConv(LayerSpec)
        /// Upsample2D(use_conv=True): nearest 2x, then a 3x3 conv.
        case upsampleConv(LayerSpec)
        /// ResnetBlock2D(down=True) or (up=True).
        case resnet(Resnet)

        public var layers: [LayerSpec] {
            switch self {
            case .strideConv(let c), .upsampleConv(let c): return [c]
            case .resnet(let r): return r.layers
            }
        }
    }

    /// A down or up block: resnets (each followed by its attention in Attn blocks), then the resampler.
    public struct Block: Sendable, Equatable {
        public var resnets: [Resnet]
        /// Empty, or one per resnet.
        public var attentions: [Attention]
        public var resampler: Resampler?
        /// Up blocks: channels of the skip tensor each resnet concatenates, in order of use. Empty for down blocks.
        public var skipChannels: [Int]

        /// Checkpoint order: resnets, attentions, resampler (as diffusers' state_dict lists them).
        public var layers: [LayerSpec] {
            resnets.flatMap(\.layers) + attentions.flatMap(\.layers) + (resampler?.layers ?? [])
        }
    }

    /// UNetMidBlock2D: resnet, optional attention, resnet.
    public struct Mid: Sendable, Equatable {
        public var resnets: [Resnet]
        public var attention: Attention?
        public var layers: [LayerSpec] { resnets.flatMap(\.layers) + (attention?.layers ?? []) }
    }

    public let config: UNetConfig
    public var convIn: LayerSpec
    public var timeLinear1: LayerSpec, timeLinear2: LayerSpec
    public var classEmbedding: LayerSpec?
    public var down: [Block]
    public var mid: Mid?
    public var up: [Block]
    public var normOut: LayerSpec, convOut: LayerSpec

    /// Every layer in checkpoint order (the order `parameters` lists tensors in).
    public var layers: [LayerSpec] {
        var l = [convIn, timeLinear1, timeLinear2] + (classEmbedding.map { [$0] } ?? [])
        l += down.flatMap(\.layers)
        l += mid?.layers ?? []
        l += up.flatMap(\.layers)
        return l + [normOut, convOut]
    }

    /// FLOPs of one image through the whole network (sum over `layers`).
    public var flopsPerImage: Double { layers.reduce(0) { $0 + $1.flopsPerImage } }

    /// The convolution with the most FLOPs per image: the shape the bench compares against a plain sgemm.
    public var dominantConvolution: LayerSpec {
        layers.filter { $0.convGeometry != nil }.max { $0.flopsPerImage < $1.flopsPerImage }!
    }

    /// Every checkpoint tensor with its shape, in checkpoint order.
    public var tensors: [(key: String, shape: [Int])] { layers.flatMap(\.tensors) }

    public init(config cfg: UNetConfig) {
        config = cfg
        let ch = cfg.blockOutChannels, t = cfg.timeEmbedDim, groups = cfg.normNumGroups, eps = cfg.normEps
        var s = cfg.sampleSize

        func conv(_ key: String, _ g: ConvGeometry, role: LayerRole = .inner, inputSide: Int) -> LayerSpec {
            LayerSpec(key, .conv2d(g), role: role, pixels: g.outputHeight(inputSide) * g.outputWidth(inputSide))
        }
        func conv3x3(_ key: String, _ cin: Int, _ cout: Int, role: LayerRole = .inner, side: Int) -> LayerSpec {
            conv(key, ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1), role: role, inputSide: side)
        }
        func norm(_ key: String, _ c: Int, side: Int) -> LayerSpec {
            LayerSpec(key, .groupNorm(channels: c, groups: groups, eps: eps), role: .other, pixels: side * side)
        }
        func resnet(_ key: String, _ cin: Int, _ cout: Int, side: Int, resample: ResnetResample = .none,
                    outputScale: Float = 1) -> Resnet {
            Self.resnet(key, in: cin, out: cout, temb: t, groups: groups, eps: eps, conditioning: cfg.timeConditioning,
                        side: side, resample: resample, outputScaleFactor: outputScale)
        }
        func attention(_ key: String, _ c: Int, normGroups: Int?, side: Int, rescale: Float = 1) -> Attention {
            Self.attention(key, channels: c, headDim: cfg.attentionHeadDim, normGroups: normGroups, eps: eps, side: side,
                           rescaleOutputFactor: rescale)
        }

        convIn = conv3x3("conv_in", cfg.inChannels, ch[0], role: .edge, side: s)
        timeLinear1 = LayerSpec("time_embedding.linear_1", .linear(inFeatures: ch[0], outFeatures: t), role: .timeEmbedding, pixels: 1)
        timeLinear2 = LayerSpec("time_embedding.linear_2", .linear(inFeatures: t, outFeatures: t), role: .timeEmbedding, pixels: 1)
        classEmbedding = cfg.numClassEmbeds.map { LayerSpec("class_embedding", .embedding(rows: $0, dim: t), role: .other, pixels: 1) }

        var down: [Block] = []
        var out = ch[0]
        for i in 0..<cfg.levels {
            let key = "down_blocks.\(i)", type = cfg.downBlockTypes[i], cin = out
            out = ch[i]
            let resnets = (0..<cfg.layersPerBlock).map { j in resnet("\(key).resnets.\(j)", j == 0 ? cin : out, out, side: s) }
            let attentions = type.hasAttention
                ? (0..<cfg.layersPerBlock).map { j in attention("\(key).attentions.\(j)", out, normGroups: groups, side: s) } : []
            var resampler: Resampler?
            if i < cfg.levels - 1 {
                // DownBlock2D always uses a conv; ResnetDownsampleBlock2D always a resnet; AttnDownBlock2D follows
                // downsample_type.
                if type == .resnetDownsample || (type == .attnDown && cfg.downsampleType == .resnet) {
                    resampler = .resnet(resnet("\(key).downsamplers.0", out, out, side: s, resample: .down))
                } else {
                    // padding=0 pads (left 0, right 1, top 0, bottom 1) before the conv (diffusers Downsample2D).
                    let p = cfg.downsamplePadding
                    let g = ConvGeometry(inChannels: out, outChannels: out, kernelH: 3, kernelW: 3, stride: 2,
                                         padTop: p, padLeft: p, padBottom: p == 0 ? 1 : p, padRight: p == 0 ? 1 : p)
                    resampler = .strideConv(conv("\(key).downsamplers.0.conv", g, inputSide: s))
                }
                s /= 2
            }
            down.append(Block(resnets: resnets, attentions: attentions, resampler: resampler, skipChannels: []))
        }
        self.down = down

        if cfg.midBlock {
            let c = ch.last!
            // UNetMidBlock2D: attn_groups defaults to resnet_groups only with "default" time conditioning, else no norm.
            let attnGroups = cfg.attnNormNumGroups ?? (cfg.timeConditioning == .default ? groups : nil)
            mid = Mid(resnets: (0..<2).map { j in resnet("mid_block.resnets.\(j)", c, c, side: s, outputScale: cfg.midBlockScaleFactor) },
                      attention: cfg.addAttention
                          ? attention("mid_block.attentions.0", c, normGroups: attnGroups, side: s, rescale: cfg.midBlockScaleFactor)
                          : nil)
        } else {
            mid = nil
        }

        let rev = Array(ch.reversed())
        var up: [Block] = []
        out = rev[0]
        for i in 0..<cfg.levels {
            let key = "up_blocks.\(i)", type = cfg.upBlockTypes[i], layers = cfg.layersPerBlock + 1
            let prev = out, cin = rev[min(i + 1, cfg.levels - 1)]
            out = rev[i]
            // Resnet j concatenates the skip pushed last: the previous level's width for the last resnet.
            let skips = (0..<layers).map { j in j == layers - 1 ? cin : out }
            let resnets = (0..<layers).map { j in resnet("\(key).resnets.\(j)", (j == 0 ? prev : out) + skips[j], out, side: s) }
            let attentions = type.hasAttention
                ? (0..<layers).map { j in attention("\(key).attentions.\(j)", out, normGroups: groups, side: s) } : []
            var resampler: Resampler?
            if i < cfg.levels - 1 {
                if type == .resnetUpsample || (type == .attnUp && cfg.upsampleType == .resnet) {
                    resampler = .resnet(resnet("\(key).upsamplers.0", out, out, side: s, resample: .up))
                } else {
                    resampler = .upsampleConv(conv3x3("\(key).upsamplers.0.conv", out, out, side: 2 * s))
                }
                s *= 2
            }
            up.append(Block(resnets: resnets, attentions: attentions, resampler: resampler, skipChannels: skips))
        }
        self.up = up
        normOut = norm("conv_norm_out", ch[0], side: s)
        convOut = conv3x3("conv_out", ch[0], cfg.outChannels, role: .edge, side: s)
    }

    /// One ResnetBlock2D on an input of side `side` (also used alone by the trainable layer tests).
    public static func resnet(_ key: String, in cin: Int, out cout: Int, temb t: Int, groups: Int, eps: Float,
                              conditioning: TimeConditioning, side: Int, resample: ResnetResample = .none,
                              outputScaleFactor: Float = 1) -> Resnet {
        let out = resample == .up ? 2 * side : (resample == .down ? side / 2 : side)
        func norm(_ name: String, _ c: Int, _ s: Int) -> LayerSpec {
            LayerSpec(key + name, .groupNorm(channels: c, groups: groups, eps: eps), role: .other, pixels: s * s)
        }
        func conv(_ name: String, _ cin: Int, _ cout: Int, kernel: Int) -> LayerSpec {
            LayerSpec(key + name, .conv2d(ConvGeometry(inChannels: cin, outChannels: cout, kernel: kernel, padding: kernel / 2)),
                      role: .inner, pixels: out * out)
        }
        return Resnet(
            key: key, inChannels: cin, outChannels: cout, resample: resample, conditioning: conditioning,
            outputScaleFactor: outputScaleFactor,
            norm1: norm(".norm1", cin, side),
            conv1: conv(".conv1", cin, cout, kernel: 3),
            timeProjection: LayerSpec(key + ".time_emb_proj",
                                      .linear(inFeatures: t, outFeatures: conditioning == .scaleShift ? 2 * cout : cout),
                                      role: .timeEmbedding, pixels: 1),
            norm2: norm(".norm2", cout, out),
            conv2: conv(".conv2", cout, cout, kernel: 3),
            shortcut: cin != cout ? conv(".conv_shortcut", cin, cout, kernel: 1) : nil)
    }

    /// One attention block over `channels` on a feature map of side `side`.
    public static func attention(_ key: String, channels c: Int, headDim: Int?, normGroups: Int?, eps: Float, side: Int,
                                 rescaleOutputFactor: Float = 1) -> Attention {
        let heads = c / (headDim ?? c), l = side * side
        func proj(_ name: String) -> LayerSpec {
            LayerSpec(key + name, .linear(inFeatures: c, outFeatures: c), role: .attentionProjection, pixels: l)
        }
        return Attention(key: key, channels: c, heads: heads, rescaleOutputFactor: rescaleOutputFactor,
                         norm: normGroups.map { LayerSpec(key + ".group_norm", .groupNorm(channels: c, groups: $0, eps: eps), role: .other, pixels: l) },
                         toQ: proj(".to_q"), toK: proj(".to_k"), toV: proj(".to_v"),
                         core: LayerSpec(key, .attention(channels: c, heads: heads), role: .other, pixels: l),
                         toOut: proj(".to_out.0"))
    }
}

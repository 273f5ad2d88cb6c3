// Down, mid and up blocks of UNet2DModel, trainable. Same construction rules and checkpoint keys as
// OnestepCore's UNetBlocks.swift (DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D, UNetMidBlock2D,
// UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D); the skip tensors are handled by TrainableUNet.
import OnestepCore

/// The resampler at the end of a block: a stride-2 conv, nearest 2x + conv, or a resnet with up/down.
public final class TrainableResampler {
    public enum Kind { case strideConv(TrainableConv2D), upsampleConv(TrainableConv2D), resnet(TrainableResnet) }
    public let kind: Kind
    let channels: Int
    private let upsampled = Buffer(), inputGradient = Buffer()
    private var n = 0, h = 0, w = 0

    init(_ kind: Kind, channels: Int) { (self.kind, self.channels) = (kind, channels) }

    func outputSize(height: Int, width: Int) -> (Int, Int) {
        switch kind {
        case .strideConv(let c): return c.outputSize(height: height, width: width)
        case .upsampleConv: return (2 * height, 2 * width)
        case .resnet(let r): return r.outputSize(height: height, width: width)
        }
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, activatedTemb: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        (n, h, w) = (batch, height, width)
        switch kind {
        case .strideConv(let c): return c.forward(x, batch: batch, height: height, width: width)
        case .upsampleConv(let c):
            let u = upsampled.ensure(batch * channels * 4 * height * width)
            Resample.upsampleNearest2x(x, planes: batch * channels, height: height, width: width, y: u)
            return c.forward(u, batch: batch, height: 2 * height, width: 2 * width)
        case .resnet(let r): return r.forward(x, batch: batch, height: height, width: width, activatedTemb: activatedTemb)
        }
    }

    func backward(_ dy: UnsafePointer<Float>, dActivatedTemb: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        switch kind {
        case .strideConv(let c): return c.backward(dy)
        case .upsampleConv(let c):
            let du = c.backward(dy), dx = inputGradient.ensure(n * channels * h * w)
            ResampleGrad.upsampleNearest2xBackward(du, planes: n * channels, height: h, width: w, dx: dx)
            return dx
        case .resnet(let r): return r.backward(dy, dActivatedTemb: dActivatedTemb)
        }
    }
}

public final class TrainableDownBlock {
    public let resnets: [TrainableResnet]
    public let attentions: [TrainableAttention]
    public let downsampler: TrainableResampler?

    init(index i: Int, config cfg: UNetConfig, in cin: Int, out cout: Int, isFinal: Bool, _ store: ParameterStore) {
        let prefix = "down_blocks.\(i)", type = cfg.downBlockTypes[i]
        var res: [TrainableResnet] = [], att: [TrainableAttention] = []
        for j in 0..<cfg.layersPerBlock {
            res.append(TrainableResnet("\(prefix).resnets.\(j)", store, in: j == 0 ? cin : cout, out: cout, temb: cfg.timeEmbedDim,
                                       groups: cfg.normNumGroups, eps: cfg.normEps, conditioning: cfg.timeConditioning))
            if type == .attnDown {
                att.append(TrainableAttention("\(prefix).attentions.\(j)", store, channels: cout, headDim: cfg.attentionHeadDim,
                                              normGroups: cfg.normNumGroups, eps: cfg.normEps))
            }
        }
        (resnets, attentions) = (res, att)
        guard !isFinal else { downsampler = nil; return }
        let useResnet = type == .resnetDownsample || (type == .attnDown && cfg.downsampleType == .resnet)
        if useResnet {
            downsampler = TrainableResampler(.resnet(TrainableResnet("\(prefix).downsamplers.0", store, in: cout, out: cout,
                temb: cfg.timeEmbedDim, groups: cfg.normNumGroups, eps: cfg.normEps, conditioning: cfg.timeConditioning,
                resample: .down)), channels: cout)
        } else {
            let p = cfg.downsamplePadding
            let g = ConvGeometry(inChannels: cout, outChannels: cout, kernelH: 3, kernelW: 3, stride: 2,
                                 padTop: p, padLeft: p, padBottom: p == 0 ? 1 : p, padRight: p == 0 ? 1 : p)
            downsampler = TrainableResampler(.strideConv(TrainableConv2D("\(prefix).downsamplers.0.conv", store, geometry: g)), channels: cout)
        }
    }
}

public final class TrainableMidBlock {
    public let resnets: [TrainableResnet]
    public let attention: TrainableAttention?

    init(config cfg: UNetConfig, _ store: ParameterStore) {
        let c = cfg.blockOutChannels.last!
        let r0 = TrainableResnet("mid_block.resnets.0", store, in: c, out: c, temb: cfg.timeEmbedDim, groups: cfg.normNumGroups,
                                 eps: cfg.normEps, conditioning: cfg.timeConditioning, outputScaleFactor: cfg.midBlockScaleFactor)
        // Same rule as OnestepCore's MidBlock: the attention norm exists only with "default" time conditioning
        // unless attn_norm_num_groups says otherwise.
        let attnGroups = cfg.attnNormNumGroups ?? (cfg.timeConditioning == .default ? cfg.normNumGroups : nil)
        attention = cfg.addAttention
            ? TrainableAttention("mid_block.attentions.0", store, channels: c, headDim: cfg.attentionHeadDim, normGroups: attnGroups,
                                 eps: cfg.normEps, rescaleOutputFactor: cfg.midBlockScaleFactor)
            : nil
        let r1 = TrainableResnet("mid_block.resnets.1", store, in: c, out: c, temb: cfg.timeEmbedDim, groups: cfg.normNumGroups,
                                 eps: cfg.normEps, conditioning: cfg.timeConditioning, outputScaleFactor: cfg.midBlockScaleFactor)
        resnets = [r0, r1]
    }
}

public final class TrainableUpBlock {
    public let resnets: [TrainableResnet]
    public let attentions: [TrainableAttention]
    public let upsampler: TrainableResampler?
    /// Channels of the skip each resnet concatenates, in order of use.
    let skipChannels: [Int]
    /// One concatenation buffer per resnet (its input must outlive the forward) and one for the split gradient.
    let concatenated: [Buffer], hiddenGradient = Buffer()

    init(index i: Int, config cfg: UNetConfig, in cin: Int, prev: Int, out cout: Int, isFinal: Bool, _ store: ParameterStore) {
        let prefix = "up_blocks.\(i)", layers = cfg.layersPerBlock + 1, type = cfg.upBlockTypes[i]
        var res: [TrainableResnet] = [], att: [TrainableAttention] = [], skips: [Int] = []
        for j in 0..<layers {
            let skip = j == layers - 1 ? cin : cout
            skips.append(skip)
            res.append(TrainableResnet("\(prefix).resnets.\(j)", store, in: (j == 0 ? prev : cout) + skip, out: cout,
                                       temb: cfg.timeEmbedDim, groups: cfg.normNumGroups, eps: cfg.normEps,
                                       conditioning: cfg.timeConditioning))
            if type == .attnUp {
                att.append(TrainableAttention("\(prefix).attentions.\(j)", store, channels: cout, headDim: cfg.attentionHeadDim,
                                              normGroups: cfg.normNumGroups, eps: cfg.normEps))
            }
        }
        (resnets, attentions, skipChannels) = (res, att, skips)
        concatenated = (0..<layers).map { _ in Buffer() }
        guard !isFinal else { upsampler = nil; return }
        let useResnet = type == .resnetUpsample || (type == .attnUp && cfg.upsampleType == .resnet)
        if useResnet {
            upsampler = TrainableResampler(.resnet(TrainableResnet("\(prefix).upsamplers.0", store, in: cout, out: cout,
                temb: cfg.timeEmbedDim, groups: cfg.normNumGroups, eps: cfg.normEps, conditioning: cfg.timeConditioning,
                resample: .up)), channels: cout)
        } else {
            let g = ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, padding: 1)
            upsampler = TrainableResampler(.upsampleConv(TrainableConv2D("\(prefix).upsamplers.0.conv", store, geometry: g)), channels: cout)
        }
    }
}

// Down, mid and up blocks of UNet2DModel, trainable, built from the same UNet2DPlan as OnestepCore's
// UNetBlocks.swift (so the keys, shapes and block rules cannot differ); the skip tensors are handled by
// TrainableUNet.
import OnestepCore

/// The resampler at the end of a block: a stride-2 conv, nearest 2x + conv, or a resnet with up/down.
public final class TrainableResampler {
    public enum Kind { case strideConv(TrainableConv2D), upsampleConv(TrainableConv2D), resnet(TrainableResnet) }
    public let kind: Kind
    let channels: Int
    private let upsampled = Buffer(), inputGradient = Buffer()
    private var n = 0, h = 0, w = 0
    /// Upsample + 3x3 conv as four 2x2 convs of the low-res input (UpsampleConvPhases.swift), except with the
    /// reference kernels; `usedPhases` records which path the last forward took, for its backward.
    private let phases: UpsampleConvPhases?
    private var usedPhases = false

    init(_ plan: UNet2DPlan.Resampler, channels: Int, _ store: ParameterStore) {
        switch plan {
        case .strideConv(let c): kind = .strideConv(TrainableConv2D(c, store))
        case .upsampleConv(let c): kind = .upsampleConv(TrainableConv2D(c, store))
        case .resnet(let r): kind = .resnet(TrainableResnet(r, store))
        }
        self.channels = channels
        if case .upsampleConv(let c) = kind, UpsampleConvPhases.applies(to: c.geometry) {
            phases = UpsampleConvPhases(c, store)
        } else {
            phases = nil
        }
    }

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
            usedPhases = phases != nil && !TrainingKernels.reference
            if usedPhases, let phases { return phases.forward(x, batch: batch, height: height, width: width) }
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
            if usedPhases, let phases { return phases.backward(dy) }
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

    init(_ plan: UNet2DPlan.Block, _ store: ParameterStore) {
        // Registered resnet j then its attention, as before the plan existed: the keys do not depend on it, but
        // the store layout (and so existing checkpoints' optimizer state) does.
        var res: [TrainableResnet] = [], att: [TrainableAttention] = []
        for (j, r) in plan.resnets.enumerated() {
            res.append(TrainableResnet(r, store))
            if j < plan.attentions.count { att.append(TrainableAttention(plan.attentions[j], store)) }
        }
        (resnets, attentions) = (res, att)
        downsampler = plan.resampler.map { TrainableResampler($0, channels: plan.resnets.last!.outChannels, store) }
    }
}

public final class TrainableMidBlock {
    public let resnets: [TrainableResnet]
    public let attention: TrainableAttention?

    init(_ plan: UNet2DPlan.Mid, _ store: ParameterStore) {
        let r0 = TrainableResnet(plan.resnets[0], store)
        attention = plan.attention.map { TrainableAttention($0, store) }
        resnets = [r0, TrainableResnet(plan.resnets[1], store)]
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

    init(_ plan: UNet2DPlan.Block, _ store: ParameterStore) {
        var res: [TrainableResnet] = [], att: [TrainableAttention] = []
        for (j, r) in plan.resnets.enumerated() {
            res.append(TrainableResnet(r, store))
            if j < plan.attentions.count { att.append(TrainableAttention(plan.attentions[j], store)) }
        }
        (resnets, attentions, skipChannels) = (res, att, plan.skipChannels)
        concatenated = plan.resnets.map { _ in Buffer() }
        upsampler = plan.resampler.map { TrainableResampler($0, channels: plan.resnets.last!.outChannels, store) }
    }
}

// Layers from their LayerSpec: the plan fixes keys and shapes, the trainable layer adds values and gradients.
extension TrainableConv2D {
    convenience init(_ spec: LayerSpec, _ store: ParameterStore) {
        self.init(spec.key, store, geometry: spec.convGeometry!)
    }
}

extension TrainableLinear {
    convenience init(_ spec: LayerSpec, _ store: ParameterStore) {
        guard case .linear(let i, let o) = spec.kind else { preconditionFailure("\(spec.key) is not a linear layer") }
        self.init(spec.key, store, in: i, out: o)
    }
}

extension TrainableGroupNorm {
    convenience init(_ spec: LayerSpec, _ store: ParameterStore, silu: Bool) {
        guard case .groupNorm(let c, let g, let eps) = spec.kind else { preconditionFailure("\(spec.key) is not a GroupNorm") }
        self.init(spec.key, store, channels: c, groups: g, eps: eps, silu: silu)
    }
}

extension TrainableAttention {
    convenience init(_ plan: UNet2DPlan.Attention, _ store: ParameterStore) {
        var normGroups: Int?
        var eps: Float = 1e-5
        if let n = plan.norm, case .groupNorm(_, let g, let e) = n.kind { (normGroups, eps) = (g, e) }
        self.init(plan.key, store, channels: plan.channels, headDim: plan.channels / plan.heads, normGroups: normGroups, eps: eps,
                  rescaleOutputFactor: plan.rescaleOutputFactor)
    }
}

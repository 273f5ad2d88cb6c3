// UNet2DModel with a backward pass: the training twin of OnestepCore's UNet2DModel, built from the same
// UNet2DPlan and registering the same checkpoint keys, so its parameters load into (and from) the inference
// model unchanged. The forward keeps what the backward needs inside each layer's own buffers, which grow to
// the largest batch seen and are then reused: a training step allocates nothing per layer.
//
// Usage: let m = TrainableUNet(config: cfg, seed: 0)            // PyTorch-default initialisation
//        let y = m.forward(x, batch: n, timesteps: t, classLabels: labels)   // (N, Cout, S, S)
//        m.store.zeroGrads(); m.backward(dLoss_dy)              // gradients land in m.store.grads
// Legend: N batch, S sample size, T time-embedding width, C0 = block_out_channels[0].
import Foundation
import OnestepCore

public final class TrainableUNet {
    public let config: UNetConfig
    public let store = ParameterStore()
    let convIn: TrainableConv2D, timeLinear1: TrainableLinear, timeSiLU = TrainableSiLU(), timeLinear2: TrainableLinear
    let classEmbedding: Param?  // (num_class_embeds, T)
    let downBlocks: [TrainableDownBlock], midBlock: TrainableMidBlock?, upBlocks: [TrainableUpBlock]
    let normOut: TrainableGroupNorm, convOut: TrainableConv2D

    private struct Activation { var pointer: UnsafePointer<Float>; var channels: Int; var height: Int; var width: Int }
    private let input = Buffer(), sinusoid = Buffer(), embedding = Buffer(), activated = Buffer(), dActivated = Buffer()
    private let dEmbedding = Buffer()
    private var skips: [Activation] = []
    private var dSkips: [Buffer] = []
    private var labels: [Int]? = nil
    private var n = 0

    /// A freshly initialised model (PyTorch's default initialisers, from `seed`), with the layers of
    /// UNet2DPlan(config:) — the same description the inference model is built from.
    public init(config cfg: UNetConfig, seed: UInt64 = 0) {
        config = cfg
        let store = self.store, plan = UNet2DPlan(config: cfg)
        convIn = TrainableConv2D(plan.convIn, store)
        convIn.needsInputGradient = false
        timeLinear1 = TrainableLinear(plan.timeLinear1, store)
        timeLinear1.needsInputGradient = false
        timeLinear2 = TrainableLinear(plan.timeLinear2, store)
        classEmbedding = plan.classEmbedding.map { store.add($0.key + ".weight", shape: $0.tensors[0].shape, initializer: .normal) }
        downBlocks = plan.down.map { TrainableDownBlock($0, store) }
        midBlock = plan.mid.map { TrainableMidBlock($0, store) }
        upBlocks = plan.up.map { TrainableUpBlock($0, store) }
        normOut = TrainableGroupNorm(plan.normOut, store, silu: true)
        convOut = TrainableConv2D(plan.convOut, store)
        store.seal(seed: seed)
    }

    /// A model holding the given weights (a checkpoint, or an inference model's `parameters`).
    public convenience init(config cfg: UNetConfig, weights: WeightSource) throws {
        self.init(config: cfg, seed: 0)
        try store.load(from: weights)
    }

    /// A new model with the same config and a copy of the current values (student from teacher, EMA targets).
    public func clone() -> TrainableUNet {
        let m = TrainableUNet(config: config, seed: 0)
        m.store.copyValues(from: store)
        return m
    }

    /// Every tensor with its diffusers key (what diffusion_pytorch_model.safetensors holds).
    public var parameters: [(String, Tensor)] { store.tensors() }
    public var parameterCount: Int { store.count }

    /// The inference model with these weights, unpacked (call packForServing before timing it; the tests compare
    /// its referenceForward with this model's forward).
    public func inferenceModel() throws -> UNet2DModel { try UNet2DModel(config: config, weights: TensorDictionary(parameters)) }

    /// sample (N, Cin, S, S) -> (N, Cout, S, S), one timestep per image, one label per image when conditional.
    /// The result is valid until the next forward; the caches it leaves are what `backward` uses.
    public func forward(_ sample: UnsafePointer<Float>, batch: Int, timesteps: [Float], classLabels: [Int]?) -> UnsafeMutablePointer<Float> {
        precondition(timesteps.count == batch, "\(timesteps.count) timesteps for \(batch) images")
        n = batch
        let cfg = config, s = cfg.sampleSize, ch = cfg.blockOutChannels, t = cfg.timeEmbedDim
        var x = sample
        if cfg.centerInputSample {
            let b = input.ensure(batch * cfg.inChannels * s * s)
            for j in 0..<(batch * cfg.inChannels * s * s) { b[j] = 2 * sample[j] - 1 }
            x = UnsafePointer(b)
        }
        // Time embedding: sinusoid -> linear_1 -> silu -> linear_2 (+ class row) -> silu, shared by every resnet.
        let sin = TimestepEmbedding.sinusoidal(timesteps, dim: ch[0], flipSinToCos: cfg.flipSinToCos, freqShift: cfg.freqShift)
        let sinB = sinusoid.ensure(sin.count)
        sin.data.withUnsafeBufferPointer { sinB.update(from: $0.baseAddress!, count: sin.count) }
        let l1 = timeLinear1.forward(sinB, batch: batch)
        let e = embedding.ensure(batch * t)
        e.update(from: timeLinear2.forward(timeSiLU.forward(l1, count: batch * t), batch: batch), count: batch * t)
        labels = classLabels
        if let table = classEmbedding {
            guard let classLabels, classLabels.count == batch else { preconditionFailure("class-conditional model needs one label per image") }
            let tv = store.value(table)
            for i in 0..<batch {
                precondition(classLabels[i] >= 0 && classLabels[i] < cfg.numClassEmbeds!, "class label \(classLabels[i]) out of range")
                addInPlace(e + i * t, tv + classLabels[i] * t, count: t)
            }
        }
        let act = activated.ensure(batch * t)
        for j in 0..<(batch * t) { act[j] = Activations.silu(e[j]) }
        let temb = UnsafePointer(act)

        var h = Activation(pointer: convIn.forward(x, batch: batch, height: s, width: s), channels: ch[0], height: s, width: s)
        skips = [h]
        for block in downBlocks {
            for (j, resnet) in block.resnets.enumerated() {
                var y = resnet.forward(h.pointer, batch: batch, height: h.height, width: h.width, activatedTemb: temb)
                if !block.attentions.isEmpty { y = block.attentions[j].forward(y, batch: batch, spatial: h.height * h.width) }
                h = Activation(pointer: y, channels: resnet.outChannels, height: h.height, width: h.width)
                skips.append(h)
            }
            if let ds = block.downsampler {
                let (ho, wo) = ds.outputSize(height: h.height, width: h.width)
                h = Activation(pointer: ds.forward(h.pointer, batch: batch, height: h.height, width: h.width, activatedTemb: temb),
                               channels: h.channels, height: ho, width: wo)
                skips.append(h)
            }
        }
        if let mid = midBlock {
            var y = mid.resnets[0].forward(h.pointer, batch: batch, height: h.height, width: h.width, activatedTemb: temb)
            if let a = mid.attention { y = a.forward(y, batch: batch, spatial: h.height * h.width) }
            y = mid.resnets[1].forward(y, batch: batch, height: h.height, width: h.width, activatedTemb: temb)
            h.pointer = UnsafePointer(y)
        }
        var pending = skips
        for block in upBlocks {
            for (j, resnet) in block.resnets.enumerated() {
                let skip = pending.removeLast()
                let hw = h.height * h.width, cat = block.concatenated[j].ensure(batch * (h.channels + skip.channels) * hw)
                ChannelConcat.forward(h.pointer, channels: h.channels, skip.pointer, channels: skip.channels, batch: batch, spatial: hw, into: cat)
                var y = resnet.forward(cat, batch: batch, height: h.height, width: h.width, activatedTemb: temb)
                if !block.attentions.isEmpty { y = block.attentions[j].forward(y, batch: batch, spatial: hw) }
                h = Activation(pointer: y, channels: resnet.outChannels, height: h.height, width: h.width)
            }
            if let us = block.upsampler {
                let (ho, wo) = us.outputSize(height: h.height, width: h.width)
                h = Activation(pointer: us.forward(h.pointer, batch: batch, height: h.height, width: h.width, activatedTemb: temb),
                               channels: h.channels, height: ho, width: wo)
            }
        }
        let normed = normOut.forward(h.pointer, batch: batch, spatial: s * s)
        return convOut.forward(normed, batch: batch, height: s, width: s)
    }

    /// Back-propagates dLoss/d(output) (N, Cout, S, S) from the last forward, adding every parameter's gradient
    /// into `store.grads` (call `store.zeroGrads()` first for a fresh step). The input gradient is not computed.
    public func backward(_ dOut: UnsafePointer<Float>) {
        let cfg = config, s = cfg.sampleSize, t = cfg.timeEmbedDim, batch = n
        let dTemb = dActivated.ensure(batch * t)
        dTemb.update(repeating: 0, count: batch * t)
        while dSkips.count < skips.count { dSkips.append(Buffer()) }

        var dh = normOut.backward(convOut.backward(dOut))
        // The skip indices each up resnet consumed in forward (taken from the end, in order); skip k's gradient
        // goes into dSkips[k].
        var consumed: [[Int]] = []
        var next = skips.count
        for block in upBlocks {
            consumed.append((0..<block.resnets.count).map { j in next - 1 - j })
            next -= block.resnets.count
        }
        for (bi, block) in upBlocks.enumerated().reversed() {
            if let us = block.upsampler { dh = us.backward(dh, dActivatedTemb: dTemb) }
            for j in stride(from: block.resnets.count - 1, through: 0, by: -1) {
                if !block.attentions.isEmpty { dh = block.attentions[j].backward(dh) }
                let resnet = block.resnets[j]
                let dcat = resnet.backward(dh, dActivatedTemb: dTemb)
                let k = consumed[bi][j], skip = skips[k], hw = skip.height * skip.width
                let c1 = resnet.inChannels - skip.channels
                let dHidden = block.hiddenGradient.ensure(batch * c1 * hw)
                ChannelConcat.backward(dcat, channels: c1, channels: skip.channels, batch: batch, spatial: hw,
                                       da: dHidden, db: dSkips[k].ensure(batch * skip.channels * hw))
                dh = dHidden
            }
        }
        if let mid = midBlock {
            dh = mid.resnets[1].backward(dh, dActivatedTemb: dTemb)
            if let a = mid.attention { dh = a.backward(dh) }
            dh = mid.resnets[0].backward(dh, dActivatedTemb: dTemb)
        }
        // Down path: the gradient of each block output is what flowed down plus what its skip received.
        var k = skips.count - 1
        for block in downBlocks.reversed() {
            if let ds = block.downsampler {
                let g = dSkips[k].pointer
                addInPlace(g, dh, count: batch * skips[k].channels * skips[k].height * skips[k].width)
                dh = ds.backward(g, dActivatedTemb: dTemb)
                k -= 1
            }
            for j in stride(from: block.resnets.count - 1, through: 0, by: -1) {
                var g = dSkips[k].pointer
                addInPlace(g, dh, count: batch * skips[k].channels * skips[k].height * skips[k].width)
                if !block.attentions.isEmpty { g = block.attentions[j].backward(g) }
                dh = block.resnets[j].backward(g, dActivatedTemb: dTemb)
                k -= 1
            }
        }
        let g0 = dSkips[0].pointer
        addInPlace(g0, dh, count: batch * skips[0].channels * s * s)
        convIn.backward(g0)

        // Time embedding: d(silu(e)) -> de -> class rows and linear_2 -> silu -> linear_1.
        let e = embedding.pointer, de = dEmbedding.ensure(batch * t)
        for j in 0..<(batch * t) { de[j] = dTemb[j] * TrainableSiLU.derivative(e[j]) }
        if let table = classEmbedding, let labels {
            let dt = store.grad(table)
            for i in 0..<batch { addInPlace(dt + labels[i] * t, de + i * t, count: t) }
        }
        timeLinear1.backward(timeSiLU.backward(timeLinear2.backward(de)))
    }

    /// Tensor convenience for tests and sampling: (N, Cin, S, S) -> (N, Cout, S, S).
    public func forward(_ sample: Tensor, timesteps: [Float], classLabels: [Int]?) -> Tensor {
        let nOut = sample.shape[0] * config.outChannels * config.sampleSize * config.sampleSize
        let y = sample.data.withUnsafeBufferPointer { forward($0.baseAddress!, batch: sample.shape[0], timesteps: timesteps, classLabels: classLabels) }
        return Tensor(shape: [sample.shape[0], config.outChannels, config.sampleSize, config.sampleSize],
                      data: Array(UnsafeBufferPointer(start: y, count: nOut)))
    }
}

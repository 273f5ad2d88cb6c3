// The NCHW reference forward of UNet2DModel: the maths of diffusers models/unets/unet_2d.py UNet2DModel.forward
// written plainly, one image-major tensor per step, on the plain kernels (Conv2D im2col + OpenBLAS, GroupNorm,
// Attention in Kernels/). It is not the serving path (that is forwardBatched, UNet2DModel+Forward.swift): the
// tests compare the serving path against it and against the diffusers golden vectors, and the trainable model
// is checked against it.

extension UNet2DModel {
    /// sample (N, Cin, S, S), one timestep per image, one class label per image exactly when the model has a
    /// class embedding -> (N, Cout, S, S).
    public func referenceForward(_ sample: Tensor, timesteps: [Float], classLabels: [Int]?) -> Tensor {
        let n = sample.shape[0]
        precondition(sample.rank == 4 && sample.shape[1] == config.inChannels, "sample \(sample.shape) does not match in_channels \(config.inChannels)")
        precondition(timesteps.count == n, "\(timesteps.count) timesteps for \(n) images")
        checkLabels(classLabels, batch: n)
        var x = sample
        if config.centerInputSample { x.data = x.data.map { 2 * $0 - 1 } }

        var emb = timeLinear2(Activations.silu(timeLinear1(TimestepEmbedding.sinusoidal(timesteps, dim: config.blockOutChannels[0],
                                                                                        flipSinToCos: config.flipSinToCos,
                                                                                        freqShift: config.freqShift))))
        if let table = classEmbedding, let labels = classLabels {
            let t = config.timeEmbedDim
            for i in 0..<n { for j in 0..<t { emb.data[i * t + j] += table.data[labels[i] * t + j] } }
        }
        // Every resnet applies SiLU to the embedding before its projection: do it once.
        let activated = Activations.silu(emb)

        var h = convIn(x)
        var skips: [Tensor] = [h]
        for block in downBlocks {
            let (out, s) = block(h, activatedTemb: activated)
            h = out
            skips += s
        }
        if let midBlock { h = midBlock(h, activatedTemb: activated) }
        for block in upBlocks { h = block(h, skips: &skips, activatedTemb: activated) }
        h = normOut(h, silu: true)
        return convOut(h)
    }
}

extension BlockResampler {
    func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        switch self {
        case .strideConv(let conv): return conv(x)
        case .upsampleConv(let conv): return conv(Resample.upsampleNearest2x(x))
        case .resnet(let block): return block(x, activatedTemb: activatedTemb)
        }
    }
}

extension DownBlock {
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
}

extension MidBlock {
    func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        var h = resnets[0](x, activatedTemb: activatedTemb)
        if let attention { h = attention(h) }
        return resnets[1](h, activatedTemb: activatedTemb)
    }
}

extension UpBlock {
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
}

extension ResnetBlock {
    /// x (N, Cin, H, W), activated time embedding silu(temb) (N, T) -> (N, Cout, H', W').
    public func callAsFunction(_ x: Tensor, activatedTemb: Tensor) -> Tensor {
        var input = x
        var h = norm1(x, silu: true)
        switch resample {
        case .none: break
        case .up:
            input = Resample.upsampleNearest2x(input)
            h = Resample.upsampleNearest2x(h)
        case .down:
            input = Resample.averagePool2x(input)
            h = Resample.averagePool2x(h)
        }
        h = conv1(h)
        let t = timeProjection(activatedTemb)  // (N, Cout) or (N, 2*Cout)
        let n = h.shape[0], c = h.shape[1], hw = h.shape[2] * h.shape[3]
        switch conditioning {
        case .default:
            for i in 0..<n { for ch in 0..<c {
                let tv = t.data[i * c + ch], base = (i * c + ch) * hw
                for j in 0..<hw { h.data[base + j] += tv }
            } }
            h = norm2(h, silu: true)
        case .scaleShift:
            h = norm2(h)
            for i in 0..<n { for ch in 0..<c {
                let scale = 1 + t.data[i * 2 * c + ch], shift = t.data[i * 2 * c + c + ch], base = (i * c + ch) * hw
                for j in 0..<hw { h.data[base + j] = Activations.silu(h.data[base + j] * scale + shift) }
            } }
        }
        h = conv2(h)
        if let shortcut { input = shortcut(input) }
        var out = add(input, h)
        if outputScaleFactor != 1 {
            for i in out.data.indices { out.data[i] /= outputScaleFactor }
        }
        return out
    }
}

extension AttentionBlock {
    /// x (N, C, H, W) -> (N, C, H, W)
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], l = x.shape[2] * x.shape[3]
        let h = norm.map { $0(x) } ?? x
        var y = Tensor(zeros: x.shape)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Attention.scratchCount(channels: c, length: l))
        defer { scratch.deallocate() }
        withWeights { q, k, v, o in
            h.data.withUnsafeBufferPointer { hp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    for i in 0..<n {
                        Attention.forward(h: hp.baseAddress! + i * c * l, channels: c, length: l, heads: heads,
                                          q: q, k: k, v: v, out: o, y: yp.baseAddress! + i * c * l, scratch: scratch)
                    }
                }
            }
        }
        var out = add(y, x)
        if rescaleOutputFactor != 1 {
            for i in out.data.indices { out.data[i] /= rescaleOutputFactor }
        }
        return out
    }

    private func withWeights(_ body: (ProjectionWeights, ProjectionWeights, ProjectionWeights, ProjectionWeights) -> Void) {
        func with(_ l: LinearLayer, _ f: (ProjectionWeights) -> Void) {
            l.weight.data.withUnsafeBufferPointer { w in
                l.bias.data.withUnsafeBufferPointer { b in f(ProjectionWeights(weight: w.baseAddress!, bias: b.baseAddress!)) }
            }
        }
        with(toQ) { q in with(toK) { k in with(toV) { v in with(toOut) { o in body(q, k, v, o) } } } }
    }
}

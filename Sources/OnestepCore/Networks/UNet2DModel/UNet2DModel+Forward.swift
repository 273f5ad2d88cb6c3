// The serving forward pass, the one path the server, the samplers, `onestep-serve run-unet` and the benches
// run: the maths of diffusers UNet2DModel.forward on channel-major activations from a BufferPool, so each
// layer is one GEMM over the whole batch and steady-state passes allocate no activation memory. Layers run on
// the kernels packForServing chose for them. Tested against referenceForward (UNet2DModel+Reference.swift) and
// the diffusers golden vectors.

extension UNet2DModel {
    /// sample (N, Cin, S, S), one timestep per image, one class label per image exactly when the model has a
    /// class embedding -> (N, Cout, S, S).
    /// - Precondition: labels are given (one per image, in range) on a class-conditional model and nil on an
    ///   unconditional one; a missing label is never silently replaced by "no class". Callers facing user
    ///   input check first (ImagePipeline.resolveLabel, run-unet).
    public func forwardBatched(_ sample: Tensor, timesteps: [Float], classLabels: [Int]?, pool: BufferPool) -> Tensor {
        let n = sample.shape[0]
        precondition(sample.rank == 4 && sample.shape[1] == config.inChannels, "sample \(sample.shape) does not match in_channels \(config.inChannels)")
        precondition(timesteps.count == n, "\(timesteps.count) timesteps for \(n) images")
        checkLabels(classLabels, batch: n)
        var input = sample
        if config.centerInputSample { input.data = input.data.map { 2 * $0 - 1 } }
        let activated = timeEmbedding(timesteps: timesteps, classLabels: classLabels)  // silu(emb) (N, T)
        let x = ChannelMajor.fromNCHW(input, pool: pool)
        var h = ChannelMajor.conv(x, convIn, pool: pool)
        x.release(to: pool)
        var skips: [Activation] = [h]
        for block in downBlocks {
            for (j, r) in block.resnets.enumerated() {
                h = r.forward(h, activatedTemb: activated, pool: pool, releaseInput: false)
                if !block.attentions.isEmpty { h = block.attentions[j].forward(h, pool: pool) }
                skips.append(h)
            }
            if let d = block.downsampler {
                h = d.forward(h, activatedTemb: activated, pool: pool)
                skips.append(h)
            }
        }
        if let mid = midBlock {
            h = mid.resnets[0].forward(h, activatedTemb: activated, pool: pool, releaseInput: false)
            if let a = mid.attention { h = a.forward(h, pool: pool, releaseInput: true) }
            h = mid.resnets[1].forward(h, activatedTemb: activated, pool: pool, releaseInput: true)
        }
        // h after the mid block is owned here; skips are owned by the stack.
        var hOwned = midBlock != nil
        for block in upBlocks {
            for (j, r) in block.resnets.enumerated() {
                let skip = skips.removeLast()
                let cat = ChannelMajor.concat(h, skip, pool: pool)
                if hOwned { h.release(to: pool) }
                skip.release(to: pool)
                h = r.forward(cat, activatedTemb: activated, pool: pool, releaseInput: true)
                if !block.attentions.isEmpty { h = block.attentions[j].forward(h, pool: pool, releaseInput: true) }
                hOwned = true
            }
            if let u = block.upsampler {
                let up = u.forward(h, activatedTemb: activated, pool: pool)
                h.release(to: pool)
                h = up
            }
        }
        for s in skips { s.release(to: pool) }  // none left for a well-formed config
        ChannelMajor.groupNorm(h, normOut, silu: true, into: h.data, team: pool.team)
        let y = ChannelMajor.conv(h, convOut, pool: pool)
        h.release(to: pool)
        let out = ChannelMajor.toNCHW(y)
        y.release(to: pool)
        return out
    }

    /// Stops on labels that do not fit the model: the same rule for the serving and the reference forward.
    func checkLabels(_ labels: [Int]?, batch n: Int) {
        if let k = config.numClassEmbeds {
            guard let labels else { preconditionFailure("class-conditional model (\(k) classes) called without class labels") }
            precondition(labels.count == n, "\(labels.count) class labels for \(n) images")
            for l in labels { precondition(l >= 0 && l < k, "class label \(l) out of range 0..<\(k)") }
        } else {
            precondition(labels == nil, "unconditional model called with class labels")
        }
    }

    /// silu(time MLP(sinusoid(t)) + class embedding): what every resnet's time projection consumes. (N, T)
    func timeEmbedding(timesteps: [Float], classLabels: [Int]?) -> Tensor {
        var emb = timeLinear2.serve(Activations.silu(timeLinear1.serve(TimestepEmbedding.sinusoidal(
            timesteps, dim: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos, freqShift: config.freqShift))))
        if let table = classEmbedding, let labels = classLabels {
            let t = config.timeEmbedDim
            for (i, row) in labels.enumerated() {
                for j in 0..<t { emb.data[i * t + j] += table.data[row * t + j] }
            }
        }
        return Activations.silu(emb)
    }
}

extension ResnetBlock {
    /// x (Cin, N, H, W) -> (Cout, N, H', W'). Releases x when `releaseInput` (it is not a skip tensor).
    func forward(_ x: Activation, activatedTemb: Tensor, pool: BufferPool, releaseInput: Bool) -> Activation {
        if runsInt8Fused { return forwardInt8(x, activatedTemb: activatedTemb, pool: pool, releaseInput: releaseInput) }
        var input = x
        var h = Activation(pool: pool, channels: x.channels, batch: x.batch, height: x.height, width: x.width)
        ChannelMajor.groupNorm(x, norm1, silu: true, into: h.data, team: pool.team)
        var ownsInput = releaseInput
        switch resample {
        case .none: break
        case .up, .down:
            let h2 = resampled(h, pool: pool)
            h.release(to: pool)
            h = h2
            let x2 = resampled(input, pool: pool)
            if ownsInput { input.release(to: pool) }
            input = x2
            ownsInput = true
        }
        let h1 = ChannelMajor.conv(h, conv1, pool: pool)
        h.release(to: pool)
        let t = timeProjection.serve(activatedTemb)  // (N, Cout) or (N, 2*Cout)
        t.data.withUnsafeBufferPointer { tp in
            switch conditioning {
            case .default: ChannelMajor.groupNorm(h1, norm2, silu: true, preShift: tp.baseAddress!, into: h1.data, team: pool.team)
            case .scaleShift: ChannelMajor.groupNorm(h1, norm2, silu: true, scaleShift: tp.baseAddress!, into: h1.data, team: pool.team)
            }
        }
        // out = shortcut(input) + conv2(h1): the residual is written first and conv2 accumulates onto it.
        var out: Activation
        if let shortcut {
            out = ChannelMajor.conv(input, shortcut, pool: pool)
        } else {
            out = Activation(pool: pool, channels: input.channels, batch: input.batch, height: input.height, width: input.width)
            out.data.update(from: input.data, count: input.count)
        }
        if ownsInput { input.release(to: pool) }
        out = ChannelMajor.conv(h1, conv2, pool: pool, accumulateInto: out)
        h1.release(to: pool)
        if outputScaleFactor != 1 {
            let inv = 1 / outputScaleFactor
            for j in 0..<out.count { out.data[j] *= inv }
        }
        return out
    }

    /// a nearest-upsampled 2x (.up) or 2x2-average-pooled (.down), as `forward` and `forwardInt8` resample.
    func resampled(_ a: Activation, pool: BufferPool) -> Activation {
        let up = resample == .up
        let b = Activation(pool: pool, channels: a.channels, batch: a.batch,
                           height: up ? 2 * a.height : a.height / 2, width: up ? 2 * a.width : a.width / 2)
        if up {
            Resample.upsampleNearest2x(a.data, planes: a.channels * a.batch, height: a.height, width: a.width, y: b.data)
        } else {
            Resample.averagePool2x(a.data, planes: a.channels * a.batch, height: a.height, width: a.width, y: b.data)
        }
        return b
    }
}

extension AttentionBlock {
    /// x (C, N, H, W) -> same shape. Keeps x unless `releaseInput`.
    func forward(_ x: Activation, pool: BufferPool, releaseInput: Bool = true) -> Activation {
        if let qkv = packedQKV8, let wo = toOut.packed8 {
            return forwardInt8(x, qkv: qkv, out: wo, pool: pool, releaseInput: releaseInput)
        }
        var normed = x
        if let norm {
            normed = Activation(pool: pool, channels: x.channels, batch: x.batch, height: x.height, width: x.width)
            ChannelMajor.groupNorm(x, norm, silu: false, into: normed.data, team: pool.team)
        }
        let y = ChannelMajor.attention(normed, residual: x, self, pool: pool)
        if norm != nil { normed.release(to: pool) }
        if releaseInput { x.release(to: pool) }
        return y
    }
}

extension BlockResampler {
    /// Keeps x (the caller owns it).
    func forward(_ x: Activation, activatedTemb: Tensor, pool: BufferPool) -> Activation {
        switch self {
        case .strideConv(let conv): return ChannelMajor.conv(x, conv, pool: pool)
        case .upsampleConv(let conv): return ChannelMajor.conv(x, conv, upsample: true, pool: pool)
        case .resnet(let block): return block.forward(x, activatedTemb: activatedTemb, pool: pool, releaseInput: false)
        }
    }
}

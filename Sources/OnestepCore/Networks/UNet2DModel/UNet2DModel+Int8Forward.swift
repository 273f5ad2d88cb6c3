// The int8 serving forward of the pixel UNet's resnets and attention blocks: what UNet2DModel+Forward.swift runs
// when the layers after each GroupNorm are packed int8 (the int8 policies). Same maths as the general forward,
// with the passes between the layers fused away:
// - every GroupNorm (+ SiLU) writes the int8 codes of its output directly (ChannelMajor.groupNormQuantized), never
//   the fp32 activation the next convolution would only quantize;
// - biases and residuals go into the int8 convolution's epilogue (FastConv.convFused): the output is written
//   once instead of bias-filled (or residual-copied), then read and written by the kernel;
// - q, k and v are one (3C, C) int8 product over one quantization of the normalized input (packedQKV8).
// The values each convolution sums, their int8 ranges and codes are the general forward's (ChannelMajor+Int8.swift
// finds the same ranges without the fp32 pass), so the bytes are the same (the int8-vs-fp32 figures of
// PackedModelTests and Int8QualityTests did not move). Batch and thread invariance hold as there: every range,
// coefficient and code is per image, every output element one fixed integer sum (Int8FusedForwardTests).

extension ResnetBlock {
    /// True when `forwardInt8` applies: both 3x3 convolutions packed int8.
    var runsInt8Fused: Bool {
        guard case .int8? = conv1.packed, case .int8? = conv2.packed else { return false }
        return true
    }

    /// x (Cin, N, H, W) -> (Cout, N, H', W'), as `forward`. Releases x when `releaseInput` (and may return it, written
    /// over in place, as the output).
    func forwardInt8(_ x: Activation, activatedTemb: Tensor, pool: BufferPool, releaseInput: Bool) -> Activation {
        guard case .int8(let w1)? = conv1.packed, case .int8(let w2)? = conv2.packed else {
            preconditionFailure("forwardInt8 on a resnet not packed int8")
        }
        let team = pool.team
        var x = x, releaseInput = releaseInput
        let h1: Activation
        // x's range for an int8 1x1 shortcut, found by norm1 (saves the shortcut's quantizer a range pass).
        var shortcutRange: [Float]?
        if resample == .none {
            if case .int8? = shortcut?.packed { shortcutRange = [Float](repeating: 0, count: 2 * x.batch) }
            let q1 = shortcutRange.withOptionalMutablePointer { r in
                ChannelMajor.groupNormQuantized(x, norm1, silu: true, inputRange: r, pool: pool)
            }
            h1 = FastConv.convFused(q1, w1, pool: pool, team: team)
            q1.release(to: pool)
        } else {
            // Up / down resnets resample norm1's output (and x) before conv1: the norm stays fp32 here.
            let h = Activation(pool: pool, channels: x.channels, batch: x.batch, height: x.height, width: x.width)
            ChannelMajor.groupNorm(x, norm1, silu: true, into: h.data, team: team)
            let hr = resampled(h, pool: pool)
            h.release(to: pool)
            h1 = FastConv.convFused(hr, w1, pool: pool, relu: false, outputRange: false, team: team).0
            hr.release(to: pool)
            let xr = resampled(x, pool: pool)
            if releaseInput { x.release(to: pool) }
            x = xr
            releaseInput = true
        }
        let t = timeProjection.serve(activatedTemb)  // (N, Cout) or (N, 2*Cout)
        let q2 = t.data.withUnsafeBufferPointer { tp in
            switch conditioning {
            case .default: return ChannelMajor.groupNormQuantized(h1, norm2, silu: true, preShift: tp.baseAddress!, pool: pool)
            case .scaleShift: return ChannelMajor.groupNormQuantized(h1, norm2, silu: true, scaleShift: tp.baseAddress!, pool: pool)
            }
        }
        h1.release(to: pool)
        // out = shortcut(x) + conv2(h1) + bias: the residual enters conv2's epilogue (in place when it is ours).
        var out: Activation
        if let shortcut {
            let s: Activation
            if case .int8(let ws)? = shortcut.packed {
                s = FastConv.convFused(x, ws, pool: pool, relu: false, inputRange: shortcutRange, outputRange: false, team: team).0
            } else {
                s = ChannelMajor.conv(x, shortcut, pool: pool)
            }
            if releaseInput { x.release(to: pool) }
            out = FastConv.convFused(q2, w2, pool: pool, into: s, residual: s, team: team)
        } else if releaseInput {
            out = FastConv.convFused(q2, w2, pool: pool, into: x, residual: x, team: team)
        } else {
            out = FastConv.convFused(q2, w2, pool: pool, residual: x, team: team)
        }
        q2.release(to: pool)
        if outputScaleFactor != 1 {
            let inv = 1 / outputScaleFactor
            for j in 0..<out.count { out.data[j] *= inv }
        }
        return out
    }
}

extension AttentionBlock {
    /// x (C, N, H, W) -> same shape, as `forward`, on packedQKV8 and an int8 to_out. Keeps x unless `releaseInput`
    /// (then the output may be x, written over in place).
    func forwardInt8(_ x: Activation, qkv: PackedConvInt8, out wo: PackedConvInt8, pool: BufferPool, releaseInput: Bool) -> Activation {
        let c = x.channels, l = x.pixels, n = x.batch, cols = n * l, d = c / heads, team = pool.team
        let codes: QuantizedActivation
        if let norm {
            codes = ChannelMajor.groupNormQuantized(x, norm, silu: false, pool: pool)
        } else {
            codes = QuantizedActivation(pool: pool, channels: c, batch: n, height: x.height, width: x.width)
            FastConv.quantizeActivations(x, codes: codes.codes, scales: codes.scales, zeroPoints: codes.zeroPoints, team: team)
        }
        let projected = FastConv.convFused(codes, qkv, pool: pool, team: team)   // (3C, N, H, W): q, k, v
        codes.release(to: pool)
        let o = Activation(pool: pool, channels: c, batch: n, height: x.height, width: x.width)
        let scratchCount = FastAttention.scratchCount(headPrecision, length: l, headDim: d)   // per team thread
        let parts = team?.threads ?? 1
        let scratch = pool.acquire(scratchCount * parts)
        let scale = Float(1.0 / Double(d).squareRoot()), precision = headPrecision, h = heads
        nonisolated(unsafe) let qp = projected.data, kp = projected.data + c * cols, vp = projected.data + 2 * c * cols
        nonisolated(unsafe) let op = o.data, pp = scratch
        // (image, head) pairs, as ChannelMajor.attention runs them.
        FastConv.forEachPart(n * heads, granule: 1, team: team) { worker, u0, u1 in
            for u in u0..<u1 {
                let off = (u % h) * d * cols + (u / h) * l
                FastAttention.head(precision, q: qp + off, k: kp + off, v: vp + off, ld: cols, length: l, headDim: d,
                                   scale: scale, out: op + off, scratch: pp + scratchCount * worker)
            }
        }
        pool.release(scratch, count: scratchCount * parts)
        projected.release(to: pool)
        let y = FastConv.convFused(o, wo, pool: pool, into: releaseInput ? x : nil, residual: x, relu: false,
                                   outputRange: false, team: team).0
        o.release(to: pool)
        if rescaleOutputFactor != 1 {
            let inv = 1 / rescaleOutputFactor
            for j in 0..<(c * cols) { y.data[j] *= inv }
        }
        return y
    }
}

extension Optional where Wrapped == [Float] {
    /// Calls body with a mutable pointer to the array's floats, or nil.
    mutating func withOptionalMutablePointer<R>(_ body: (UnsafeMutablePointer<Float>?) -> R) -> R {
        guard self != nil else { return body(nil) }
        return self!.withUnsafeMutableBufferPointer { body($0.baseAddress) }
    }
}

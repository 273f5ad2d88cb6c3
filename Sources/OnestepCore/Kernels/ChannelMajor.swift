// Batched kernels on channel-major activations (C, N, H, W) — see Activation in BufferPool.swift.
// Convolutions and projections become one GEMM over all N*H*W columns of the batch; statistics (GroupNorm,
// softmax) stay per image in a fixed order, so an image's result does not depend on its batch neighbours.
import Foundation

public enum ChannelMajor {
    /// (N, C, H, W) tensor -> (C, N, H, W) activation.
    public static func fromNCHW(_ t: Tensor, pool: BufferPool) -> Activation {
        let n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3], hw = h * w
        let a = Activation(pool: pool, channels: c, batch: n, height: h, width: w)
        t.data.withUnsafeBufferPointer { src in
            for i in 0..<n { for ch in 0..<c {
                (a.data + (ch * n + i) * hw).update(from: src.baseAddress! + (i * c + ch) * hw, count: hw)
            } }
        }
        return a
    }

    /// (C, N, H, W) activation -> (N, C, H, W) tensor.
    public static func toNCHW(_ a: Activation) -> Tensor {
        var t = Tensor(zeros: [a.batch, a.channels, a.height, a.width])
        let hw = a.pixels
        t.data.withUnsafeMutableBufferPointer { dst in
            for i in 0..<a.batch { for ch in 0..<a.channels {
                (dst.baseAddress! + (i * a.channels + ch) * hw).update(from: a.data + (ch * a.batch + i) * hw, count: hw)
            } }
        }
        return t
    }

    /// Unfolds every image into columns: col (Cin*KH*KW, N*Ho*Wo). With `upsample`, the input is read as if it
    /// were nearest-upsampled 2x first (fuses Upsample2D's interpolate into the conv that follows it).
    public static func im2col(_ x: Activation, geometry g: ConvGeometry, upsample: Bool, into col: UnsafeMutablePointer<Float>) {
        let h = upsample ? 2 * x.height : x.height, w = upsample ? 2 * x.width : x.width
        let ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, n = x.batch
        let shift = upsample ? 1 : 0, srcW = x.width
        var row = 0
        for c in 0..<g.inChannels {
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    for i in 0..<n {
                        let plane = x.data + (c * n + i) * x.pixels
                        let dst = col + row * n * p + i * p
                        for oy in 0..<ho {
                            let iy = oy * g.stride - g.padTop + ky
                            let out = dst + oy * wo
                            guard iy >= 0 && iy < h else {
                                out.update(repeating: 0, count: wo)
                                continue
                            }
                            let src = plane + (iy >> shift) * srcW
                            if g.stride == 1 && !upsample {
                                Conv2D.copyShiftedRow(src, width: w, offset: kx - g.padLeft, into: out, count: wo)
                            } else {
                                for ox in 0..<wo {
                                    let ix = ox * g.stride - g.padLeft + kx
                                    out[ox] = (ix >= 0 && ix < w) ? src[ix >> shift] : 0
                                }
                            }
                        }
                    }
                    row += 1
                }
            }
        }
    }

    /// y (Cout, N, Ho, Wo) = conv(x) + bias [+ y's existing contents when `accumulate`].
    /// The bias (and residual) are written first and the GEMM accumulates onto them (beta = 1).
    public static func conv(_ x: Activation, _ layer: Conv2DLayer, upsample: Bool = false, pool: BufferPool,
                            accumulateInto existing: Activation? = nil) -> Activation {
        let g = layer.geometry
        precondition(x.channels == g.inChannels, "conv \(layer.key): input has \(x.channels) channels, needs \(g.inChannels)")
        switch layer.packed {
        case .f32(let w): return FastConv.conv(x, w, upsample: upsample, pool: pool, accumulateInto: existing, team: pool.team)
        case .int8(let w): return FastConv.conv(x, w, upsample: upsample, pool: pool, accumulateInto: existing, team: pool.team)
        case nil: break
        }
        // Bias (and the residual already in `existing`) first; the GEMM accumulates onto it (beta = 1).
        let y = FastConv.prepareOutput(x, g, bias: layer.bias?.data, upsample: upsample, pool: pool, existing: existing)
        let cols = y.columns
        let k = g.reduction
        layer.weight.data.withUnsafeBufferPointer { wp in
            if g.isPointwise && !upsample {
                BLAS.sgemm(m: g.outChannels, n: cols, k: k, a: wp.baseAddress!, lda: k, b: x.data, ldb: cols,
                           beta: 1, c: y.data, ldc: cols)
            } else {
                let col = pool.acquire(k * cols)
                im2col(x, geometry: g, upsample: upsample, into: col)
                BLAS.sgemm(m: g.outChannels, n: cols, k: k, a: wp.baseAddress!, lda: k, b: col, ldb: cols,
                           beta: 1, c: y.data, ldc: cols)
                pool.release(col, count: k * cols)
            }
        }
        return y
    }

    /// GroupNorm over each image's groups, fused with what surrounds it in diffusers' resnet blocks:
    ///   v = x + preShift[n, c]                       (time embedding added before norm2, "default")
    ///   y = (groupnorm(v) * gamma + beta) * (1 + scale[n, c]) + shift[n, c]   ("scale_shift"; t = [scale | shift])
    ///   y = silu(y) when `silu`.
    /// preShift is (N, C); scaleShift is (N, 2C). y may be x. A `team` splits the (image, group) pairs between
    /// its threads; each pair is computed the same way on any thread.
    /// Mean and 1 / sqrt(variance + eps) of image i's group g of x (C, N, HW) (+ preShift (N, C) added first),
    /// in Double: groupNorm and groupNormQuantized both take them from here.
    @inline(__always)
    static func groupStatistics(_ x: UnsafePointer<Float>, image i: Int, group g: Int, channels c: Int, groups: Int, pixels hw: Int,
                                batch n: Int, preShift pre: UnsafePointer<Float>?, eps: Double,
                                level: KernelLevel = .best) -> (mean: Double, rstd: Double) {
        let cpg = c / groups, first = g * cpg
        let (mean, variance) = FastConv.groupMoments(x + first * n * hw + i * hw, planeStride: n * hw, planes: cpg, count: hw,
                                                     shift: pre.map { $0 + i * c + first }, level: level)
        return (mean, 1 / (variance + eps).squareRoot())
    }

    /// One channel's GroupNorm as y = a x + b, in Double then rounded once: a = rstd gamma, b = beta + (shift - mean) a,
    /// then the scale-shift's (1 + scale, shift) when given. groupNorm and groupNormQuantized both take it from here,
    /// so their outputs agree bit for bit.
    @inline(__always)
    static func groupNormAffine(mean: Double, rstd: Double, gamma: Float, beta: Float, shiftBefore: Float,
                                scaleShift: (scale: Float, shift: Float)?) -> (a: Float, b: Float) {
        var a = rstd * Double(gamma)
        var b = Double(beta) + (Double(shiftBefore) - mean) * a
        if let (s, t) = scaleShift {
            let scale = 1 + Double(s)
            a *= scale
            b = b * scale + Double(t)
        }
        return (Float(a), Float(b))
    }

    /// For each (image, group) pair, split across `team`: the group's statistics (groupStatistics), then
    /// `body(image, group, channels, affine)` where affine(ch) gives (a, b) with GroupNorm(x)[ch] = a * x[ch] + b
    /// (groupNormAffine, with the pre-shift and scale-shift). groupNorm and groupNormQuantized both run on it, so the
    /// float and int8 paths take their coefficients from one place.
    static func forEachGroupAffine(_ x: Activation, _ layer: GroupNormLayer, preShift: UnsafePointer<Float>?,
                                   scaleShift: UnsafePointer<Float>?, team: ThreadTeam?, level: KernelLevel = .best,
                                   _ body: @Sendable (_ image: Int, _ group: Int, _ channels: Range<Int>,
                                                      _ affine: (Int) -> (a: Float, b: Float)) -> Void) {
        let c = x.channels, n = x.batch, hw = x.pixels, groups = layer.groups, cpg = c / groups, eps = Double(layer.eps)
        nonisolated(unsafe) let xd = x.data, pre = preShift, ss = scaleShift
        layer.gamma.data.withUnsafeBufferPointer { gammaBuffer in
            layer.beta.data.withUnsafeBufferPointer { betaBuffer in
                nonisolated(unsafe) let gamma = gammaBuffer.baseAddress!, beta = betaBuffer.baseAddress!
                FastConv.forEachRange(n * groups, granule: 1, team: team) { u0, u1 in
                    for u in u0..<u1 {
                        let i = u / groups, g = u % groups
                        let (mean, rstd) = groupStatistics(xd, image: i, group: g, channels: c, groups: groups, pixels: hw,
                                                           batch: n, preShift: pre, eps: eps, level: level)
                        body(i, g, g * cpg..<(g + 1) * cpg) { ch in
                            groupNormAffine(mean: mean, rstd: rstd, gamma: gamma[ch], beta: beta[ch],
                                            shiftBefore: pre?[i * c + ch] ?? 0,
                                            scaleShift: ss.map { ($0[i * 2 * c + ch], $0[i * 2 * c + c + ch]) })
                        }
                    }
                }
            }
        }
    }

    public static func groupNorm(_ x: Activation, _ layer: GroupNormLayer, silu: Bool,
                                 preShift: UnsafePointer<Float>? = nil, scaleShift: UnsafePointer<Float>? = nil,
                                 into y: UnsafeMutablePointer<Float>, team: ThreadTeam? = nil) {
        let hw = x.pixels, stride = x.batch * hw
        nonisolated(unsafe) let xd = x.data, yd = y
        forEachGroupAffine(x, layer, preShift: preShift, scaleShift: scaleShift, team: team) { i, _, channels, affine in
            for ch in channels {
                let (fa, fb) = affine(ch)
                let src = xd + ch * stride + i * hw, dst = yd + ch * stride + i * hw
                if silu {
                    Activations.affineSiLU(src, dst, count: hw, a: fa, b: fb)
                } else {
                    for j in 0..<hw { dst[j] = src[j] * fa + fb }
                }
            }
        }
    }

    /// y (C, N*L) = residual + to_out(attention(h)) for each image, then / rescale. h is the normalized input,
    /// `residual` the block input; y is a new activation.
    public static func attention(_ h: Activation, residual: Activation, _ block: AttentionBlock, pool: BufferPool) -> Activation {
        let c = h.channels, l = h.pixels, n = h.batch, cols = n * l, heads = block.heads, d = c / heads
        let team = pool.team, parts = team?.threads ?? 1
        let q = pool.acquire(c * cols), k = pool.acquire(c * cols), v = pool.acquire(c * cols), o = pool.acquire(c * cols)
        let precision = block.headPrecision
        let scratchCount = FastAttention.scratchCount(precision, length: l, headDim: d)   // per team thread: whole heads
        let p = pool.acquire(scratchCount * parts)
        defer {
            for b in [q, k, v, o] { pool.release(b, count: c * cols) }
            pool.release(p, count: scratchCount * parts)
        }
        func project(_ layer: LinearLayer, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, accumulate: Bool) {
            if let p8 = layer.packed8 {
                // int8: a 1x1 convolution over each image's pixels (per-image activation scale), bias added on y.
                if !accumulate { y.update(repeating: 0, count: c * cols) }
                let xv = Activation(viewing: UnsafeMutablePointer(mutating: x), channels: c, batch: n, height: h.height, width: h.width)
                let yv = Activation(viewing: y, channels: c, batch: n, height: h.height, width: h.width)
                _ = FastConv.conv(xv, p8, pool: pool, accumulateInto: yv, team: team)
                return
            }
            layer.bias.data.withUnsafeBufferPointer { bp in
                for ch in 0..<c {
                    let row = y + ch * cols, bv = bp[ch]
                    if accumulate { for j in 0..<cols { row[j] += bv } } else { row.update(repeating: bv, count: cols) }
                }
            }
            if let bf = layer.packedBF16 {
                FastConv.gemm(bf, b: x, ldb: cols, c: y, ldc: cols, columns: 0..<cols, team: team)
            } else if let packed = layer.packed {
                FastConv.gemm(packed, b: x, ldb: cols, c: y, ldc: cols, columns: 0..<cols, team: team)
            } else {
                layer.weight.data.withUnsafeBufferPointer { wp in
                    BLAS.sgemm(m: c, n: cols, k: c, a: wp.baseAddress!, lda: c, b: x, ldb: cols, beta: 1, c: y, ldc: cols)
                }
            }
        }
        project(block.toQ, h.data, into: q, accumulate: false)
        project(block.toK, h.data, into: k, accumulate: false)
        project(block.toV, h.data, into: v, accumulate: false)
        let scale = Float(1.0 / Double(d).squareRoot())
        nonisolated(unsafe) let qp = q, kp = k, vp = v, op = o, pp = p
        // (image, head) pairs split into one contiguous range per thread, each with its own scratch; each pair
        // is one C call, Oh (D, Lq) = Vh softmax(scale Qh^T Kh)^T, computed the same way on any thread (fp32, or bf16
        // products when the policy says so: FastAttention).
        FastConv.forEachPart(n * heads, granule: 1, team: team) { worker, u0, u1 in
            let scratch = pp + scratchCount * worker
            for u in u0..<u1 {
                let off = (u % heads) * d * cols + (u / heads) * l
                FastAttention.head(precision, q: qp + off, k: kp + off, v: vp + off, ld: cols, length: l, headDim: d,
                                   scale: scale, out: op + off, scratch: scratch)
            }
        }
        let y = Activation(pool: pool, channels: c, batch: n, height: h.height, width: h.width)
        y.data.update(from: residual.data, count: c * cols)
        project(block.toOut, o, into: y.data, accumulate: true)
        if block.rescaleOutputFactor != 1 {
            let inv = 1 / block.rescaleOutputFactor
            for j in 0..<(c * cols) { y.data[j] *= inv }
        }
        return y
    }

    /// (Ca, N, H, W) ++ (Cb, N, H, W) -> (Ca + Cb, N, H, W): in channel-major layout, two block copies.
    public static func concat(_ a: Activation, _ b: Activation, pool: BufferPool) -> Activation {
        let y = Activation(pool: pool, channels: a.channels + b.channels, batch: a.batch, height: a.height, width: a.width)
        y.data.update(from: a.data, count: a.count)
        (y.data + a.count).update(from: b.data, count: b.count)
        return y
    }
}

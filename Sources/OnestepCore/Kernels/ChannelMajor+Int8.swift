// GroupNorm (+ SiLU) written straight as int8 activation codes for the int8 convolution that follows it.
//
// In the int8 pixel UNet every GroupNorm feeds an int8 convolution (norm1 -> conv1, norm2 -> conv2, the attention
// norm -> q/k/v). Done apart, the norm read x twice for its moments and once more to write h (fp32), then the
// quantizer read h for its range and again for its codes. Here the per-image range comes from a pass of compares
// over each channel of x while its group is still in L2 after the moments (onestep_norm_q8.c: the extreme
// pre-activations, and for SiLU the two nearest its minimum; no e^x per value), and the codes are written in one
// pass from x; h never exists. The values coded are those ChannelMajor.groupNorm writes (same coefficients, same
// arithmetic) and the range is theirs, so the codes are those of quantizing h.
//
// Determinism: the coefficients and bounds are per (image, group), the range a min / max (exact in any order),
// and each code one element's arithmetic, so the codes do not depend on the batch, the image's position or the
// team size.

/// Activations quantized for the int8 convolutions: codes [C4][N*H*W] (4 channels per 32-bit word, as
/// osk_q8_encode lays them out) and one (scale, zero point) per image, in pool memory.
public struct QuantizedActivation {
    public let channels: Int, batch: Int, height: Int, width: Int
    /// The pool buffers: codes (C4 * N*H*W words) and params (N scales, then N zero points as Int32 bits).
    let words: UnsafeMutablePointer<Float>, params: UnsafeMutablePointer<Float>

    public var pixels: Int { height * width }
    var wordCount: Int { (channels + 3) / 4 * batch * pixels }
    var codes: UnsafeMutablePointer<UInt32> { UnsafeMutableRawPointer(words).assumingMemoryBound(to: UInt32.self) }
    var scales: UnsafeMutablePointer<Float> { params }
    var zeroPoints: UnsafeMutablePointer<Int32> { UnsafeMutableRawPointer(params + batch).assumingMemoryBound(to: Int32.self) }

    public init(pool: BufferPool, channels: Int, batch: Int, height: Int, width: Int) {
        self.channels = channels
        self.batch = batch
        self.height = height
        self.width = width
        words = pool.acquire((channels + 3) / 4 * batch * height * width)
        params = pool.acquire(2 * batch)
    }

    public func release(to pool: BufferPool) {
        pool.release(words, count: wordCount)
        pool.release(params, count: 2 * batch)
    }
}

extension ChannelMajor {
    /// The codes of `groupNorm(x, layer, silu:, preShift:, scaleShift:)`'s output (see the file comment), for an int8
    /// convolution (FastConv.convFused(QuantizedActivation, ...)). A `team` splits the (image, group) pairs, then the
    /// (image, channel quad) pairs. With `inputRange` (2 per image), also writes x's own per-image (lo, hi), with 0,
    /// as osk_q8_range finds it: the `inputRange` of FastConv.convFused for a convolution of x itself (the 1x1
    /// shortcut), whose range pass it saves; the planes are read for it while in L2.
    public static func groupNormQuantized(_ x: Activation, _ layer: GroupNormLayer, silu: Bool,
                                          preShift: UnsafePointer<Float>? = nil, scaleShift: UnsafePointer<Float>? = nil,
                                          inputRange: UnsafeMutablePointer<Float>? = nil,
                                          pool: BufferPool, level: KernelLevel = .best) -> QuantizedActivation {
        let c = x.channels, n = x.batch, hw = x.pixels, groups = layer.groups, c4 = (c + 3) / 4
        let stride = n * hw, team = pool.team
        let out = QuantizedActivation(pool: pool, channels: c, batch: n, height: x.height, width: x.width)
        // Per image: a (C), b (C); per (image, group): the bound (lo, hi) of its values.
        let coefficients = pool.acquire(2 * n * c), bounds = pool.acquire(4 * n * groups)
        defer { pool.release(coefficients, count: 2 * n * c); pool.release(bounds, count: 4 * n * groups) }
        nonisolated(unsafe) let xd = x.data, ab = coefficients, bd = bounds
        let raw = inputRange != nil
        forEachGroupAffine(x, layer, preShift: preShift, scaleShift: scaleShift, team: team, level: level) { i, g, channels, affine in
            var lo: Float = 0, hi: Float = 0, xlo: Float = 0, xhi: Float = 0
            for ch in channels {
                // ChannelMajor.groupNorm's coefficients, from the same function.
                let (fa, fb) = affine(ch)
                ab[i * c + ch] = fa
                ab[n * c + i * c + ch] = fb
                let plane = xd + ch * stride + i * hw
                if raw {
                    let r = FastConv.planeRange(plane, count: hw, level: level)
                    xlo = min(xlo, r.lo)
                    xhi = max(xhi, r.hi)
                }
                if silu {
                    FastConv.foldSiLURange(plane, count: hw, a: fa, b: fb, into: &lo, &hi, level: level)
                } else {
                    FastConv.foldAffineBounds(FastConv.planeRange(plane, count: hw, level: level), a: fa, b: fb, silu: false,
                                              into: &lo, &hi)
                }
            }
            let u = i * groups + g
            bd[4 * u] = lo
            bd[4 * u + 1] = hi
            bd[4 * u + 2] = xlo
            bd[4 * u + 3] = xhi
        }
        for i in 0..<n {
            var lo: Float = 0, hi: Float = 0, xlo: Float = 0, xhi: Float = 0
            for g in 0..<groups {
                let u = 4 * (i * groups + g)
                lo = min(lo, bounds[u]); hi = max(hi, bounds[u + 1]); xlo = min(xlo, bounds[u + 2]); xhi = max(xhi, bounds[u + 3])
            }
            let (s, z) = FastConv.quantizationParams(lo: lo, hi: hi)
            out.scales[i] = s
            out.zeroPoints[i] = z
            if let inputRange { inputRange[2 * i] = xlo; inputRange[2 * i + 1] = xhi }
        }
        nonisolated(unsafe) let q = out.codes, scales = out.scales, zps = out.zeroPoints
        nonisolated(unsafe) let input = x
        FastConv.forEachRange(n * c4, granule: 1, team: team) { u0, u1 in
            var u = u0
            while u < u1 {   // runs of quads of one image
                let i = u / c4, q0 = u % c4, q1 = min(c4, q0 + (u1 - u))
                FastConv.affineEncode(input, image: i, quads: q0..<q1, a: ab + i * c, b: ab + n * c + i * c, silu: silu,
                                      codes: q, scale: scales[i], zeroPoint: zps[i], level: level)
                u += q1 - q0
            }
        }
        return out
    }
}

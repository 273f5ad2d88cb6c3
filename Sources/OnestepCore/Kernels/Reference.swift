// Naive reference kernels: direct loops in double precision, written for clarity, not speed. The tests compare
// every fast kernel against these with named tolerances.
import Foundation

public enum Reference {
    /// Direct convolution. x (N, Cin, H, W), weight (Cout, Cin, KH, KW), bias (Cout) -> (N, Cout, Ho, Wo).
    public static func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry) -> Tensor {
        let n = x.shape[0], h = x.shape[2], w = x.shape[3]
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        var y = Tensor(zeros: [n, g.outChannels, ho, wo])
        for i in 0..<n { for co in 0..<g.outChannels { for oy in 0..<ho { for ox in 0..<wo {
            var acc = Double(bias?.data[co] ?? 0)
            for ci in 0..<g.inChannels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
                let iy = oy * g.stride - g.padTop + ky, ix = ox * g.stride - g.padLeft + kx
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                acc += Double(x.data[((i * g.inChannels + ci) * h + iy) * w + ix])
                     * Double(weight.data[((co * g.inChannels + ci) * g.kernelH + ky) * g.kernelW + kx])
            } } }
            y.data[((i * g.outChannels + co) * ho + oy) * wo + ox] = Float(acc)
        } } } }
        return y
    }

    /// GroupNorm with biased variance, optional SiLU. x (N, C, ...).
    public static func groupNorm(_ x: Tensor, groups: Int, eps: Float, gamma: Tensor, beta: Tensor, silu: Bool) -> Tensor {
        let n = x.shape[0], c = x.shape[1], hw = x.count / (n * c), cpg = c / groups
        var y = x
        for i in 0..<n { for g in 0..<groups {
            let idx = (0..<(cpg * hw)).map { (i * c + g * cpg) * hw + $0 }
            let mean = idx.reduce(0.0) { $0 + Double(x.data[$1]) } / Double(idx.count)
            let variance = idx.reduce(0.0) { $0 + pow(Double(x.data[$1]) - mean, 2) } / Double(idx.count)
            for k in idx {
                let ch = (k / hw) % c
                var v = (Double(x.data[k]) - mean) / (variance + Double(eps)).squareRoot() * Double(gamma.data[ch]) + Double(beta.data[ch])
                if silu { v = v / (1 + exp(-v)) }
                y.data[k] = Float(v)
            }
        } }
        return y
    }

    /// y (N, out) = x W^T + b.
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let n = x.shape[0], inF = x.shape[1], outF = weight.shape[0]
        var y = Tensor(zeros: [n, outF])
        for i in 0..<n { for o in 0..<outF {
            var acc = Double(bias?.data[o] ?? 0)
            for k in 0..<inF { acc += Double(x.data[i * inF + k]) * Double(weight.data[o * inF + k]) }
            y.data[i * outF + o] = Float(acc)
        } }
        return y
    }

    /// Multi-head self-attention on (C, L) channel-major input, pixels as tokens (no norm, no residual).
    public static func attention(_ h: [Float], channels c: Int, length l: Int, heads: Int,
                                 wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor,
                                 wo: Tensor, bo: Tensor) -> [Float] {
        func project(_ w: Tensor, _ b: Tensor, _ x: [Float]) -> [Double] {  // -> (L, C) token-major
            var out = [Double](repeating: 0, count: l * c)
            for t in 0..<l { for o in 0..<c {
                var acc = Double(b.data[o])
                for k in 0..<c { acc += Double(w.data[o * c + k]) * Double(x[k * l + t]) }
                out[t * c + o] = acc
            } }
            return out
        }
        let q = project(wq, bq, h), k = project(wk, bk, h), v = project(wv, bv, h)
        let d = c / heads
        var attn = [Double](repeating: 0, count: l * c)  // (L, C)
        for hd in 0..<heads { for t in 0..<l {
            var scores = (0..<l).map { s in (0..<d).reduce(0.0) { $0 + q[t * c + hd * d + $1] * k[s * c + hd * d + $1] } / Double(d).squareRoot() }
            let m = scores.max()!
            scores = scores.map { exp($0 - m) }
            let z = scores.reduce(0, +)
            for j in 0..<d { attn[t * c + hd * d + j] = (0..<l).reduce(0.0) { $0 + scores[$1] / z * v[$1 * c + hd * d + j] } }
        } }
        var y = [Float](repeating: 0, count: c * l)  // back to (C, L)
        for t in 0..<l { for o in 0..<c {
            var acc = Double(bo.data[o])
            for kk in 0..<c { acc += Double(wo.data[o * c + kk]) * attn[t * c + kk] }
            y[o * l + t] = Float(acc)
        } }
        return y
    }

    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
        var y = Tensor(zeros: [n, c, 2 * h, 2 * w])
        for p in 0..<(n * c) { for yy in 0..<(2 * h) { for xx in 0..<(2 * w) {
            y.data[(p * 2 * h + yy) * 2 * w + xx] = x.data[(p * h + yy / 2) * w + xx / 2]
        } } }
        return y
    }

    public static func averagePool2x(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
        var y = Tensor(zeros: [n, c, h / 2, w / 2])
        for p in 0..<(n * c) { for yy in 0..<(h / 2) { for xx in 0..<(w / 2) {
            var s = 0.0
            for dy in 0..<2 { for dx in 0..<2 { s += Double(x.data[(p * h + 2 * yy + dy) * w + 2 * xx + dx]) } }
            y.data[(p * (h / 2) + yy) * (w / 2) + xx] = Float(s / 4)
        } } }
        return y
    }

    public static func silu(_ x: Tensor) -> Tensor {
        Tensor(shape: x.shape, data: x.data.map { Float(Double($0) / (1 + exp(-Double($0)))) })
    }

    /// ReLU as the latent runner applies it (TAESD): x > 0 ? x : +0, so NaN and -0 give +0. The reference for
    /// FastConv.relu, which must match it bit for bit.
    public static func relu(_ x: Tensor) -> Tensor {
        Tensor(shape: x.shape, data: x.data.map { $0 > 0 ? $0 : 0 })
    }

    /// Convolution of a channel-major activation x (Cin, N, H, W), read as nearest-upsampled 2x when `upsample`,
    /// added onto `initial` (Cout, N*Ho*Wo) (bias and residual), accumulated in double. The reference for
    /// FastConv. weight (Cout, Cin, KH, KW).
    public static func convChannelMajor(_ x: [Float], batch n: Int, height h0: Int, width w0: Int, upsample: Bool,
                                        weight: [Float], geometry g: ConvGeometry, initial: [Float]) -> [Float] {
        let up = upsample ? 1 : 0, h = h0 << up, w = w0 << up
        let ho = g.outputHeight(h), wo = g.outputWidth(w), cols = n * ho * wo
        var y = initial
        for co in 0..<g.outChannels { for i in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
            let j = (i * ho + oy) * wo + ox
            var acc = Double(initial[co * cols + j])
            for ci in 0..<g.inChannels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
                let iy = oy * g.stride - g.padTop + ky, ix = ox * g.stride - g.padLeft + kx
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                acc += Double(x[((ci * n + i) * h0 + (iy >> up)) * w0 + (ix >> up)])
                     * Double(weight[((co * g.inChannels + ci) * g.kernelH + ky) * g.kernelW + kx])
            } } }
            y[co * cols + j] = Float(acc)
        } } } }
        return y
    }

    /// The int8 convolution as onestep_kernels.h documents it, written plainly: each image's activations quantized
    /// to uint8 (range over all its channels widened to hold 0; s = (hi - lo) / 255, zp = round(-lo / s), code =
    /// clamp(round(v / s) + zp, 0, 255), ties to even), the integer sum of (code - zp) * weight code over the taps
    /// inside the image (padding is exactly 0), then y = fma(Float(sum), s_w * s_x, initial). The reference for
    /// FastConv's int8 kernels: they must give these bits exactly (their sums are exact integers too).
    /// x (Cin, N, H, W) read as nearest-upsampled 2x when `upsample`; weights (Cout, Cin, KH, KW) codes and
    /// (Cout) scales; initial (Cout, N*Ho*Wo).
    public static func convInt8ChannelMajor(_ x: [Float], batch n: Int, height h0: Int, width w0: Int, upsample: Bool,
                                            weights q: Int8Tensor, geometry g: ConvGeometry, initial: [Float]) -> [Float] {
        let up = upsample ? 1 : 0, h = h0 << up, w = w0 << up, plane = h0 * w0
        let ho = g.outputHeight(h), wo = g.outputWidth(w), cols = n * ho * wo
        var codes = [Int](repeating: 0, count: x.count), scale = [Float](repeating: 1, count: n), zp = [Int](repeating: 0, count: n)
        for i in 0..<n {
            var lo: Float = 0, hi: Float = 0
            for c in 0..<g.inChannels { for p in 0..<plane { let v = x[(c * n + i) * plane + p]; lo = min(lo, v); hi = max(hi, v) } }
            let s: Float = hi > lo ? (hi - lo) / 255 : 1, inv = 1 / s
            scale[i] = s
            zp[i] = min(255, max(0, Int((-lo / s).rounded(.toNearestOrEven))))
            for c in 0..<g.inChannels { for p in 0..<plane {
                let k = (c * n + i) * plane + p
                codes[k] = min(255, max(0, Int((x[k] * inv).rounded(.toNearestOrEven)) + zp[i]))
            } }
        }
        var y = initial
        for co in 0..<g.outChannels { for i in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
            let j = (i * ho + oy) * wo + ox
            var sum = 0
            for ci in 0..<g.inChannels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
                let iy = oy * g.stride - g.padTop + ky, ix = ox * g.stride - g.padLeft + kx
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                sum += (codes[((ci * n + i) * h0 + (iy >> up)) * w0 + (ix >> up)] - zp[i])
                     * Int(q.codes[((co * g.inChannels + ci) * g.kernelH + ky) * g.kernelW + kx])
            } } }
            y[co * cols + j] = initial[co * cols + j].addingProduct(Float(sum), q.scales[co] * scale[i])
        } } } }
        return y
    }
}

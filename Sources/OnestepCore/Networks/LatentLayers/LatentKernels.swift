// Element-wise and attention kernels the latent networks need beyond Kernels/: LayerNorm over the channels of
// a channel-major activation, GEGLU, attention of pixels on a text context (cross-attention, Lq != Lk), nearest
// resizing to any size. Each has a naive reference in LatentReference (below) and a test comparing them.
//
// Legend: C channels (rows), cols = N*L columns (images side by side, L tokens or pixels per image).
import Foundation

public enum LatentKernels {
    /// y (C, cols) = LayerNorm over the C values of each column, * gamma[c] + beta[c] (torch.nn.LayerNorm(C) on
    /// the token-major view; biased variance). Statistics in double, per column in a fixed order, so a column's
    /// result does not depend on the others. `scratch` holds 4*cols floats. y must not alias x.
    /// `ld` is the row stride of x and y (default `cols`), so a thread can take a range of columns.
    public static func layerNormChannels(_ x: UnsafePointer<Float>, channels c: Int, columns cols: Int, ld: Int? = nil,
                                         gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float,
                                         y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let ld = ld ?? cols
        scratch.withMemoryRebound(to: Double.self, capacity: 2 * cols) { s in
            let mean = s, rstd = s + cols
            mean.update(repeating: 0, count: cols)
            rstd.update(repeating: 0, count: cols)
            for r in 0..<c {
                let row = x + r * ld
                for j in 0..<cols { mean[j] += Double(row[j]) }
            }
            let invC = 1 / Double(c)
            for j in 0..<cols { mean[j] *= invC }
            for r in 0..<c {
                let row = x + r * ld
                for j in 0..<cols {
                    let d = Double(row[j]) - mean[j]
                    rstd[j] += d * d
                }
            }
            for j in 0..<cols { rstd[j] = 1 / (rstd[j] * invC + Double(eps)).squareRoot() }
            for r in 0..<c {
                let row = x + r * ld, out = y + r * ld, g = gamma[r], b = beta[r]
                for j in 0..<cols { out[j] = Float((Double(row[j]) - mean[j]) * rstd[j]) * g + b }
            }
        }
    }

    /// out (I, cols) = a (I, cols) * gelu(gate (I, cols)), where proj (2I, cols) = [a; gate] (diffusers GEGLU:
    /// hidden_states, gate = proj(x).chunk(2, dim=-1)).
    /// One thread; the runner calls FastConv.geglu (team split, output range) directly.
    public static func geglu(_ proj: UnsafePointer<Float>, inner: Int, columns cols: Int, out: UnsafeMutablePointer<Float>) {
        _ = FastConv.geglu(proj, inner: inner, columns: cols, length: max(cols, 1), out: out, range: false)
    }

    /// Floats of scratch `crossAttentionHead` needs.
    public static func crossAttentionScratch(queries lq: Int, keys lk: Int) -> Int { lq * lk }

    /// One head of one image: out (D, Lq) = V softmax(scale Q^T K)^T with Q (D, Lq) row stride ldq, K and V
    /// (D, Lk) row stride ldk, out row stride ldq (diffusers AttnProcessor2_0 / F.scaled_dot_product_attention).
    public static func crossAttentionHead(q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                          ldk: Int, queries lq: Int, keys lk: Int, headDim d: Int, scale: Float,
                                          out: UnsafeMutablePointer<Float>, scratch p: UnsafeMutablePointer<Float>) {
        // P (Lq, Lk) = scale * Q^T (Lq, D) x K (D, Lk)
        BLAS.sgemm(transA: true, m: lq, n: lk, k: d, alpha: scale, a: q, lda: ldq, b: k, ldb: ldk, c: p, ldc: lk)
        Attention.softmaxRows(p, rows: lq, columns: lk)
        // out (D, Lq) = V (D, Lk) x P^T (Lk, Lq)
        BLAS.sgemm(transB: true, m: d, n: lq, k: lk, a: v, lda: ldk, b: p, ldb: lk, c: out, ldc: ldq)
    }

    /// Source index of output index `o` for torch's nearest interpolation from `input` to `output` samples
    /// (aten/src/ATen/native/UpSample.h nearest_idx: the scale in float, floor, clamped).
    @inline(__always)
    public static func nearestIndex(_ o: Int, input: Int, output: Int) -> Int {
        if output == input { return o }
        if output == 2 * input { return o >> 1 }
        let scale = Float(input) / Float(output)
        return min(Int(Foundation.floor(Float(o) * scale)), input - 1)
    }

    /// (planes, H, W) -> (planes, Ho, Wo), F.interpolate(size=(Ho, Wo), mode="nearest").
    public static func resizeNearest(_ x: UnsafePointer<Float>, planes: Int, height h: Int, width w: Int,
                                     toHeight ho: Int, width wo: Int, y: UnsafeMutablePointer<Float>) {
        let cols = (0..<wo).map { nearestIndex($0, input: w, output: wo) }
        for p in 0..<planes {
            let src = x + p * h * w, dst = y + p * ho * wo
            for oy in 0..<ho {
                let row = src + nearestIndex(oy, input: h, output: ho) * w, out = dst + oy * wo
                for ox in 0..<wo { out[ox] = row[cols[ox]] }
            }
        }
    }
}

/// Naive double-precision references for LatentKernels (token-major loops, written for clarity).
public enum LatentReference {
    /// LayerNorm over channels of x (C, cols).
    public static func layerNormChannels(_ x: [Float], channels c: Int, columns cols: Int, gamma: [Float], beta: [Float], eps: Float) -> [Float] {
        var y = [Float](repeating: 0, count: c * cols)
        for j in 0..<cols {
            let v = (0..<c).map { Double(x[$0 * cols + j]) }
            let mean = v.reduce(0, +) / Double(c)
            let variance = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(c)
            for r in 0..<c { y[r * cols + j] = Float((v[r] - mean) / (variance + Double(eps)).squareRoot() * Double(gamma[r]) + Double(beta[r])) }
        }
        return y
    }

    public static func geglu(_ proj: [Float], inner: Int, columns cols: Int) -> [Float] {
        (0..<(inner * cols)).map { j in
            let g = Double(proj[inner * cols + j])
            return Float(Double(proj[j]) * 0.5 * g * (1 + erf(g / 2.0.squareRoot())))
        }
    }

    /// Attention of one head: q (D, Lq), k and v (D, Lk), dense -> (D, Lq).
    public static func attentionHead(q: [Float], k: [Float], v: [Float], headDim d: Int, queries lq: Int, keys lk: Int) -> [Float] {
        var out = [Float](repeating: 0, count: d * lq)
        for i in 0..<lq {
            var s = (0..<lk).map { j in (0..<d).reduce(0.0) { $0 + Double(q[$1 * lq + i]) * Double(k[$1 * lk + j]) } / Double(d).squareRoot() }
            let m = s.max()!
            s = s.map { exp($0 - m) }
            let z = s.reduce(0, +)
            for e in 0..<d { out[e * lq + i] = Float((0..<lk).reduce(0.0) { $0 + s[$1] / z * Double(v[e * lk + $1]) }) }
        }
        return out
    }

    /// Nearest resize by the textbook rule src = floor(dst * in / out), in double.
    public static func resizeNearest(_ x: [Float], planes: Int, height h: Int, width w: Int, toHeight ho: Int, width wo: Int) -> [Float] {
        var y = [Float](repeating: 0, count: planes * ho * wo)
        for p in 0..<planes { for oy in 0..<ho { for ox in 0..<wo {
            let iy = min(Int(Double(oy) * Double(h) / Double(ho)), h - 1), ix = min(Int(Double(ox) * Double(w) / Double(wo)), w - 1)
            y[(p * ho + oy) * wo + ox] = x[(p * h + iy) * w + ix]
        } } }
        return y
    }
}

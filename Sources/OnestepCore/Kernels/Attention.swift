// Multi-head self-attention over the pixels of one image, in channel-major layout so no transposes are needed
// (matches diffusers Attention + AttnProcessor2_0 for a 4-D input, without the group norm and residual,
// which the model applies around it).
//
// Legend: C channels = heads * D, D head dimension, L = H*W sequence length (pixels).
// Q, K, V, O are stored (C, L): row c is channel c over all pixels, so head h is the row block [h*D, (h+1)*D).
import Foundation

public struct ProjectionWeights {
    public var weight: UnsafePointer<Float>  // (C, C) as nn.Linear stores it: (out, in)
    public var bias: UnsafePointer<Float>    // (C)
    public init(weight: UnsafePointer<Float>, bias: UnsafePointer<Float>) {
        self.weight = weight
        self.bias = bias
    }
}

public enum Attention {
    /// Floats of scratch `forward` needs.
    public static func scratchCount(channels c: Int, length l: Int) -> Int { 4 * c * l + l * l }

    /// y (C, L) = to_out(softmax(Q^T K / sqrt(D)) applied to V), for one image whose normalized input is h (C, L).
    public static func forward(h: UnsafePointer<Float>, channels c: Int, length l: Int, heads: Int,
                               q wq: ProjectionWeights, k wk: ProjectionWeights, v wv: ProjectionWeights,
                               out wo: ProjectionWeights, y: UnsafeMutablePointer<Float>,
                               scratch: UnsafeMutablePointer<Float>) {
        precondition(c % heads == 0, "attention: \(c) channels do not split into \(heads) heads")
        let d = c / heads
        let q = scratch, k = q + c * l, v = k + c * l, o = v + c * l, p = o + c * l  // p: (L, L) probabilities
        project(h, wq, channels: c, length: l, into: q)
        project(h, wk, channels: c, length: l, into: k)
        project(h, wv, channels: c, length: l, into: v)
        let scale = Float(1.0 / Double(d).squareRoot())
        for head in 0..<heads {
            let qh = q + head * d * l, kh = k + head * d * l, vh = v + head * d * l
            // scores (Lq, Lk) = scale * Qh^T (Lq, D) x Kh (D, Lk)
            BLAS.sgemm(transA: true, m: l, n: l, k: d, alpha: scale, a: qh, lda: l, b: kh, ldb: l, c: p, ldc: l)
            softmaxRows(p, rows: l, columns: l)
            // Oh (D, Lq) = Vh (D, Lk) x P^T (Lk, Lq)
            BLAS.sgemm(transB: true, m: d, n: l, k: l, a: vh, lda: l, b: p, ldb: l, c: o + head * d * l, ldc: l)
        }
        project(o, wo, channels: c, length: l, into: y)
    }

    /// (C, L) = W (C, C) x X (C, L) + b, i.e. nn.Linear applied to every pixel.
    @inline(__always)
    static func project(_ x: UnsafePointer<Float>, _ w: ProjectionWeights, channels c: Int, length l: Int,
                        into y: UnsafeMutablePointer<Float>) {
        BLAS.sgemm(m: c, n: l, k: c, a: w.weight, lda: c, b: x, ldb: l, c: y, ldc: l)
        for ch in 0..<c {
            let row = y + ch * l, b = w.bias[ch]
            for j in 0..<l { row[j] += b }
        }
    }

    /// Numerically stable softmax of each row in place (max subtracted; float32 like upcast_softmax on fp32).
    public static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int) {
        for r in 0..<rows {
            let row = x + r * columns
            var m = -Float.infinity
            for j in 0..<columns { m = max(m, row[j]) }
            var sum: Float = 0
            for j in 0..<columns {
                let e = Foundation.exp(row[j] - m)
                row[j] = e
                sum += e
            }
            let inv = 1 / sum
            for j in 0..<columns { row[j] *= inv }
        }
    }
}

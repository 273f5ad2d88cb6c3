// Row-wise kernels of transformer text encoders on token-major activations (rows = tokens, D = width):
// LayerNorm (torch.nn.LayerNorm over the last dimension), the GELU family of transformers' ACT2FN, and the causal
// multi-head self-attention of CLIPAttention. Every row is one fixed-order reduction, so a token's result does
// not depend on the other prompts of the batch.
import Foundation

public enum LayerNorm {
    /// y (rows, D) = (x - mean) / sqrt(var + eps) * gamma + beta for each row, biased variance (torch.nn.LayerNorm).
    /// Statistics in double precision. x and y may be the same buffer.
    public static func forward(x: UnsafePointer<Float>, rows: Int, width d: Int, eps: Float,
                               gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let src = x + r * d, dst = y + r * d
            var sum = 0.0
            for j in 0..<d { sum += Double(src[j]) }
            let mean = sum / Double(d)
            var sq = 0.0
            for j in 0..<d {
                let t = Double(src[j]) - mean
                sq += t * t
            }
            let rstd = 1.0 / (sq / Double(d) + Double(eps)).squareRoot()
            let m = Float(mean), s = Float(rstd)
            for j in 0..<d { dst[j] = (src[j] - m) * s * gamma[j] + beta[j] }
        }
    }
}

public enum GELU {
    /// In place: x * sigmoid(1.702 x) (transformers QuickGELUActivation).
    public static func quick(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let v = x[i]
            x[i] = v / (1 + Foundation.exp(-1.702 * v))
        }
    }

    /// In place: 0.5 x (1 + erf(x / sqrt 2)) (transformers GELUActivation = torch.nn.functional.gelu, exact).
    public static func exact(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let v = x[i]
            x[i] = 0.5 * v * (1 + Foundation.erf(v * 0.70710678118654752))
        }
    }
}

public enum CausalSelfAttention {
    /// Floats of scratch `forward` needs: one (L, L) probability matrix.
    public static func scratchCount(length l: Int) -> Int { l * l }

    /// out (B*L, C) = softmax(Q K^T / sqrt(Dh) + causal mask) V for every prompt and head (CLIPAttention with
    /// transformers' causal mask: token i attends to tokens 0...i). q, k, v, out are token-major (B*L, C); head h
    /// is the column block [h*Dh, (h+1)*Dh), read in place through the leading dimension C.
    public static func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                               batch b: Int, length l: Int, channels c: Int, heads: Int,
                               out: UnsafeMutablePointer<Float>, scratch p: UnsafeMutablePointer<Float>) {
        precondition(c % heads == 0, "attention: \(c) channels do not split into \(heads) heads")
        let dh = c / heads
        let scale = Float(1.0 / Double(dh).squareRoot())
        for n in 0..<b {
            for h in 0..<heads {
                let off = n * l * c + h * dh
                // scores (L, L) = scale * Qh (L, Dh) x Kh^T (Dh, L)
                BLAS.sgemm(transB: true, m: l, n: l, k: dh, alpha: scale, a: q + off, lda: c, b: k + off, ldb: c,
                           c: p, ldc: l)
                causalSoftmax(p, length: l)
                // Oh (L, Dh) = P (L, L) x Vh (L, Dh)
                BLAS.sgemm(m: l, n: dh, k: l, a: p, lda: l, b: v + off, ldb: c, c: out + off, ldc: c)
            }
        }
    }

    /// Row i: softmax over columns 0...i, zero after (exp of the -inf mask is exactly 0 in torch too).
    static func causalSoftmax(_ p: UnsafeMutablePointer<Float>, length l: Int) {
        for i in 0..<l {
            let row = p + i * l
            var m = -Float.infinity
            for j in 0...i { m = max(m, row[j]) }
            var sum: Float = 0
            for j in 0...i {
                let e = Foundation.exp(row[j] - m)
                row[j] = e
                sum += e
            }
            let inv = 1 / sum
            for j in 0...i { row[j] *= inv }
            for j in (i + 1)..<l { row[j] = 0 }
        }
    }
}

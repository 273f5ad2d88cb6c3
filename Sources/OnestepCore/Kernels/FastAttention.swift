// Attention heads (softmax(scale Q^T K) V of one image and one head, no weights) at the precision a policy chose:
// fp32 (FastConv.attentionHead: onestep_activations.c) or bf16 products (FastConv.attentionHeadBF16:
// onestep_attention.c; FastConv.swift is the one file importing CKernels).
// bf16 needs AVX512-BF16 (vdpbf16ps); where the CPU lacks it a bf16 request runs the fp32 head, and
// `resolved(_:)` says so, so a model packed for bf16 heads serves on any x86-64 or aarch64 machine.
//
// Shape legend: D head dimension, Lq queries, Lk keys; Q and out are (D, Lq) channel-major slices with row
// stride ldq, K and V (D, Lk) with row stride ldk (the activation's N*L: a head of one image in a batch).
import Foundation

/// How attention heads run (the weights-free core of an attention block; its projections are linear layers with
/// their own precision). Chosen by Int8Policy (pixel models) or by the stored int8 projections (latent models).
public enum AttentionPrecision: String, Sendable, CaseIterable {
    /// fp32 products and sums (the default, and what the fp32 path always runs).
    case fp32
    /// Q, K, V and softmax numerators rounded to bf16, products summed in fp32 by vdpbf16ps: about 3 significant
    /// digits on the output (relative L2 about 3e-3 against exact on unit-scale inputs, AttentionBF16Tests).
    case bf16
}

public enum FastAttention {
    /// The precision a request for `p` runs at on this CPU at `level`: bf16 only where vdpbf16ps exists.
    public static func resolved(_ p: AttentionPrecision, level: KernelLevel = .best) -> AttentionPrecision {
        p == .bf16 && FastConv.attentionBF16Runs(level: level) ? .bf16 : .fp32
    }

    /// Floats of scratch one self-attention head (Lq = Lk = l) needs at `precision` (as resolved here).
    public static func scratchCount(_ precision: AttentionPrecision, length l: Int, headDim d: Int,
                                    level: KernelLevel = .best) -> Int {
        switch resolved(precision, level: level) {
        case .fp32: return l * l + 4 * d * l
        case .bf16: return FastConv.attentionBF16Scratch(queries: l, keys: l, headDim: d)
        }
    }

    /// Floats of scratch one bf16 head of lq queries over lk keys needs (`crossHeadBF16`).
    public static func bf16ScratchCount(queries lq: Int, keys lk: Int, headDim d: Int) -> Int {
        FastConv.attentionBF16Scratch(queries: lq, keys: lk, headDim: d)
    }

    /// One self-attention head: out (D, L) = V softmax(scale Q^T K)^T, all slices at row stride `ld`, at
    /// `precision` resolved for this CPU. `scratch` holds `scratchCount(precision, ...)` floats. The same call
    /// gives the same bits whatever `ld` (batch) or the calling thread.
    @inline(__always)
    public static func head(_ precision: AttentionPrecision, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                            v: UnsafePointer<Float>, ld: Int, length l: Int, headDim d: Int, scale: Float,
                            out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, level: KernelLevel = .best) {
        if precision == .bf16,
           FastConv.attentionHeadBF16(q: q, ldq: ld, queries: l, k: k, v: v, ldk: ld, keys: l, headDim: d, scale: scale,
                                      out: out, scratch: scratch, level: level) {
            return
        }
        FastConv.attentionHead(q: q, k: k, v: v, ld: ld, length: l, headDim: d, scale: scale, out: out, scratch: scratch, level: level)
    }

    /// One bf16 head of lq queries over lk keys (cross-attention): out (D, Lq) at row stride ldq, K and V (D, Lk)
    /// at row stride ldk. Returns false, having done nothing, where bf16 heads do not run (`resolved`).
    @discardableResult @inline(__always)
    public static func crossHeadBF16(q: UnsafePointer<Float>, ldq: Int, queries lq: Int, k: UnsafePointer<Float>,
                                     v: UnsafePointer<Float>, ldk: Int, keys lk: Int, headDim d: Int, scale: Float,
                                     out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                     level: KernelLevel = .best) -> Bool {
        FastConv.attentionHeadBF16(q: q, ldq: ldq, queries: lq, k: k, v: v, ldk: ldk, keys: lk, headDim: d, scale: scale,
                                   out: out, scratch: scratch, level: level)
    }
}

/// Naive references for the attention heads (double sums, loops written for clarity): what AttentionBF16Tests
/// compares FastAttention with.
public enum AttentionReference {
    /// out (D, Lq) = V softmax(scale Q^T K)^T for dense q (D, Lq), k and v (D, Lk). With `bf16Rounding`, the maths
    /// the bf16 kernel does, in double: Q, K, V rounded to bf16, each row's numerators exp(scale (s - max))
    /// rounded to bf16 and normalised by their own sum.
    public static func head(q: [Float], k: [Float], v: [Float], headDim d: Int, queries lq: Int, keys lk: Int,
                            scale: Float, bf16Rounding: Bool) -> [Float] {
        let round: (Float) -> Double = bf16Rounding ? { Double($0.roundedToBF16) } : { Double($0) }
        let qd = q.map(round), kd = k.map(round), vd = v.map(round)
        var out = [Float](repeating: 0, count: d * lq)
        var p = [Double](repeating: 0, count: lk)
        for i in 0..<lq {
            for j in 0..<lk {
                var s = 0.0
                for c in 0..<d { s += qd[c * lq + i] * kd[c * lk + j] }
                p[j] = s
            }
            let m = p.max()!
            var sum = 0.0
            for j in 0..<lk {
                let e = Foundation.exp(Double(scale) * (p[j] - m))
                p[j] = bf16Rounding ? Double(Float(e).roundedToBF16) : e
                sum += p[j]
            }
            for c in 0..<d {
                var acc = 0.0
                for j in 0..<lk { acc += p[j] * vd[c * lk + j] }
                out[c * lq + i] = Float(acc / sum)
            }
        }
        return out
    }
}

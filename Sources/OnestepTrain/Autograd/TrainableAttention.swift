// The spatial self-attention block, trainable: optional GroupNorm, q/k/v projections, per-head
// softmax(Q^T K / sqrt(D)) V, to_out.0, + residual, / rescale_output_factor (the same block as OnestepCore's
// AttentionBlock and the same channel-major layout as its Attention kernel).
//
// Legend: N batch, C = heads*D channels, L = H*W pixels. Q, K, V, O are (C, L) per image; P is (heads, L, L).
//   S_h = scale Q_h^T K_h (L, L);  P_h = softmax_rows(S_h);  O_h (D, L) = V_h P_h^T;  y = Wo O + bo
//   backward per head: dV_h = dO_h P_h;  dP_h = dO_h^T V_h;  dS_h = P_h * (dP_h - rowsum(dP_h * P_h))
//                      dQ_h = scale K_h dS_h^T;  dK_h = scale Q_h dS_h
// Q, K, V, P and O are kept for the backward: at the lowest resolution (L = 16 or 64) that is small.
import Foundation
import OnestepCore

public final class TrainableAttention {
    public let channels: Int, heads: Int, rescaleOutputFactor: Float
    public let norm: TrainableGroupNorm?
    public let toQ: Param, toQBias: Param, toK: Param, toKBias: Param
    public let toV: Param, toVBias: Param, toOut: Param, toOutBias: Param
    unowned let store: ParameterStore
    private let q = Buffer(), k = Buffer(), v = Buffer(), o = Buffer(), probs = Buffer(), output = Buffer()
    private let dq = Buffer(), dk = Buffer(), dv = Buffer(), dO = Buffer(), dP = Buffer(), dh = Buffer(), inputGradient = Buffer()
    private var normed: UnsafePointer<Float>?
    private var n = 0, l = 0

    public init(_ prefix: String, _ store: ParameterStore, channels c: Int, headDim: Int?, normGroups: Int?, eps: Float,
                rescaleOutputFactor: Float = 1) {
        self.store = store
        channels = c
        heads = c / (headDim ?? c)
        self.rescaleOutputFactor = rescaleOutputFactor
        norm = normGroups.map { TrainableGroupNorm(prefix + ".group_norm", store, channels: c, groups: $0, eps: eps, silu: false) }
        let bound = 1 / Float(c).squareRoot()
        func linear(_ name: String) -> (Param, Param) {
            (store.add("\(prefix).\(name).weight", shape: [c, c], initializer: .uniform(bound)),
             store.add("\(prefix).\(name).bias", shape: [c], initializer: .uniform(bound)))
        }
        (toQ, toQBias) = linear("to_q")
        (toK, toKBias) = linear("to_k")
        (toV, toVBias) = linear("to_v")
        (toOut, toOutBias) = linear("to_out.0")
    }

    /// x (N, C, L) -> (N, C, L). x must stay unchanged until `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        (n, l) = (batch, spatial)
        let c = channels, d = c / heads, cl = c * spatial, ll = spatial * spatial
        let h = norm.map { UnsafePointer($0.forward(x, batch: batch, spatial: spatial)) } ?? x
        normed = h
        let qb = q.ensure(batch * cl), kb = k.ensure(batch * cl), vb = v.ensure(batch * cl), ob = o.ensure(batch * cl)
        let pb = probs.ensure(batch * heads * ll), y = output.ensure(batch * cl)
        let scale = Float(1.0 / Double(d).squareRoot())
        for i in 0..<batch {
            let hi = h + i * cl, qi = qb + i * cl, ki = kb + i * cl, vi = vb + i * cl, oi = ob + i * cl
            project(hi, toQ, toQBias, into: qi)
            project(hi, toK, toKBias, into: ki)
            project(hi, toV, toVBias, into: vi)
            for head in 0..<heads {
                let p = pb + (i * heads + head) * ll, off = head * d * spatial
                BLAS.sgemm(transA: true, m: spatial, n: spatial, k: d, alpha: scale, a: qi + off, lda: spatial,
                           b: ki + off, ldb: spatial, c: p, ldc: spatial)
                Attention.softmaxRows(p, rows: spatial, columns: spatial)
                BLAS.sgemm(transB: true, m: d, n: spatial, k: spatial, a: vi + off, lda: spatial, b: p, ldb: spatial,
                           c: oi + off, ldc: spatial)
            }
            project(oi, toOut, toOutBias, into: y + i * cl)
        }
        let inv = 1 / rescaleOutputFactor
        for j in 0..<(batch * cl) { y[j] = (y[j] + x[j]) * inv }
        return y
    }

    /// dy (N, C, L) -> dx (N, C, L), accumulating every projection's and the norm's gradients.
    @discardableResult
    public func backward(_ dyIn: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let h = normed else { preconditionFailure("attention backward before forward") }
        let c = channels, d = c / heads, cl = c * l, ll = l * l
        let scale = Float(1.0 / Double(d).squareRoot()), inv = 1 / rescaleOutputFactor
        let dx = inputGradient.ensure(n * cl), dhb = dh.ensure(n * cl)
        for j in 0..<(n * cl) { dx[j] = dyIn[j] * inv }  // residual branch; also the scaled dy of the attention branch
        let dqb = dq.ensure(cl), dkb = dk.ensure(cl), dvb = dv.ensure(cl), dob = dO.ensure(cl), dpb = dP.ensure(ll)
        for i in 0..<n {
            let dyi = UnsafePointer(dx + i * cl), hi = h + i * cl
            let qi = q.pointer + i * cl, ki = k.pointer + i * cl, vi = v.pointer + i * cl, oi = o.pointer + i * cl
            projectBackward(dyi, input: oi, toOut, toOutBias, inputGradient: dob)
            for head in 0..<heads {
                let p = probs.pointer + (i * heads + head) * ll, off = head * d * l
                // dV_h (D, Lk) = dO_h (D, Lq) x P (Lq, Lk)
                BLAS.sgemm(m: d, n: l, k: l, a: dob + off, lda: l, b: p, ldb: l, c: dvb + off, ldc: l)
                // dP (Lq, Lk) = dO_h^T (Lq, D) x V_h (D, Lk)
                BLAS.sgemm(transA: true, m: l, n: l, k: d, a: dob + off, lda: l, b: vi + off, ldb: l, c: dpb, ldc: l)
                for r in 0..<l {
                    let pr = p + r * l, dr = dpb + r * l
                    var dot: Float = 0
                    for j in 0..<l { dot += pr[j] * dr[j] }
                    for j in 0..<l { dr[j] = pr[j] * (dr[j] - dot) }  // now dS
                }
                // dQ_h (D, Lq) = scale K_h (D, Lk) x dS^T (Lk, Lq);  dK_h (D, Lk) = scale Q_h (D, Lq) x dS (Lq, Lk)
                BLAS.sgemm(transB: true, m: d, n: l, k: l, alpha: scale, a: ki + off, lda: l, b: dpb, ldb: l, c: dqb + off, ldc: l)
                BLAS.sgemm(m: d, n: l, k: l, alpha: scale, a: qi + off, lda: l, b: dpb, ldb: l, c: dkb + off, ldc: l)
            }
            let dhi = dhb + i * cl
            projectBackward(dqb, input: hi, toQ, toQBias, inputGradient: dhi)
            projectBackward(dkb, input: hi, toK, toKBias, inputGradient: dhi, accumulate: true)
            projectBackward(dvb, input: hi, toV, toVBias, inputGradient: dhi, accumulate: true)
        }
        if let norm {
            addInPlace(dx, norm.backward(dhb), count: n * cl)
        } else {
            addInPlace(dx, dhb, count: n * cl)
        }
        return dx
    }

    /// (C, L) = W (C, C) x X (C, L) + b
    private func project(_ x: UnsafePointer<Float>, _ w: Param, _ b: Param, into y: UnsafeMutablePointer<Float>) {
        BLAS.sgemm(m: channels, n: l, k: channels, a: store.value(w), lda: channels, b: x, ldb: l, c: y, ldc: l)
        let bv = store.value(b)
        for ch in 0..<channels { let row = y + ch * l; for j in 0..<l { row[j] += bv[ch] } }
    }

    /// dW += dY X^T, db += rowsum dY, dX (=|+=) W^T dY, all (C, L) per image.
    private func projectBackward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, _ w: Param, _ b: Param,
                                 inputGradient dx: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        let c = channels
        BLAS.sgemm(transB: true, m: c, n: c, k: l, a: dy, lda: l, b: x, ldb: l, beta: 1, c: store.grad(w), ldc: c)
        let db = store.grad(b)
        for ch in 0..<c { var s: Float = 0; let row = dy + ch * l; for j in 0..<l { s += row[j] }; db[ch] += s }
        BLAS.sgemm(transA: true, m: c, n: l, k: c, a: store.value(w), lda: c, b: dy, ldb: l, beta: accumulate ? 1 : 0, c: dx, ldc: l)
    }
}

// GroupNorm (affine) with the optional fused SiLU, trainable, on the serving path's vectorized kernels: the
// statistics by FastConv.groupMoments (double-precision, two passes, as serving), the affine + SiLU by
// FastConv.affineSiLU, the backward by FastConv.groupNormBackward (one C call per layer; AVX-512, polynomial
// exp). It keeps mean and 1/std per (image, group) for the backward. ReferenceGroupNorm (the first trainer's plain
// loops) is what FastTrainingKernelTests compare it with.
//
// Legend: N batch, C channels, G groups, HW pixels, M = (C/G)*HW values per group.
//   xhat = (x - mean) * rstd;  z = xhat*gamma + beta;  y = silu(z) or z
//   backward: dz = dy * silu'(z);  dgamma += sum dz*xhat;  dbeta += sum dz;  g = dz*gamma
//             dx = rstd * (g - mean_M(g) - xhat * mean_M(g*xhat))
import OnestepCore

public final class TrainableGroupNorm {
    public let channels: Int, groups: Int, eps: Float, silu: Bool
    public let gamma: Param  // (C)  checkpoint ".weight"
    public let beta: Param   // (C)  checkpoint ".bias"
    unowned let store: ParameterStore
    private let output = Buffer(), inputGradient = Buffer(), stats = Buffer()  // stats: (N, G, 2) mean, rstd
    private var input: UnsafePointer<Float>?
    private var n = 0, hw = 0

    public init(_ prefix: String, _ store: ParameterStore, channels c: Int, groups g: Int, eps: Float, silu: Bool) {
        precondition(c % g == 0, "GroupNorm: \(c) channels do not split into \(g) groups")
        self.store = store
        (channels, groups, self.eps, self.silu) = (c, g, eps, silu)
        gamma = store.add(prefix + ".weight", shape: [c], initializer: .constant(1))
        beta = store.add(prefix + ".bias", shape: [c], initializer: .constant(0))
    }

    /// x (N, C, HW) -> (N, C, HW). x must stay unchanged until `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        (input, n, hw) = (x, batch, spatial)
        let c = channels, cpg = c / groups
        let y = output.ensure(batch * c * spatial), st = stats.ensure(batch * groups * 2)
        let gv = store.value(gamma), bv = store.value(beta)
        if TrainingKernels.reference {
            ReferenceGroupNorm.forward(x, batch: batch, channels: c, groups: groups, spatial: spatial, eps: eps, silu: silu,
                                       gamma: gv, beta: bv, y: y, stats: st)
            return y
        }
        for i in 0..<batch {
            for gi in 0..<groups {
                let base = (i * c + gi * cpg) * spatial, src = x + base
                let (mean, variance) = FastConv.groupMoments(src, planeStride: spatial, planes: cpg, count: spatial, shift: nil)
                let rstd = 1.0 / (variance + Double(eps)).squareRoot()
                st[(i * groups + gi) * 2] = Float(mean)
                st[(i * groups + gi) * 2 + 1] = Float(rstd)
                for cc in 0..<cpg {
                    let ch = gi * cpg + cc
                    let scale = Float(rstd * Double(gv[ch]))
                    let shift = Float(Double(bv[ch]) - mean * rstd * Double(gv[ch]))
                    let s = src + cc * spatial, d = y + base + cc * spatial
                    if silu {
                        Activations.affineSiLU(s, d, count: spatial, a: scale, b: shift)
                    } else {
                        for j in 0..<spatial { d[j] = s[j] * scale + shift }
                    }
                }
            }
        }
        return y
    }

    /// dy (N, C, HW) -> dx, accumulating dgamma and dbeta.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("group norm backward before forward") }
        let c = channels
        let dx = inputGradient.ensure(n * c * hw), st = stats.pointer
        let gv = store.value(gamma), bv = store.value(beta), dg = store.grad(gamma), db = store.grad(beta)
        if TrainingKernels.reference {
            ReferenceGroupNorm.backward(x: x, dy: dy, batch: n, channels: c, groups: groups, spatial: hw, silu: silu, gamma: gv,
                                        beta: bv, stats: st, dgamma: dg, dbeta: db, dx: dx)
            return dx
        }
        // One C call for the layer: per-plane calls from Swift cost more than the work on 4x4 and 8x8 planes.
        FastConv.groupNormBackward(x: x, dy: dy, dx: dx, batch: n, channels: c, groups: groups, spatial: hw, stats: st,
                                   gamma: gv, beta: bv, silu: silu, dgamma: dg, dbeta: db)
        return dx
    }
}

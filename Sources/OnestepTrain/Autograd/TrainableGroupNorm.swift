// GroupNorm (affine) with the optional fused SiLU, trainable. The forward repeats OnestepCore's GroupNorm
// arithmetic exactly (double-precision statistics, y = x*scale + shift) and keeps mean and 1/std per
// (image, group) for the backward.
//
// Legend: N batch, C channels, G groups, HW pixels, M = (C/G)*HW values per group.
//   xhat = (x - mean) * rstd;  z = xhat*gamma + beta;  y = silu(z) or z
//   backward: dz = dy * silu'(z);  dgamma += sum dz*xhat;  dbeta += sum dz;  g = dz*gamma
//             dx = rstd * (g - mean_M(g) - xhat * mean_M(g*xhat))
import Foundation
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
        let c = channels, cpg = c / groups, groupSize = cpg * spatial
        let y = output.ensure(batch * c * spatial), st = stats.ensure(batch * groups * 2)
        let gv = store.value(gamma), bv = store.value(beta)
        for i in 0..<batch {
            for gi in 0..<groups {
                let base = (i * c + gi * cpg) * spatial, src = x + base
                var sum = 0.0
                for j in 0..<groupSize { sum += Double(src[j]) }
                let mean = sum / Double(groupSize)
                var sq = 0.0
                for j in 0..<groupSize { let d = Double(src[j]) - mean; sq += d * d }
                let rstd = 1.0 / (sq / Double(groupSize) + Double(eps)).squareRoot()
                st[(i * groups + gi) * 2] = Float(mean)
                st[(i * groups + gi) * 2 + 1] = Float(rstd)
                for cc in 0..<cpg {
                    let ch = gi * cpg + cc
                    let scale = Float(rstd * Double(gv[ch]))
                    let shift = Float(Double(bv[ch]) - mean * rstd * Double(gv[ch]))
                    let s = src + cc * spatial, d = y + base + cc * spatial
                    if silu {
                        for j in 0..<spatial { d[j] = Activations.silu(s[j] * scale + shift) }
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
        let c = channels, cpg = c / groups, m = Float(cpg * hw)
        let dx = inputGradient.ensure(n * c * hw), st = stats.pointer
        let gv = store.value(gamma), bv = store.value(beta), dg = store.grad(gamma), db = store.grad(beta)
        for i in 0..<n {
            for gi in 0..<groups {
                let mean = st[(i * groups + gi) * 2], rstd = st[(i * groups + gi) * 2 + 1]
                let base = (i * c + gi * cpg) * hw
                // First pass: dz into dx, the per-channel parameter sums and the two group means.
                var sumG: Float = 0, sumGX: Float = 0
                for cc in 0..<cpg {
                    let ch = gi * cpg + cc
                    let xs = x + base + cc * hw, dys = dy + base + cc * hw, dzs = dx + base + cc * hw
                    var sdz: Float = 0, sdzx: Float = 0
                    for j in 0..<hw {
                        let xhat = (xs[j] - mean) * rstd
                        var dz = dys[j]
                        if silu {
                            let z = xhat * gv[ch] + bv[ch]
                            let s = 1 / (1 + Foundation.exp(-z))
                            dz *= s * (1 + z * (1 - s))
                        }
                        dzs[j] = dz
                        sdz += dz
                        sdzx += dz * xhat
                    }
                    dg[ch] += sdzx
                    db[ch] += sdz
                    sumG += sdz * gv[ch]
                    sumGX += sdzx * gv[ch]
                }
                let meanG = sumG / m, meanGX = sumGX / m
                for cc in 0..<cpg {
                    let ch = gi * cpg + cc
                    let xs = x + base + cc * hw, d = dx + base + cc * hw
                    for j in 0..<hw {
                        let xhat = (xs[j] - mean) * rstd
                        d[j] = rstd * (d[j] * gv[ch] - meanG - xhat * meanGX)
                    }
                }
            }
        }
        return dx
    }
}

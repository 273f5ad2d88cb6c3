// The first trainer's GroupNorm (+ fused SiLU) forward and backward, plain Swift loops with double-precision
// statistics, kept as the reference TrainableGroupNorm's vectorized kernels are tested against
// (FastTrainingKernelTests).
//
// Legend: N batch, C channels, G groups, HW pixels, M = (C/G)*HW values per group.
//   xhat = (x - mean) * rstd;  z = xhat*gamma + beta;  y = silu(z) or z
//   backward: dz = dy * silu'(z);  dgamma += sum dz*xhat;  dbeta += sum dz;  g = dz*gamma
//             dx = rstd * (g - mean_M(g) - xhat * mean_M(g*xhat))
import Foundation
import OnestepCore

public enum ReferenceGroupNorm {
    /// x (N, C, HW) -> y (N, C, HW); stats (N, G, 2) receives mean and rstd per (image, group).
    public static func forward(_ x: UnsafePointer<Float>, batch: Int, channels c: Int, groups: Int, spatial: Int, eps: Float, silu: Bool,
                               gamma gv: UnsafePointer<Float>, beta bv: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               stats st: UnsafeMutablePointer<Float>) {
        let cpg = c / groups, groupSize = cpg * spatial
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
    }

    /// dy (N, C, HW) -> dx (N, C, HW), adding into dgamma and dbeta (C); stats as `forward` wrote them.
    public static func backward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch n: Int, channels c: Int, groups: Int,
                                spatial hw: Int, silu: Bool, gamma gv: UnsafePointer<Float>, beta bv: UnsafePointer<Float>,
                                stats st: UnsafePointer<Float>, dgamma dg: UnsafeMutablePointer<Float>,
                                dbeta db: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        let cpg = c / groups, m = Float(cpg * hw)
        for i in 0..<n {
            for gi in 0..<groups {
                let mean = st[(i * groups + gi) * 2], rstd = st[(i * groups + gi) * 2 + 1]
                let base = (i * c + gi * cpg) * hw
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
    }
}

// GroupNorm (matches torch.nn.GroupNorm, affine) with an optional fused SiLU, on (N, C, HW) activations.
// Statistics are accumulated in double precision in a fixed order per (image, group), so the result for one
// image never depends on the rest of the batch.
import Foundation

public enum GroupNorm {
    /// y = groupnorm(x) * gamma + beta, then SiLU when `silu` is set. x and y may be the same buffer.
    /// - Precondition: channels % groups == 0.
    public static func forward(x: UnsafePointer<Float>, batch n: Int, channels c: Int, spatial hw: Int,
                               groups g: Int, eps: Float, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                               silu: Bool, y: UnsafeMutablePointer<Float>) {
        precondition(c % g == 0, "GroupNorm: \(c) channels do not split into \(g) groups")
        let cpg = c / g, groupSize = cpg * hw
        for i in 0..<n {
            for gi in 0..<g {
                let base = (i * c + gi * cpg) * hw
                let src = x + base
                var sum = 0.0
                for j in 0..<groupSize { sum += Double(src[j]) }
                let mean = sum / Double(groupSize)
                var sq = 0.0
                for j in 0..<groupSize {
                    let d = Double(src[j]) - mean
                    sq += d * d
                }
                let variance = sq / Double(groupSize)  // biased, as torch
                let rstd = 1.0 / (variance + Double(eps)).squareRoot()
                for cc in 0..<cpg {
                    let ch = gi * cpg + cc
                    // y = x * scale + shift with scale = rstd*gamma, shift = beta - mean*scale
                    let scale = Float(rstd * Double(gamma[ch]))
                    let shift = Float(Double(beta[ch]) - mean * rstd * Double(gamma[ch]))
                    let s = src + cc * hw, d = y + base + cc * hw
                    if silu {
                        for j in 0..<hw { d[j] = Activations.silu(s[j] * scale + shift) }
                    } else {
                        for j in 0..<hw { d[j] = s[j] * scale + shift }
                    }
                }
            }
        }
    }

    /// Tensor convenience on (N, C, H, W) or (N, C, L).
    public static func forward(_ x: Tensor, groups: Int, eps: Float, gamma: Tensor, beta: Tensor, silu: Bool = false) -> Tensor {
        let n = x.shape[0], c = x.shape[1], hw = x.count / (n * c)
        var y = Tensor(zeros: x.shape)
        x.data.withUnsafeBufferPointer { xp in
            gamma.data.withUnsafeBufferPointer { gp in
                beta.data.withUnsafeBufferPointer { bp in
                    y.data.withUnsafeMutableBufferPointer { yp in
                        forward(x: xp.baseAddress!, batch: n, channels: c, spatial: hw, groups: groups, eps: eps,
                                gamma: gp.baseAddress!, beta: bp.baseAddress!, silu: silu, y: yp.baseAddress!)
                    }
                }
            }
        }
        return y
    }
}

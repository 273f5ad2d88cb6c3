// Element-wise kernels: SiLU, nearest 2x upsampling, 2x2 average pooling, linear layers, channel broadcasts.
import Foundation

public enum Activations {
    /// SiLU(x) = x * sigmoid(x) (torch.nn.SiLU).
    @inline(__always)
    public static func silu(_ x: Float) -> Float { x / (1 + Foundation.exp(-x)) }

    public static func silu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = silu(x[i]) }
    }

    /// y[i] = silu(x[i] * a + b) with a polynomial exp in C (relative error < 2e-7, well inside the 1e-5 the
    /// golden vectors allow). Element-wise, so batch-invariant. x and y may alias.
    @inline(__always)
    public static func affineSiLU(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int, a: Float, b: Float) {
        FastConv.affineSiLU(x, y, count: n, a: a, b: b)
    }

    public static func silu(_ t: Tensor) -> Tensor {
        Tensor(shape: t.shape, data: t.data.map { silu($0) })
    }
}

public enum Resample {
    /// (N*C, H, W) -> (N*C, 2H, 2W), nearest neighbour (F.interpolate(scale_factor=2, mode="nearest")).
    public static func upsampleNearest2x(_ x: UnsafePointer<Float>, planes: Int, height h: Int, width w: Int,
                                         y: UnsafeMutablePointer<Float>) {
        let w2 = 2 * w
        for p in 0..<planes {
            let src = x + p * h * w, dst = y + p * 4 * h * w
            for iy in 0..<h {
                let row = dst + 2 * iy * w2
                for ix in 0..<w {
                    let v = src[iy * w + ix]
                    row[2 * ix] = v
                    row[2 * ix + 1] = v
                }
                (row + w2).update(from: row, count: w2)
            }
        }
    }

    /// (N*C, H, W) -> (N*C, H/2, W/2), mean of each 2x2 window (nn.AvgPool2d(2, 2)).
    public static func averagePool2x(_ x: UnsafePointer<Float>, planes: Int, height h: Int, width w: Int,
                                     y: UnsafeMutablePointer<Float>) {
        let ho = h / 2, wo = w / 2
        for p in 0..<planes {
            let src = x + p * h * w, dst = y + p * ho * wo
            for oy in 0..<ho {
                let r0 = src + 2 * oy * w, r1 = r0 + w
                for ox in 0..<wo {
                    dst[oy * wo + ox] = (r0[2 * ox] + r0[2 * ox + 1] + r1[2 * ox] + r1[2 * ox + 1]) * 0.25
                }
            }
        }
    }

    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
        var y = Tensor(zeros: [n, c, 2 * h, 2 * w])
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                upsampleNearest2x(xp.baseAddress!, planes: n * c, height: h, width: w, y: yp.baseAddress!)
            }
        }
        return y
    }

    public static func averagePool2x(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
        var y = Tensor(zeros: [n, c, h / 2, w / 2])
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                averagePool2x(xp.baseAddress!, planes: n * c, height: h, width: w, y: yp.baseAddress!)
            }
        }
        return y
    }
}

public enum Linear {
    /// y (N, out) = x (N, in) * weight (out, in)^T + bias (out) — torch.nn.Linear. One GEMV per row, so each
    /// row's result is independent of N (batch invariance).
    public static func forward(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let n = x.shape[0], inF = x.shape[1], outF = weight.shape[0]
        precondition(weight.shape[1] == inF, "linear weight \(weight.shape) does not take \(inF) inputs")
        var y = Tensor(zeros: [n, outF])
        x.data.withUnsafeBufferPointer { xp in
            weight.data.withUnsafeBufferPointer { wp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    for i in 0..<n {
                        // (1, out) = (1, in) x (out, in)^T
                        BLAS.sgemm(transB: true, m: 1, n: outF, k: inF, a: xp.baseAddress! + i * inF, lda: inF,
                                   b: wp.baseAddress!, ldb: inF, c: yp.baseAddress! + i * outF, ldc: outF)
                    }
                }
            }
        }
        if let bias {
            for i in 0..<n { for j in 0..<outF { y.data[i * outF + j] += bias.data[j] } }
        }
        return y
    }
}

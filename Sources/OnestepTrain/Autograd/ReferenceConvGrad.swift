// The NCHW convolution of the first trainer, kept as the reference the fast channel-major layer
// (TrainableConv2D) is tested against (FastTrainingKernelTests): forward through OnestepCore's im2col + sgemm, one
// GEMM per image; backward with two more GEMMs per image and a col2im.
//
// Legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output size, K = Cin*KH*KW, P = Ho*Wo.
//   forward   Y_i (Cout, P)  = W (Cout, K) x col(X_i) (K, P) + b
//   backward  dW  (Cout, K) += dY_i (Cout, P) x col(X_i)^T (P, K)
//             dcol (K, P)    = W^T (K, Cout) x dY_i (Cout, P);   dX_i = col2im(dcol)
import OnestepCore

public enum ReferenceConvGrad {
    /// Floats of scratch `forward` and `backward` need: one image's columns (K, P).
    public static func scratchCount(height h: Int, width w: Int, geometry g: ConvGeometry) -> Int {
        max(g.reduction * g.outputHeight(h) * g.outputWidth(w), Conv2D.scratchCount(height: h, width: w, geometry: g), 1)
    }

    /// y (N, Cout, Ho, Wo) = conv(x (N, Cin, H, W)) + bias.
    public static func forward(x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, weight: UnsafePointer<Float>,
                               bias: UnsafePointer<Float>?, geometry g: ConvGeometry, y: UnsafeMutablePointer<Float>,
                               scratch: UnsafeMutablePointer<Float>) {
        Conv2D.forward(x: x, batch: batch, height: height, width: width, weight: weight, bias: bias, geometry: g, y: y,
                       scratch: scratch)
    }

    /// dW (Cout, K) += and db (Cout) += the gradients of dy (N, Cout, Ho, Wo) given x (N, Cin, H, W); dx (N, Cin, H, W)
    /// is overwritten when given. `col` and `dcol` hold `scratchCount` floats each.
    public static func backward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch n: Int, height h: Int, width w: Int,
                                weight wv: UnsafePointer<Float>, geometry g: ConvGeometry, dw: UnsafeMutablePointer<Float>,
                                db: UnsafeMutablePointer<Float>?, dx: UnsafeMutablePointer<Float>?,
                                col: UnsafeMutablePointer<Float>, dcol: UnsafeMutablePointer<Float>) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, k = g.reduction, cout = g.outChannels
        for i in 0..<n {
            let xi = x + i * g.inChannels * h * w, dyi = dy + i * cout * p
            let colI: UnsafePointer<Float>
            if g.isPointwise { colI = xi } else {
                Conv2D.im2col(xi, height: h, width: w, geometry: g, into: col)
                colI = UnsafePointer(col)
            }
            BLAS.sgemm(transB: true, m: cout, n: k, k: p, a: dyi, lda: p, b: colI, ldb: p, beta: 1, c: dw, ldc: k)
            if let db {
                for co in 0..<cout {
                    var s: Float = 0
                    let row = dyi + co * p
                    for j in 0..<p { s += row[j] }
                    db[co] += s
                }
            }
            guard let dx else { continue }
            let dxi = dx + i * g.inChannels * h * w
            if g.isPointwise {
                BLAS.sgemm(transA: true, m: k, n: p, k: cout, a: wv, lda: k, b: dyi, ldb: p, c: dxi, ldc: p)
            } else {
                BLAS.sgemm(transA: true, m: k, n: p, k: cout, a: wv, lda: k, b: dyi, ldb: p, c: dcol, ldc: p)
                col2im(dcol, height: h, width: w, geometry: g, into: dxi)
            }
        }
    }

    /// The adjoint of Conv2D.im2col: scatters-adds columns (K, P) back into an image (Cin, H, W), which it zeroes first.
    static func col2im(_ col: UnsafePointer<Float>, height h: Int, width w: Int, geometry g: ConvGeometry,
                       into x: UnsafeMutablePointer<Float>) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        x.update(repeating: 0, count: g.inChannels * h * w)
        var row = 0
        for c in 0..<g.inChannels {
            let plane = x + c * h * w
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    let src = col + row * ho * wo
                    for oy in 0..<ho {
                        let iy = oy * g.stride - g.padTop + ky
                        guard iy >= 0 && iy < h else { continue }
                        let dst = plane + iy * w, s = src + oy * wo
                        for ox in 0..<wo {
                            let ix = ox * g.stride - g.padLeft + kx
                            if ix >= 0 && ix < w { dst[ix] += s[ox] }
                        }
                    }
                    row += 1
                }
            }
        }
    }
}

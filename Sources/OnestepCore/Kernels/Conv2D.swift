// 2-D convolution as im2col + one cblas_sgemm per image (matches torch.nn.Conv2d, groups=1, dilation=1).
//
// Dimension legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output size, KH/KW kernel size,
// K = Cin*KH*KW the GEMM reduction length, P = Ho*Wo output pixels of one image.
//
// One GEMM per image, never one across the batch: each image then sees the same GEMM shape and the same
// reduction order whatever the batch size, which is what makes results batch-invariant to the bit.

/// Geometry of a convolution. Padding may be asymmetric (diffusers' Downsample2D pads (0,1,0,1) when padding=0).
public struct ConvGeometry: Sendable, Equatable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernelH: Int
    public var kernelW: Int
    public var stride: Int
    public var padTop: Int, padLeft: Int, padBottom: Int, padRight: Int

    public init(inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int) {
        self.init(inChannels: inChannels, outChannels: outChannels, kernelH: kernel, kernelW: kernel, stride: stride,
                  padTop: padding, padLeft: padding, padBottom: padding, padRight: padding)
    }

    public init(inChannels: Int, outChannels: Int, kernelH: Int, kernelW: Int, stride: Int,
                padTop: Int, padLeft: Int, padBottom: Int, padRight: Int) {
        precondition(inChannels > 0 && outChannels > 0 && kernelH > 0 && kernelW > 0 && stride > 0)
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelH = kernelH
        self.kernelW = kernelW
        self.stride = stride
        self.padTop = padTop
        self.padLeft = padLeft
        self.padBottom = padBottom
        self.padRight = padRight
    }

    public func outputHeight(_ h: Int) -> Int { (h + padTop + padBottom - kernelH) / stride + 1 }
    public func outputWidth(_ w: Int) -> Int { (w + padLeft + padRight - kernelW) / stride + 1 }
    public var reduction: Int { inChannels * kernelH * kernelW }
    /// A 1x1, stride-1, unpadded convolution is a plain GEMM on the input: no im2col needed.
    public var isPointwise: Bool {
        kernelH == 1 && kernelW == 1 && stride == 1 && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
    }

    /// FLOPs of one image (multiply and add counted separately).
    public func flops(height h: Int, width w: Int) -> Double {
        2.0 * Double(outChannels) * Double(reduction) * Double(outputHeight(h) * outputWidth(w))
    }
}

public enum Conv2D {
    /// Unfolds one image (Cin, H, W) into columns (Cin*KH*KW, Ho*Wo); out-of-image taps are zero.
    public static func im2col(_ x: UnsafePointer<Float>, height h: Int, width w: Int, geometry g: ConvGeometry,
                              into col: UnsafeMutablePointer<Float>) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        var row = 0
        for c in 0..<g.inChannels {
            let plane = x + c * h * w
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    let dst = col + row * ho * wo
                    for oy in 0..<ho {
                        let iy = oy * g.stride - g.padTop + ky
                        let out = dst + oy * wo
                        if iy < 0 || iy >= h {
                            out.update(repeating: 0, count: wo)
                            continue
                        }
                        let src = plane + iy * w
                        if g.stride == 1 {
                            copyShiftedRow(src, width: w, offset: kx - g.padLeft, into: out, count: wo)
                        } else {
                            for ox in 0..<wo {
                                let ix = ox * g.stride - g.padLeft + kx
                                out[ox] = (ix >= 0 && ix < w) ? src[ix] : 0
                            }
                        }
                    }
                    row += 1
                }
            }
        }
    }

    /// out[j] = src[j + offset] where 0 <= j + offset < width, else 0: one stride-1 im2col row, as a copy of the
    /// in-image run with the left and right halos zeroed.
    @inline(__always)
    static func copyShiftedRow(_ src: UnsafePointer<Float>, width w: Int, offset ix0: Int,
                               into out: UnsafeMutablePointer<Float>, count wo: Int) {
        let lo = max(0, -ix0), hi = min(wo, w - ix0)
        if lo > 0 { out.update(repeating: 0, count: min(lo, wo)) }
        if hi > lo { (out + lo).update(from: src + ix0 + lo, count: hi - lo) }
        if hi < wo { (out + max(hi, 0)).update(repeating: 0, count: wo - max(hi, 0)) }
    }

    /// y (N, Cout, Ho, Wo) = conv(x (N, Cin, H, W), weight (Cout, Cin, KH, KW)) + bias (Cout).
    /// `scratch` needs `scratchCount` floats (nil allocates).
    public static func forward(x: UnsafePointer<Float>, batch n: Int, height h: Int, width w: Int,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                               geometry g: ConvGeometry, y: UnsafeMutablePointer<Float>,
                               scratch: UnsafeMutablePointer<Float>? = nil) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, k = g.reduction
        let ownScratch: UnsafeMutablePointer<Float>? =
            (g.isPointwise || scratch != nil) ? nil : .allocate(capacity: k * p)
        defer { ownScratch?.deallocate() }
        let col = scratch ?? ownScratch
        for i in 0..<n {
            let xi = x + i * g.inChannels * h * w
            let yi = y + i * g.outChannels * p
            let b: UnsafePointer<Float>
            if g.isPointwise {
                b = xi
            } else {
                im2col(xi, height: h, width: w, geometry: g, into: col!)
                b = UnsafePointer(col!)
            }
            // (Cout, P) = (Cout, K) x (K, P)
            BLAS.sgemm(m: g.outChannels, n: p, k: k, a: weight, lda: k, b: b, ldb: p, c: yi, ldc: p)
            if let bias {
                for co in 0..<g.outChannels {
                    let row = yi + co * p, bv = bias[co]
                    for j in 0..<p { row[j] += bv }
                }
            }
        }
    }

    /// Scratch floats `forward` needs for this geometry and input size.
    public static func scratchCount(height h: Int, width w: Int, geometry g: ConvGeometry) -> Int {
        g.isPointwise ? 0 : g.reduction * g.outputHeight(h) * g.outputWidth(w)
    }

    /// Tensor convenience: x (N, Cin, H, W) -> (N, Cout, Ho, Wo).
    public static func forward(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == g.inChannels, "conv input \(x.shape) does not have \(g.inChannels) channels")
        precondition(weight.count == g.outChannels * g.reduction, "conv weight \(weight.shape) does not match \(g)")
        let n = x.shape[0], h = x.shape[2], w = x.shape[3]
        var y = Tensor(zeros: [n, g.outChannels, g.outputHeight(h), g.outputWidth(w)])
        x.data.withUnsafeBufferPointer { xp in
            weight.data.withUnsafeBufferPointer { wp in
                y.data.withUnsafeMutableBufferPointer { yp in
                    if let bias {
                        bias.data.withUnsafeBufferPointer { bp in
                            forward(x: xp.baseAddress!, batch: n, height: h, width: w, weight: wp.baseAddress!,
                                    bias: bp.baseAddress!, geometry: g, y: yp.baseAddress!)
                        }
                    } else {
                        forward(x: xp.baseAddress!, batch: n, height: h, width: w, weight: wp.baseAddress!,
                                bias: nil, geometry: g, y: yp.baseAddress!)
                    }
                }
            }
        }
        return y
    }
}

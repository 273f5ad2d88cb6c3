// A convolution that can be trained: forward through OnestepCore's im2col + sgemm (so the result is the
// inference kernel's to the bit), backward with two more GEMMs per image and a col2im.
//
// Legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output size, K = Cin*KH*KW, P = Ho*Wo.
//   forward   Y_i (Cout, P)  = W (Cout, K) x col(X_i) (K, P) + b
//   backward  dW  (Cout, K) += dY_i (Cout, P) x col(X_i)^T (P, K)
//             dcol (K, P)    = W^T (K, Cout) x dY_i (Cout, P);   dX_i = col2im(dcol)
// The columns are recomputed in backward instead of cached: im2col is a copy, far cheaper than the GEMMs, and
// caching them would multiply activation memory by KH*KW.
import OnestepCore

public final class TrainableConv2D {
    public let geometry: ConvGeometry
    public let weight: Param  // (Cout, Cin, KH, KW)
    public let bias: Param?   // (Cout)
    unowned let store: ParameterStore
    /// False for a first layer whose input is data: backward then skips dX.
    public var needsInputGradient = true

    private let output = Buffer(), inputGradient = Buffer(), columns = Buffer(), columnGradient = Buffer()
    private var input: UnsafePointer<Float>?
    private var n = 0, h = 0, w = 0

    public init(_ prefix: String, _ store: ParameterStore, geometry g: ConvGeometry, bias hasBias: Bool = true) {
        self.store = store
        geometry = g
        let bound = 1 / Float(g.reduction).squareRoot()  // kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
        weight = store.add(prefix + ".weight", shape: [g.outChannels, g.inChannels, g.kernelH, g.kernelW], initializer: .uniform(bound))
        bias = hasBias ? store.add(prefix + ".bias", shape: [g.outChannels], initializer: .uniform(bound)) : nil
    }

    public func outputSize(height: Int, width: Int) -> (Int, Int) { (geometry.outputHeight(height), geometry.outputWidth(width)) }

    /// x (N, Cin, H, W) -> (N, Cout, Ho, Wo). x must stay unchanged until `backward`.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        (input, n, h, w) = (x, batch, height, width)
        let g = geometry
        let y = output.ensure(batch * g.outChannels * g.outputHeight(height) * g.outputWidth(width))
        let scratch = columns.ensure(Conv2D.scratchCount(height: height, width: width, geometry: g))
        Conv2D.forward(x: x, batch: batch, height: height, width: width, weight: store.value(weight),
                       bias: bias.map { UnsafePointer(store.value($0)) }, geometry: g, y: y, scratch: scratch)
        return y
    }

    /// dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W), accumulating dW and db. The returned buffer is the caller's to
    /// modify until the next backward.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("conv backward before forward") }
        let g = geometry
        let ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, k = g.reduction, cout = g.outChannels
        let dx = inputGradient.ensure(n * g.inChannels * h * w)
        let col = columns.ensure(max(k * p, 1)), dcol = columnGradient.ensure(k * p)
        let wv = store.value(weight), dw = store.grad(weight)
        for i in 0..<n {
            let xi = x + i * g.inChannels * h * w, dyi = dy + i * cout * p, dxi = dx + i * g.inChannels * h * w
            let colI: UnsafePointer<Float>
            if g.isPointwise { colI = xi } else {
                Conv2D.im2col(xi, height: h, width: w, geometry: g, into: col)
                colI = UnsafePointer(col)
            }
            BLAS.sgemm(transB: true, m: cout, n: k, k: p, a: dyi, lda: p, b: colI, ldb: p, beta: 1, c: dw, ldc: k)
            if let bias {
                let db = store.grad(bias)
                for co in 0..<cout {
                    var s: Float = 0
                    let row = dyi + co * p
                    for j in 0..<p { s += row[j] }
                    db[co] += s
                }
            }
            guard needsInputGradient else { continue }
            if g.isPointwise {
                BLAS.sgemm(transA: true, m: k, n: p, k: cout, a: wv, lda: k, b: dyi, ldb: p, c: dxi, ldc: p)
            } else {
                BLAS.sgemm(transA: true, m: k, n: p, k: cout, a: wv, lda: k, b: dyi, ldb: p, c: dcol, ldc: p)
                Self.col2im(dcol, height: h, width: w, geometry: g, into: dxi)
            }
        }
        return dx
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

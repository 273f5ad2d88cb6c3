// A convolution that can be trained, on the serving path's packed fp32 kernels (FastConv, CKernels'
// osk_conv_f32): the layer's interface stays NCHW, inside it works channel-major (Cin, N, H, W) so that one
// implicit-GEMM call covers the whole batch instead of one small im2col + sgemm per image.
//
// Legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output size, K = Cin*KH*KW, P = Ho*Wo, cols = N*P.
//   forward   Y (Cout, cols)  = W (Cout, K) x col(X) (K, cols) + b          osk_conv_f32, W packed each forward
//   backward  dW (Cout, K)   += dY (Cout, cols) x col(X)^T (cols, K)         stride 1: osk_conv_f32 again, as a conv
//                                                                            of x with dY as the kernel; else sgemm
//             dX              = conv(dilate_s(dY), flip(W)^T), stride 1     osk_conv_f32 on the transposed kernel
// dX as a stride-1 convolution: dX[ci, y, x] = sum W[co, ci, ky, kx] dY[co, oy, ox] over y = oy*s - pad + ky, i.e.
// a correlation of dY (zeros inserted between rows/columns when s > 1) with the kernel flipped in both axes and
// its channel axes swapped, padded by KH-1-padTop on top (the bottom pad makes the output H rows).
// The weights are packed at every forward and backward: a copy of Cout*K floats, against GEMMs that read them
// N*P times. ReferenceConvGrad (the first trainer's NCHW code) is what FastTrainingKernelTests compare with.
import OnestepCore

/// Which kernels the trainable layers run. `reference` runs the first trainer's NCHW code (ReferenceConvGrad,
/// ReferenceGroupNorm) in every TrainableConv2D and TrainableGroupNorm, so `onestep-distill bench --reference`
/// measures before and after in one run. Set it before a step, never during one.
public enum TrainingKernels {
    nonisolated(unsafe) public static var reference = false
}

public final class TrainableConv2D {
    public let geometry: ConvGeometry
    public let weight: Param  // (Cout, Cin, KH, KW)
    public let bias: Param?   // (Cout)
    unowned let store: ParameterStore
    /// False for a first layer whose input is data: backward then skips dX.
    public var needsInputGradient = true

    // Channel-major copies: input (Cin, N, H, W) kept for backward, output (Cout, N, Ho, Wo), dY, dilated dY, dX.
    private let inputCM = Buffer(), outputCM = Buffer(), gradCM = Buffer(), dilatedCM = Buffer(), inputGradCM = Buffer()
    private let output = Buffer(), inputGradient = Buffer(), columns = Buffer(), flipped = Buffer()
    private var input: UnsafePointer<Float>?
    private var n = 0, h = 0, w = 0

    /// Images per weight-gradient GEMM: enough columns (>= 2048) for sgemm to run near its peak, few enough that the
    /// columns (K, chunk*P) stay a few MB.
    static let weightGradColumns = 2048

    public init(_ prefix: String, _ store: ParameterStore, geometry g: ConvGeometry, bias hasBias: Bool = true) {
        self.store = store
        geometry = g
        let bound = 1 / Float(g.reduction).squareRoot()  // kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
        weight = store.add(prefix + ".weight", shape: [g.outChannels, g.inChannels, g.kernelH, g.kernelW], initializer: .uniform(bound))
        bias = hasBias ? store.add(prefix + ".bias", shape: [g.outChannels], initializer: .uniform(bound)) : nil
    }

    public func outputSize(height: Int, width: Int) -> (Int, Int) { (geometry.outputHeight(height), geometry.outputWidth(width)) }

    /// x (N, Cin, H, W) -> (N, Cout, Ho, Wo). x must stay unchanged until `backward` (the weight gradient reads it).
    public func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        (input, n, h, w) = (x, batch, height, width)
        let g = geometry, ho = g.outputHeight(height), wo = g.outputWidth(width), p = ho * wo, cols = batch * p
        if TrainingKernels.reference {
            let y = output.ensure(batch * g.outChannels * p)
            let scratch = columns.ensure(ReferenceConvGrad.scratchCount(height: height, width: width, geometry: g))
            ReferenceConvGrad.forward(x: x, batch: batch, height: height, width: width, weight: store.value(weight),
                                      bias: bias.map { UnsafePointer(store.value($0)) }, geometry: g, y: y, scratch: scratch)
            return y
        }
        let xc = inputCM.ensure(batch * g.inChannels * height * width)
        Layout.toChannelMajor(x, batch: batch, channels: g.inChannels, spatial: height * width, into: xc)
        let yc = outputCM.ensure(g.outChannels * cols)
        if let bias {
            let b = store.value(bias)
            for co in 0..<g.outChannels { (yc + co * cols).update(repeating: b[co], count: cols) }
        } else {
            yc.update(repeating: 0, count: g.outChannels * cols)
        }
        let packed = PackedConvF32(geometry: g, weights: store.value(weight), bias: nil)
        let pool = BufferPool()  // never used: the output exists (FastConv.conv allocates only without one)
        _ = FastConv.conv(Activation(viewing: xc, channels: g.inChannels, batch: batch, height: height, width: width), packed,
                          pool: pool, accumulateInto: Activation(viewing: yc, channels: g.outChannels, batch: batch, height: ho, width: wo))
        let y = output.ensure(batch * g.outChannels * p)
        Layout.toBatchMajor(yc, batch: batch, channels: g.outChannels, spatial: p, into: y)
        return y
    }

    /// dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W), accumulating dW and db. The returned buffer is the caller's to
    /// modify until the next backward.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        precondition(n > 0, "conv backward before forward")
        let g = geometry, ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, cols = n * p, cout = g.outChannels
        if TrainingKernels.reference, let x = input {
            let dx = inputGradient.ensure(n * g.inChannels * h * w)
            let count = ReferenceConvGrad.scratchCount(height: h, width: w, geometry: g)
            ReferenceConvGrad.backward(x: x, dy: dy, batch: n, height: h, width: w, weight: store.value(weight), geometry: g,
                                       dw: store.grad(weight), db: bias.map { store.grad($0) }, dx: needsInputGradient ? dx : nil,
                                       col: columns.ensure(count), dcol: flipped.ensure(count))
            return dx
        }
        let xc = UnsafePointer(inputCM.pointer)
        let dyc = gradCM.ensure(cout * cols)
        Layout.toChannelMajor(dy, batch: n, channels: cout, spatial: p, into: dyc)
        if let bias {
            let db = store.grad(bias)
            for co in 0..<cout {
                var s: Float = 0
                let row = dyc + co * cols
                for j in 0..<cols { s += row[j] }
                db[co] += s
            }
        }
        accumulateWeightGradient(xc, UnsafePointer(dyc))
        let dx = inputGradient.ensure(n * g.inChannels * h * w)
        guard needsInputGradient else { return dx }
        let dxc = inputGradCM.ensure(n * g.inChannels * h * w)
        inputGradientChannelMajor(UnsafePointer(dyc), into: dxc)
        Layout.toBatchMajor(dxc, batch: n, channels: g.inChannels, spatial: h * w, into: dx)
        return dx
    }

    /// dW (Cout, K) += dY (Cout, cols) x col(X)^T.
    ///
    /// Stride 1: dW[co, ci, ky, kx] = sum over (i, oy, ox) of dY[co, i, oy, ox] x[i, ci, oy - padTop + ky, ox - padLeft + kx]
    /// is itself a stride-1 convolution, run by the same packed kernel: its input is x read as channel-major with the
    /// images as channels and the input channels as the batch ((N, Cin, H, W) as stored), its kernel dY (Cout, N, Ho, Wo)
    /// (channel-major dY as stored), its output dW (Cout, Cin, KH, KW) (channel-major with Cin as the batch, accumulated
    /// in place). Each dW entry is one FMA chain over (i, oy, ox) in order. Other strides: one sgemm per chunk of images.
    private func accumulateWeightGradient(_ xc: UnsafePointer<Float>, _ dyc: UnsafePointer<Float>) {
        let g = geometry, ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, cols = n * p, k = g.reduction
        let dw = store.grad(weight)
        let padBottom = g.kernelH - 1 + ho - h - g.padTop, padRight = g.kernelW - 1 + wo - w - g.padLeft
        if g.stride == 1, let x = input, padBottom >= 0, padRight >= 0 {
            let gw = ConvGeometry(inChannels: n, outChannels: g.outChannels, kernelH: ho, kernelW: wo, stride: 1,
                                  padTop: g.padTop, padLeft: g.padLeft, padBottom: padBottom, padRight: padRight)
            let packed = PackedConvF32(geometry: gw, weights: dyc, bias: nil)
            _ = FastConv.conv(Activation(viewing: UnsafeMutablePointer(mutating: x), channels: n, batch: g.inChannels, height: h, width: w),
                              packed, pool: BufferPool(),
                              accumulateInto: Activation(viewing: dw, channels: g.outChannels, batch: g.inChannels,
                                                         height: g.kernelH, width: g.kernelW))
            return
        }
        let chunk = max(1, min(n, Self.weightGradColumns / max(p, 1)))
        let col = columns.ensure(k * chunk * p)
        var i0 = 0
        while i0 < n {
            let i1 = min(n, i0 + chunk), cc = (i1 - i0) * p
            Layout.im2colChannelMajor(xc, batch: n, height: h, width: w, geometry: g, images: i0..<i1, into: col)
            BLAS.sgemm(transB: true, m: g.outChannels, n: k, k: cc, a: dyc + i0 * p, lda: cols, b: col, ldb: cc, beta: 1, c: dw, ldc: k)
            i0 = i1
        }
    }

    /// dX (Cin, N, H, W) = conv(dilate(dY), flip(W)^T) (see the header).
    private func inputGradientChannelMajor(_ dyc: UnsafePointer<Float>, into dxc: UnsafeMutablePointer<Float>) {
        let g = geometry, ho = g.outputHeight(h), wo = g.outputWidth(w), cin = g.inChannels, cout = g.outChannels
        let kh = g.kernelH, kw = g.kernelW, taps = kh * kw, s = g.stride
        // dY with s-1 zeros between rows and columns: (Cout, N, Hd, Wd).
        let hd = (ho - 1) * s + 1, wd = (wo - 1) * s + 1
        var src = dyc
        if s > 1 {
            let d = dilatedCM.ensure(cout * n * hd * wd)
            d.update(repeating: 0, count: cout * n * hd * wd)
            for plane in 0..<(cout * n) {
                let a = dyc + plane * ho * wo, b = d + plane * hd * wd
                for oy in 0..<ho { for ox in 0..<wo { b[oy * s * wd + ox * s] = a[oy * wo + ox] } }
            }
            src = UnsafePointer(d)
        }
        let padTop = kh - 1 - g.padTop, padLeft = kw - 1 - g.padLeft
        let padBottom = h - (hd + padTop - kh + 1), padRight = w - (wd + padLeft - kw + 1)
        precondition(padTop >= 0 && padLeft >= 0 && padBottom >= 0 && padRight >= 0,
                     "conv backward: padding \(g) larger than the kernel is not supported")
        let gt = ConvGeometry(inChannels: cout, outChannels: cin, kernelH: kh, kernelW: kw, stride: 1,
                              padTop: padTop, padLeft: padLeft, padBottom: padBottom, padRight: padRight)
        // flip(W)^T (Cin, Cout, KH, KW): wt[ci, co, t] = W[co, ci, taps - 1 - t].
        let wt = flipped.ensure(cin * cout * taps), wv = store.value(weight)
        for co in 0..<cout { for ci in 0..<cin {
            let a = wv + (co * cin + ci) * taps, b = wt + (ci * cout + co) * taps
            for t in 0..<taps { b[t] = a[taps - 1 - t] }
        } }
        let packed = PackedConvF32(geometry: gt, weights: wt, bias: nil)
        dxc.update(repeating: 0, count: cin * n * h * w)
        _ = FastConv.conv(Activation(viewing: UnsafeMutablePointer(mutating: src), channels: cout, batch: n, height: hd, width: wd),
                          packed, pool: BufferPool(),
                          accumulateInto: Activation(viewing: dxc, channels: cin, batch: n, height: h, width: w))
    }
}

/// NCHW <-> channel-major (C, N, HW) copies and the channel-major im2col of the training layers.
public enum Layout {
    /// x (N, C, HW) -> (C, N, HW).
    public static func toChannelMajor(_ x: UnsafePointer<Float>, batch n: Int, channels c: Int, spatial hw: Int,
                                      into y: UnsafeMutablePointer<Float>) {
        for i in 0..<n { for ch in 0..<c { (y + (ch * n + i) * hw).update(from: x + (i * c + ch) * hw, count: hw) } }
    }

    /// x (C, N, HW) -> (N, C, HW).
    public static func toBatchMajor(_ x: UnsafePointer<Float>, batch n: Int, channels c: Int, spatial hw: Int,
                                    into y: UnsafeMutablePointer<Float>) {
        for i in 0..<n { for ch in 0..<c { (y + (i * c + ch) * hw).update(from: x + (ch * n + i) * hw, count: hw) } }
    }

    /// Columns (K, m*Ho*Wo) of images `images` (m of them) of x (Cin, N, H, W); rows (c, ky, kx) as Conv2D.im2col,
    /// out-of-image taps zero.
    public static func im2colChannelMajor(_ x: UnsafePointer<Float>, batch n: Int, height h: Int, width w: Int,
                                          geometry g: ConvGeometry, images: Range<Int>, into col: UnsafeMutablePointer<Float>) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo, cc = images.count * p, s = g.stride
        var row = 0
        for c in 0..<g.inChannels {
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    let dstRow = col + row * cc
                    // Output columns ox whose tap ix = ox*s - padLeft + kx lies inside the image.
                    let oxLo = max(0, (g.padLeft - kx + s - 1) / s), right = w - 1 + g.padLeft - kx
                    let oxHi = right < 0 ? 0 : min(wo, right / s + 1)
                    for (j, i) in images.enumerated() {
                        let plane = x + (c * n + i) * h * w, dst = dstRow + j * p
                        for oy in 0..<ho {
                            let iy = oy * s - g.padTop + ky, d = dst + oy * wo
                            guard iy >= 0 && iy < h, oxLo < oxHi else { d.update(repeating: 0, count: wo); continue }
                            let r = plane + iy * w
                            for ox in 0..<oxLo { d[ox] = 0 }
                            if s == 1 {
                                (d + oxLo).update(from: r + (oxLo - g.padLeft + kx), count: oxHi - oxLo)
                            } else {
                                for ox in oxLo..<oxHi { d[ox] = r[ox * s - g.padLeft + kx] }
                            }
                            for ox in oxHi..<wo { d[ox] = 0 }
                        }
                    }
                    row += 1
                }
            }
        }
    }
}

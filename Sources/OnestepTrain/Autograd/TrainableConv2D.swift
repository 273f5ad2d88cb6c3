// A convolution that can be trained, on the serving path's packed fp32 kernels (FastConv, CKernels'
// osk_conv_f32): the layer's interface stays NCHW, inside it works channel-major (Cin, N, H, W) so that one
// implicit-GEMM call covers the whole batch instead of one small im2col + sgemm per image.
//
// Legend: N batch, Cin/Cout channels, H/W input size, Ho/Wo output size, K = Cin*KH*KW, P = Ho*Wo, cols = N*P.
//   forward   Y (Cout, cols)  = W (Cout, K) x col(X) (K, cols) + b          osk_conv_f32, W packed each forward
//   backward  dW (Cout, K)   += dY (Cout, cols) x col(X)^T (cols, K)         osk_conv_wgrad_f32 (with db): no im2col,
//                                                                            x read from a zero-padded copy
//             dX              = conv(dilate_s(dY), flip(W)^T), stride 1     osk_conv_f32 on the transposed kernel
// dX as a stride-1 convolution: dX[ci, y, x] = sum W[co, ci, ky, kx] dY[co, oy, ox] over y = oy*s - pad + ky, i.e.
// a correlation of dY (zeros inserted between rows/columns when s > 1) with the kernel flipped in both axes and
// its channel axes swapped, padded by KH-1-padTop on top (the bottom pad makes the output H rows).
// The weights are packed at every forward and backward (into the layer's own buffer): a copy of Cout*K floats,
// against GEMMs that read them N*P times. ReferenceConvGrad (the first trainer's NCHW code) is what FastTrainingKernelTests compare with.
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
    private let stagedInput = Buffer(), stagedGradient = Buffer()  // NCHW copies for the reference path
    /// The channel-major input of the last fast forward (inputCM, or the caller's tensor).
    private var inputChannelMajor: UnsafePointer<Float>?
    /// The weights (forward) or flipped transposed weights (dX) packed for osk_conv_f32, repacked at every call.
    private let packedWeights = Buffer()
    private var input: UnsafePointer<Float>?
    private var n = 0, h = 0, w = 0
    /// dX by output phases for stride > 1, for the input size it was made for (nil size: not made, or not possible).
    private var strided: (size: (Int, Int), phases: StridedInputGradient)?
    /// False: dX of a strided conv by the dilated-dY path below (the tests compare the two bit for bit).
    var stridedByPhases = true

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
        let g = geometry, p = g.outputHeight(height) * g.outputWidth(width)
        if TrainingKernels.reference { return referenceForward(x, batch: batch, height: height, width: width) }
        let xc = inputCM.ensure(batch * g.inChannels * height * width)
        Layout.toChannelMajor(x, batch: batch, channels: g.inChannels, spatial: height * width, into: xc)
        let yc = forwardChannelMajor(xc, batch: batch, height: height, width: width)
        let y = output.ensure(batch * g.outChannels * p)
        Layout.toBatchMajor(yc, batch: batch, channels: g.outChannels, spatial: p, into: y)
        return y
    }

    /// The forward on channel-major tensors, as the kernels keep them: xc (Cin, N, H, W) -> (Cout, N, Ho, Wo), so
    /// that neighbouring layers that take channel-major input (TrainableGroupNorm's layouts) need no transposes.
    /// xc must stay unchanged until `backwardChannelMajor` (or `backward`); the result is valid until the next forward.
    public func forwardChannelMajor(_ xc: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        let g = geometry, ho = g.outputHeight(height), wo = g.outputWidth(width), p = ho * wo, cols = batch * p
        if TrainingKernels.reference {
            let x = stagedInput.ensure(batch * g.inChannels * height * width)
            Layout.toBatchMajor(xc, batch: batch, channels: g.inChannels, spatial: height * width, into: x)
            let y = referenceForward(x, batch: batch, height: height, width: width)
            let yc = outputCM.ensure(g.outChannels * cols)
            Layout.toChannelMajor(y, batch: batch, channels: g.outChannels, spatial: p, into: yc)
            return yc
        }
        (inputChannelMajor, n, h, w) = (xc, batch, height, width)
        let yc = outputCM.ensure(g.outChannels * cols)
        let packed = packedWeights.ensure(FastConv.packedWeightCount(g))
        FastConv.packWeights(store.value(weight), geometry: g, into: packed)
        // y = bias + conv(x), each tile's columns set to the bias just before its FMAs (no separate fill of y).
        TrainKernels.convolution(x: xc, packed: packed, bias: bias.map { UnsafePointer(store.value($0)) }, geometry: g,
                                 batch: batch, height: height, width: width, y: yc)
        return yc
    }

    /// The first trainer's NCHW forward (ReferenceConvGrad), keeping x for `backward`.
    private func referenceForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        (input, n, h, w) = (x, batch, height, width)
        let g = geometry, p = g.outputHeight(height) * g.outputWidth(width)
        let y = output.ensure(batch * g.outChannels * p)
        let scratch = columns.ensure(ReferenceConvGrad.scratchCount(height: height, width: width, geometry: g))
        ReferenceConvGrad.forward(x: x, batch: batch, height: height, width: width, weight: store.value(weight),
                                  bias: bias.map { UnsafePointer(store.value($0)) }, geometry: g, y: y, scratch: scratch)
        return y
    }

    /// dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W), accumulating dW and db. The returned buffer is the caller's to
    /// modify until the next backward.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        precondition(n > 0, "conv backward before forward")
        let g = geometry, p = g.outputHeight(h) * g.outputWidth(w), cout = g.outChannels
        if TrainingKernels.reference { return referenceBackward(dy) }
        let dyc = gradCM.ensure(cout * n * p)
        Layout.toChannelMajor(dy, batch: n, channels: cout, spatial: p, into: dyc)
        let dxc = backwardChannelMajor(dyc)
        let dx = inputGradient.ensure(n * g.inChannels * h * w)
        if needsInputGradient { Layout.toBatchMajor(dxc, batch: n, channels: g.inChannels, spatial: h * w, into: dx) }
        return dx
    }

    /// dyc (Cout, N, Ho, Wo) -> dxc (Cin, N, H, W), accumulating dW and db: the backward of `forwardChannelMajor`
    /// (or of `forward`). The result is the caller's to modify until the next backward (left unset when
    /// `needsInputGradient` is false).
    @discardableResult
    public func backwardChannelMajor(_ dyc: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        precondition(n > 0, "conv backward before forward")
        let g = geometry, p = g.outputHeight(h) * g.outputWidth(w)
        if TrainingKernels.reference {
            let dy = stagedGradient.ensure(n * g.outChannels * p)
            Layout.toBatchMajor(dyc, batch: n, channels: g.outChannels, spatial: p, into: dy)
            let dx = referenceBackward(dy), dxc = inputGradCM.ensure(n * g.inChannels * h * w)
            Layout.toChannelMajor(dx, batch: n, channels: g.inChannels, spatial: h * w, into: dxc)
            return dxc
        }
        guard let xc = inputChannelMajor else { preconditionFailure("conv backward before forward") }
        accumulateWeightGradient(xc, dyc)  // and db
        let dxc = inputGradCM.ensure(n * g.inChannels * h * w)
        if needsInputGradient { inputGradientChannelMajor(dyc, into: dxc) }
        return dxc
    }

    /// The first trainer's NCHW backward (ReferenceConvGrad) of `referenceForward`.
    private func referenceBackward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("conv backward before forward") }
        let g = geometry, dx = inputGradient.ensure(n * g.inChannels * h * w)
        let count = ReferenceConvGrad.scratchCount(height: h, width: w, geometry: g)
        ReferenceConvGrad.backward(x: x, dy: dy, batch: n, height: h, width: w, weight: store.value(weight), geometry: g,
                                   dw: store.grad(weight), db: bias.map { store.grad($0) }, dx: needsInputGradient ? dx : nil,
                                   col: columns.ensure(count), dcol: flipped.ensure(count))
        return dx
    }

    /// dW (Cout, K) += dY (Cout, cols) x col(X)^T and db += row sums of dY, by TrainKernels.weightGradient
    /// (onestep_conv_grad.c): x is read from a zero-padded copy, dY transposed once, no im2col. Each dW entry is one
    /// FMA chain over (i, oy, ox) in order from dW's value (the order of the earlier stride-1 path, so those layers
    /// give the same bits as before), each db entry one chain of adds from 0 then added to db.
    private func accumulateWeightGradient(_ xc: UnsafePointer<Float>, _ dyc: UnsafePointer<Float>) {
        let g = geometry
        let scratch = columns.ensure(TrainKernels.weightGradientScratch(g, batch: n, height: h, width: w))
        TrainKernels.weightGradient(x: xc, dy: dyc, geometry: g, batch: n, height: h, width: w, dw: store.grad(weight),
                                db: bias.map { store.grad($0) }, scratch: scratch)
    }

    /// dX (Cin, N, H, W) = conv(dilate(dY), flip(W)^T) (see the header).
    private func inputGradientChannelMajor(_ dyc: UnsafePointer<Float>, into dxc: UnsafeMutablePointer<Float>) {
        let g = geometry, ho = g.outputHeight(h), wo = g.outputWidth(w), cin = g.inChannels, cout = g.outChannels
        let kh = g.kernelH, kw = g.kernelW, taps = kh * kw, s = g.stride
        if s > 1 && stridedByPhases {
            // One stride-1 conv of dY per output phase (StridedInputGradient.swift): the same bits, s*s fewer products.
            if strided?.size ?? (0, 0) != (h, w) { strided = StridedInputGradient(g, height: h, width: w).map { ((h, w), $0) } }
            if let (_, phases) = strided {
                phases.run(g, weights: store.value(weight), dy: dyc, batch: n, height: h, width: w, into: dxc)
                return
            }
        }
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
        // flip(W)^T (Cin, Cout, KH, KW): wt[ci, co, t] = W[co, ci, taps - 1 - t]. (Writing it straight into the
        // packed panels in one Swift loop was slower than this copy and osk_f32_pack: 1.8% against 1.5% of a step.)
        let wt = flipped.ensure(cin * cout * taps), wv = store.value(weight)
        for co in 0..<cout { for ci in 0..<cin {
            let a = wv + (co * cin + ci) * taps, b = wt + (ci * cout + co) * taps
            for t in 0..<taps { b[t] = a[taps - 1 - t] }
        } }
        let packed = packedWeights.ensure(FastConv.packedWeightCount(gt))
        FastConv.packWeights(wt, geometry: gt, into: packed)
        TrainKernels.convolution(x: src, packed: packed, bias: nil, geometry: gt, batch: n, height: hd, width: wd, y: dxc)
    }
}

/// NCHW <-> channel-major (C, N, HW) copies of the training layers.
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
}

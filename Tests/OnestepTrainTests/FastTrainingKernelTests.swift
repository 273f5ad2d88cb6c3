// The channel-major training layers (packed fp32 kernels) against the first trainer's NCHW code kept as the
// reference (ReferenceConvGrad): same inputs, same weights, outputs and every gradient compared by relative L2.
import XCTest
@testable import OnestepTrain
import OnestepCore

final class FastTrainingKernelTests: XCTestCase {
    /// Forward: both are fp32 sums of the same K products, in another order (FMA chain vs OpenBLAS blocks).
    static let forwardRelativeL2 = 1e-6
    /// dW sums N*Ho*Wo products per entry, dX up to Cout*KH*KW; again only the order differs.
    static let gradientRelativeL2 = 1e-5

    func compare(_ g: ConvGeometry, bias: Bool, batch n: Int, height h: Int, width w: Int, _ what: String) {
        let store = ParameterStore()
        let conv = TrainableConv2D("conv", store, geometry: g, bias: bias)
        store.seal(seed: 7)
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        let x = GradientCheck.random(n * g.inChannels * h * w, seed: 8)
        let dy = GradientCheck.random(n * g.outChannels * ho * wo, seed: 9)
        let outCount = n * g.outChannels * ho * wo, inCount = n * g.inChannels * h * w
        let wCount = g.outChannels * g.reduction

        store.zeroGrads()
        let (y, dx): ([Float], [Float]) = x.withUnsafeBufferPointer { xp in
            let y = Array(UnsafeBufferPointer(start: conv.forward(xp.baseAddress!, batch: n, height: h, width: w), count: outCount))
            let dx = dy.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: conv.backward($0.baseAddress!), count: inCount)) }
            return (y, dx)
        }
        let dw = Array(UnsafeBufferPointer(start: store.grad(conv.weight), count: wCount))
        let db = conv.bias.map { Array(UnsafeBufferPointer(start: store.grad($0), count: g.outChannels)) }

        var yRef = [Float](repeating: 0, count: outCount), dxRef = [Float](repeating: 0, count: inCount)
        var dwRef = [Float](repeating: 0, count: wCount), dbRef = [Float](repeating: 0, count: g.outChannels)
        let scratch = ReferenceConvGrad.scratchCount(height: h, width: w, geometry: g)
        var col = [Float](repeating: 0, count: scratch), dcol = [Float](repeating: 0, count: scratch)
        let biasPointer = conv.bias.map { UnsafePointer(store.value($0)) }
        ReferenceConvGrad.forward(x: x, batch: n, height: h, width: w, weight: store.value(conv.weight), bias: biasPointer,
                                  geometry: g, y: &yRef, scratch: &col)
        dbRef.withUnsafeMutableBufferPointer { dbp in
            ReferenceConvGrad.backward(x: x, dy: dy, batch: n, height: h, width: w, weight: store.value(conv.weight), geometry: g,
                                       dw: &dwRef, db: bias ? dbp.baseAddress! : nil, dx: &dxRef, col: &col, dcol: &dcol)
        }
        XCTAssertLessThanOrEqual(TensorError.relativeL2(y, yRef), Self.forwardRelativeL2, "\(what): forward")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dx, dxRef), Self.gradientRelativeL2, "\(what): dX")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dw, dwRef), Self.gradientRelativeL2, "\(what): dW")
        if let db { XCTAssertLessThanOrEqual(TensorError.relativeL2(db, dbRef), Self.gradientRelativeL2, "\(what): db") }
        // Not vacuous: the reference outputs are not all zero.
        XCTAssertGreaterThan(dxRef.map { abs($0) }.max() ?? 0, 0, what)
    }

    func testConvMatchesReference() {
        compare(ConvGeometry(inChannels: 5, outChannels: 11, kernel: 3, padding: 1), bias: true, batch: 3, height: 7, width: 6, "3x3 pad 1")
        compare(ConvGeometry(inChannels: 16, outChannels: 32, kernel: 3, padding: 1), bias: true, batch: 9, height: 16, width: 16,
                "3x3 pad 1, several weight-gradient chunks")
        compare(ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, stride: 2, padding: 1), bias: true, batch: 2, height: 8, width: 8,
                "3x3 stride 2 pad 1 (Downsample2D)")
        compare(ConvGeometry(inChannels: 4, outChannels: 5, kernel: 3, stride: 2, padding: 1), bias: false, batch: 2, height: 7, width: 5,
                "3x3 stride 2 pad 1, odd size")
        compare(ConvGeometry(inChannels: 3, outChannels: 4, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1,
                             padRight: 1), bias: true, batch: 2, height: 6, width: 6, "3x3 stride 2 pad (0, 1, 0, 1)")
        compare(ConvGeometry(inChannels: 12, outChannels: 7, kernel: 1, padding: 0), bias: true, batch: 3, height: 4, width: 5, "1x1")
        compare(ConvGeometry(inChannels: 3, outChannels: 8, kernel: 3, padding: 1), bias: true, batch: 1, height: 16, width: 16,
                "conv_in on 3 channels")
    }

    func testChannelMajorRoundTrip() {
        let x = GradientCheck.random(3 * 5 * 7, seed: 1)
        var cm = [Float](repeating: 0, count: x.count), back = [Float](repeating: 0, count: x.count)
        Layout.toChannelMajor(x, batch: 3, channels: 5, spatial: 7, into: &cm)
        Layout.toBatchMajor(cm, batch: 3, channels: 5, spatial: 7, into: &back)
        XCTAssertEqual(back, x)
        XCTAssertEqual(cm[(2 * 3 + 1) * 7 + 4], x[(1 * 5 + 2) * 7 + 4], "channel 2 of image 1, pixel 4")
    }
}

extension FastTrainingKernelTests {
    /// GroupNorm forward: the same double-precision statistics; SiLU by a polynomial exp (relative error < 2e-7).
    static let groupNormForwardRelativeL2 = 1e-6
    /// GroupNorm backward: float sums over M values in 16 lanes instead of one chain, polynomial exp.
    static let groupNormGradientRelativeL2 = 1e-5

    func compareGroupNorm(channels c: Int, groups: Int, batch n: Int, spatial hw: Int, silu: Bool, _ what: String) {
        let store = ParameterStore()
        let norm = TrainableGroupNorm("norm", store, channels: c, groups: groups, eps: 1e-5, silu: silu)
        store.seal(seed: 3)
        // Non-trivial affine parameters (the initializer gives gamma 1, beta 0).
        let gv = store.value(norm.gamma), bv = store.value(norm.beta)
        for j in 0..<c { gv[j] = 1 + 0.3 * Float(j % 5) - 0.5; bv[j] = 0.1 * Float(j % 7) - 0.3 }
        let x = GradientCheck.random(n * c * hw, seed: 11, scale: 2), dy = GradientCheck.random(n * c * hw, seed: 12)
        store.zeroGrads()
        let (y, dx): ([Float], [Float]) = x.withUnsafeBufferPointer { xp in
            let y = Array(UnsafeBufferPointer(start: norm.forward(xp.baseAddress!, batch: n, spatial: hw), count: x.count))
            let dx = dy.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: norm.backward($0.baseAddress!), count: x.count)) }
            return (y, dx)
        }
        let dg = Array(UnsafeBufferPointer(start: store.grad(norm.gamma), count: c))
        let db = Array(UnsafeBufferPointer(start: store.grad(norm.beta), count: c))
        var yRef = [Float](repeating: 0, count: x.count), dxRef = yRef, stats = [Float](repeating: 0, count: n * groups * 2)
        var dgRef = [Float](repeating: 0, count: c), dbRef = dgRef
        ReferenceGroupNorm.forward(x, batch: n, channels: c, groups: groups, spatial: hw, eps: 1e-5, silu: silu, gamma: gv, beta: bv,
                                   y: &yRef, stats: &stats)
        ReferenceGroupNorm.backward(x: x, dy: dy, batch: n, channels: c, groups: groups, spatial: hw, silu: silu, gamma: gv, beta: bv,
                                    stats: stats, dgamma: &dgRef, dbeta: &dbRef, dx: &dxRef)
        XCTAssertLessThanOrEqual(TensorError.relativeL2(y, yRef), Self.groupNormForwardRelativeL2, "\(what): forward")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dx, dxRef), Self.groupNormGradientRelativeL2, "\(what): dX")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dg, dgRef), Self.groupNormGradientRelativeL2, "\(what): dgamma")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(db, dbRef), Self.groupNormGradientRelativeL2, "\(what): dbeta")
        XCTAssertGreaterThan(dxRef.map { abs($0) }.max() ?? 0, 0, what)
        // The layer's C entry point at every level this CPU has, on the reference's statistics.
        for level in KernelLevel.allCases where level.isSupported {
            var dxL = [Float](repeating: 0, count: x.count), dgL = [Float](repeating: 0, count: c), dbL = dgL
            TrainKernels.groupNormBackward(x: x, dy: dy, dx: &dxL, batch: n, channels: c, groups: groups, spatial: hw, stats: stats,
                                       gamma: gv, beta: bv, silu: silu, dgamma: &dgL, dbeta: &dbL, level: level)
            XCTAssertLessThanOrEqual(TensorError.relativeL2(dxL, dxRef), Self.groupNormGradientRelativeL2, "\(what), \(level): dX")
            XCTAssertLessThanOrEqual(TensorError.relativeL2(dgL, dgRef), Self.groupNormGradientRelativeL2, "\(what), \(level): dgamma")
            XCTAssertLessThanOrEqual(TensorError.relativeL2(dbL, dbRef), Self.groupNormGradientRelativeL2, "\(what), \(level): dbeta")
        }
    }

    func testGroupNormMatchesReference() {
        compareGroupNorm(channels: 32, groups: 8, batch: 3, spatial: 256, silu: true, "32 channels, 8 groups, 16x16, SiLU")
        compareGroupNorm(channels: 64, groups: 8, batch: 2, spatial: 16, silu: false, "64 channels, 4x4, no SiLU")
        compareGroupNorm(channels: 6, groups: 3, batch: 2, spatial: 23, silu: true, "odd plane (masked tail)")
    }
}

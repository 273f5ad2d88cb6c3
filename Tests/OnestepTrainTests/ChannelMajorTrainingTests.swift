// The channel-major training paths give the bits of the NCHW ones: TrainableConv2D's forwardChannelMajor /
// backwardChannelMajor, TrainableGroupNorm in every pair of layouts, dX of strided convs by output phases
// (StridedInputGradient) against the dilated-dY path, and osk_conv_f32's per-call tap table (a batch against its
// images one at a time). Each pair runs the same fp32 operations in the same order, so they are compared exactly;
// FastTrainingKernelTests and LayerGradientTests compare the values with the references and finite differences.
import XCTest
@testable import OnestepTrain
import OnestepCore

final class ChannelMajorTrainingTests: XCTestCase {
    private func copy(_ p: UnsafePointer<Float>, _ count: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }

    private func toChannelMajor(_ x: [Float], batch n: Int, channels c: Int, spatial hw: Int) -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        Layout.toChannelMajor(x, batch: n, channels: c, spatial: hw, into: &y)
        return y
    }

    func testChannelMajorConvGivesTheNCHWBits() {
        let cases: [(ConvGeometry, Int, Int, Int)] = [
            (ConvGeometry(inChannels: 8, outChannels: 16, kernel: 3, padding: 1), 3, 8, 8),
            (ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, stride: 2, padding: 1), 2, 8, 8),
            (ConvGeometry(inChannels: 12, outChannels: 7, kernel: 1, padding: 0), 3, 4, 5),
        ]
        for (g, n, h, w) in cases {
            let ho = g.outputHeight(h), wo = g.outputWidth(w), cin = g.inChannels, cout = g.outChannels
            let x = GradientCheck.random(n * cin * h * w, seed: 41), dy = GradientCheck.random(n * cout * ho * wo, seed: 42)
            func run(channelMajor: Bool) -> (y: [Float], dx: [Float], dw: [Float], db: [Float]) {
                let store = ParameterStore()
                let conv = TrainableConv2D("conv", store, geometry: g)
                store.seal(seed: 5)
                store.zeroGrads()
                var y: [Float], dx: [Float]
                if channelMajor {
                    let xc = toChannelMajor(x, batch: n, channels: cin, spatial: h * w)
                    let dyc = toChannelMajor(dy, batch: n, channels: cout, spatial: ho * wo)
                    (y, dx) = xc.withUnsafeBufferPointer { xp in
                        let y = copy(conv.forwardChannelMajor(xp.baseAddress!, batch: n, height: h, width: w), cout * n * ho * wo)
                        return (y, dyc.withUnsafeBufferPointer { copy(conv.backwardChannelMajor($0.baseAddress!), cin * n * h * w) })
                    }
                } else {
                    (y, dx) = x.withUnsafeBufferPointer { xp in
                        let y = copy(conv.forward(xp.baseAddress!, batch: n, height: h, width: w), cout * n * ho * wo)
                        return (toChannelMajor(y, batch: n, channels: cout, spatial: ho * wo),
                                dy.withUnsafeBufferPointer { toChannelMajor(copy(conv.backward($0.baseAddress!), n * cin * h * w),
                                                                            batch: n, channels: cin, spatial: h * w) })
                    }
                }
                return (y, dx, copy(store.grad(conv.weight), cout * g.reduction), copy(store.grad(conv.bias!), cout))
            }
            let a = run(channelMajor: false), b = run(channelMajor: true), what = "\(g) on \(n)x\(h)x\(w)"
            XCTAssertEqual(a.y, b.y, "\(what): forward")
            XCTAssertEqual(a.dx, b.dx, "\(what): dX")
            XCTAssertEqual(a.dw, b.dw, "\(what): dW")
            XCTAssertEqual(a.db, b.db, "\(what): db")
            XCTAssertGreaterThan(a.dx.map { abs($0) }.max() ?? 0, 0, what)
        }
    }

    /// Every (input, output) layout pair, on the fast kernels and on the reference path, against (N, C, HW) in and out.
    func testGroupNormLayoutsGiveTheSameBits() {
        let c = 16, groups = 4, n = 3, hw = 20
        let x = GradientCheck.random(n * c * hw, seed: 51, scale: 2), dy = GradientCheck.random(n * c * hw, seed: 52)
        for reference in [false, true] {
            TrainingKernels.reference = reference
            defer { TrainingKernels.reference = false }
            for silu in [true, false] {
                // (y, dx, dgamma, dbeta) with y and dx given back as (N, C, HW).
                func run(_ from: PlaneLayout, _ to: PlaneLayout) -> [[Float]] {
                    let store = ParameterStore()
                    let norm = TrainableGroupNorm("norm", store, channels: c, groups: groups, eps: 1e-5, silu: silu)
                    store.seal(seed: 3)
                    let gv = store.value(norm.gamma), bv = store.value(norm.beta)
                    for j in 0..<c { gv[j] = 0.7 + 0.1 * Float(j % 5); bv[j] = 0.05 * Float(j % 7) - 0.2 }
                    store.zeroGrads()
                    let xin = from == .channelMajor ? toChannelMajor(x, batch: n, channels: c, spatial: hw) : x
                    let dyin = to == .channelMajor ? toChannelMajor(dy, batch: n, channels: c, spatial: hw) : dy
                    let (y, dx): ([Float], [Float]) = xin.withUnsafeBufferPointer { xp in
                        let y = copy(norm.forward(xp.baseAddress!, batch: n, spatial: hw, from: from, to: to), x.count)
                        return (y, dyin.withUnsafeBufferPointer { copy(norm.backward($0.baseAddress!), x.count) })
                    }
                    func batchMajor(_ v: [Float], _ l: PlaneLayout) -> [Float] {
                        guard l == .channelMajor else { return v }
                        var o = [Float](repeating: 0, count: v.count)
                        Layout.toBatchMajor(v, batch: n, channels: c, spatial: hw, into: &o)
                        return o
                    }
                    return [batchMajor(y, to), batchMajor(dx, from), copy(store.grad(norm.gamma), c), copy(store.grad(norm.beta), c)]
                }
                let base = run(.batchMajor, .batchMajor)
                for (from, to) in [(PlaneLayout.batchMajor, PlaneLayout.channelMajor), (.channelMajor, .channelMajor),
                                   (.channelMajor, .batchMajor)] {
                    let r = run(from, to), what = "reference \(reference), silu \(silu), \(from) -> \(to)"
                    for (k, name) in ["y", "dx", "dgamma", "dbeta"].enumerated() { XCTAssertEqual(r[k], base[k], "\(what): \(name)") }
                }
                XCTAssertGreaterThan(base[1].map { abs($0) }.max() ?? 0, 0)
            }
        }
    }

    /// dX of strided convs by output phases against the dilated-dY path it replaces: the same bits.
    func testStridedInputGradientByPhasesGivesTheDilatedBits() {
        let cases: [(ConvGeometry, Int, Int, Int, String)] = [
            (ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, stride: 2, padding: 1), 2, 8, 8, "Downsample2D 3x3 pad 1"),
            (ConvGeometry(inChannels: 4, outChannels: 5, kernel: 3, stride: 2, padding: 1), 2, 7, 5, "odd size"),
            (ConvGeometry(inChannels: 3, outChannels: 4, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1,
                          padRight: 1), 2, 6, 6, "pad (0, 1, 0, 1)"),
            (ConvGeometry(inChannels: 5, outChannels: 8, kernel: 1, stride: 2, padding: 0), 2, 8, 6, "1x1 stride 2 (phases without taps)"),
            (ConvGeometry(inChannels: 4, outChannels: 6, kernel: 4, stride: 2, padding: 1), 3, 8, 8, "4x4 stride 2"),
            (ConvGeometry(inChannels: 3, outChannels: 5, kernel: 5, stride: 3, padding: 2), 2, 10, 9, "5x5 stride 3"),
        ]
        for (g, n, h, w, what) in cases {
            XCTAssertNotNil(StridedInputGradient(g, height: h, width: w), "\(what): phases apply")
            let x = GradientCheck.random(n * g.inChannels * h * w, seed: 61)
            let dy = GradientCheck.random(n * g.outChannels * g.outputHeight(h) * g.outputWidth(w), seed: 62)
            func dx(phases: Bool) -> [Float] {
                let store = ParameterStore()
                let conv = TrainableConv2D("conv", store, geometry: g)
                conv.stridedByPhases = phases
                store.seal(seed: 6)
                return x.withUnsafeBufferPointer { xp in
                    _ = conv.forward(xp.baseAddress!, batch: n, height: h, width: w)
                    return dy.withUnsafeBufferPointer { copy(conv.backward($0.baseAddress!), x.count) }
                }
            }
            let byPhases = dx(phases: true), dilated = dx(phases: false)
            XCTAssertEqual(byPhases, dilated, what)
            XCTAssertGreaterThan(dilated.map { abs($0) }.max() ?? 0, 0, what)
        }
    }

    /// A batch through osk_conv_f32 (whose tiles then share one tap table per position) equals each image alone.
    func testConvOfABatchEqualsItsImagesAlone() {
        for (g, h, w) in [(ConvGeometry(inChannels: 5, outChannels: 12, kernel: 3, padding: 1), 16, 16),
                          (ConvGeometry(inChannels: 4, outChannels: 3, kernel: 3, padding: 1), 8, 8),
                          (ConvGeometry(inChannels: 7, outChannels: 9, kernel: 3, stride: 2, padding: 1), 16, 16)] {
            let n = 3, ho = g.outputHeight(h), wo = g.outputWidth(w), p = ho * wo
            let x = GradientCheck.random(g.inChannels * n * h * w, seed: 71)  // (Cin, N, H, W)
            let weights = GradientCheck.random(g.outChannels * g.reduction, seed: 72)
            var packed = [Float](repeating: 0, count: FastConv.packedWeightCount(g))
            FastConv.packWeights(weights, geometry: g, into: &packed)
            for level in KernelLevel.allCases where level.isSupported {
                var batch = [Float](repeating: 0, count: g.outChannels * n * p)
                FastConv.convAccumulate(x: x, packed: packed, geometry: g, batch: n, height: h, width: w, y: &batch, level: level)
                for i in 0..<n {
                    var xi = [Float](repeating: 0, count: g.inChannels * h * w), yi = [Float](repeating: 0, count: g.outChannels * p)
                    for c in 0..<g.inChannels { for j in 0..<(h * w) { xi[c * h * w + j] = x[(c * n + i) * h * w + j] } }
                    FastConv.convAccumulate(x: xi, packed: packed, geometry: g, batch: 1, height: h, width: w, y: &yi, level: level)
                    var fromBatch: [Float] = []
                    for co in 0..<g.outChannels {
                        let start: Int = (co * n + i) * p
                        fromBatch += batch[start..<(start + p)]
                    }
                    XCTAssertEqual(fromBatch, yi, "\(g) \(h)x\(w), \(level), image \(i)")
                }
                XCTAssertGreaterThan(batch.map { abs($0) }.max() ?? 0, 0)
            }
        }
    }
}

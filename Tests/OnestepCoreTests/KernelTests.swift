import XCTest
@testable import OnestepCore

/// Every fast kernel against its naive reference (Kernels/Reference.swift), on random shapes including odd sizes.
final class KernelTests: XCTestCase {
    /// float32 GEMM-based results vs double-precision loops: relative L2 error limits.
    static let convTolerance = 2e-6
    static let normTolerance = 1e-6
    /// Groups of one value: x*scale + shift cancels to beta with scale = 1/sqrt(eps) (as torch's fused form does).
    static let degenerateNormTolerance = 1e-5
    static let attentionTolerance = 2e-6
    static let linearTolerance = 1e-6

    func testConvolutionMatchesReferenceOnRandomShapes() {
        var r = TestRandom(1)
        for trial in 0..<24 {
            let cin = 1 + r.int(7), cout = 1 + r.int(9), k = [1, 3, 3, 5][r.int(4)]
            let stride = 1 + r.int(2), h = 3 + r.int(9), w = 3 + r.int(9)
            let pads = (0..<4).map { _ in r.int(k / 2 + 1) }
            let g = ConvGeometry(inChannels: cin, outChannels: cout, kernelH: k, kernelW: k, stride: stride,
                                 padTop: pads[0], padLeft: pads[1], padBottom: pads[2], padRight: pads[3])
            guard g.outputHeight(h) > 0, g.outputWidth(w) > 0 else { continue }
            let n = 1 + r.int(3)
            let x = Tensor(shape: [n, cin, h, w], data: r.floats(n * cin * h * w))
            let wt = Tensor(shape: [cout, cin, k, k], data: r.floats(cout * cin * k * k))
            let b = Tensor(shape: [cout], data: r.floats(cout))
            let fast = Conv2D.forward(x, weight: wt, bias: b, geometry: g)
            let slow = Reference.conv2d(x, weight: wt, bias: b, geometry: g)
            XCTAssertEqual(fast.shape, slow.shape)
            let e = TensorError.relativeL2(fast.data, slow.data)
            XCTAssertLessThan(e, Self.convTolerance, "trial \(trial): \(g) on \(x.shape)")
        }
    }

    func testStride2AndPointwiseConvolution() {
        var r = TestRandom(2)
        let x = Tensor(shape: [2, 4, 7, 7], data: r.floats(2 * 4 * 49))
        for g in [ConvGeometry(inChannels: 4, outChannels: 5, kernel: 3, stride: 2, padding: 1),
                  ConvGeometry(inChannels: 4, outChannels: 5, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
                  ConvGeometry(inChannels: 4, outChannels: 6, kernel: 1, padding: 0)] {
            let wt = Tensor(shape: [g.outChannels, 4, g.kernelH, g.kernelW], data: r.floats(g.outChannels * g.reduction))
            let e = TensorError.relativeL2(Conv2D.forward(x, weight: wt, bias: nil, geometry: g).data,
                                           Reference.conv2d(x, weight: wt, bias: nil, geometry: g).data)
            XCTAssertLessThan(e, Self.convTolerance, "\(g)")
        }
    }

    func testGroupNormWithAndWithoutSiLU() {
        var r = TestRandom(3)
        for (n, c, hw, groups) in [(1, 8, 16, 4), (3, 6, 7, 3), (2, 32, 25, 8), (1, 5, 1, 5)] {
            let x = Tensor(shape: [n, c, hw], data: r.floats(n * c * hw).map { $0 * 3 + 0.5 })
            let gamma = Tensor(shape: [c], data: r.floats(c)), beta = Tensor(shape: [c], data: r.floats(c))
            for silu in [false, true] {
                let e = TensorError.relativeL2(GroupNorm.forward(x, groups: groups, eps: 1e-5, gamma: gamma, beta: beta, silu: silu).data,
                                               Reference.groupNorm(x, groups: groups, eps: 1e-5, gamma: gamma, beta: beta, silu: silu).data)
                XCTAssertLessThan(e, hw == 1 ? Self.degenerateNormTolerance : Self.normTolerance, "n \(n) c \(c) hw \(hw) groups \(groups) silu \(silu)")
            }
        }
    }

    func testAttentionSeveralHeadsAndOddLengths() {
        var r = TestRandom(4)
        for (c, l, heads) in [(8, 9, 2), (16, 16, 4), (6, 5, 1), (12, 49, 3)] {
            let h = r.floats(c * l)
            func mat() -> Tensor { Tensor(shape: [c, c], data: r.floats(c * c).map { $0 / Float(c).squareRoot() }) }
            func vec() -> Tensor { Tensor(shape: [c], data: r.floats(c)) }
            let (wq, bq, wk, bk, wv, bv, wo, bo) = (mat(), vec(), mat(), vec(), mat(), vec(), mat(), vec())
            var y = [Float](repeating: 0, count: c * l)
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Attention.scratchCount(channels: c, length: l))
            defer { scratch.deallocate() }
            func pw(_ w: Tensor, _ b: Tensor, _ body: (ProjectionWeights) -> Void) {
                w.data.withUnsafeBufferPointer { wp in b.data.withUnsafeBufferPointer { bp in body(ProjectionWeights(weight: wp.baseAddress!, bias: bp.baseAddress!)) } }
            }
            pw(wq, bq) { q in pw(wk, bk) { k in pw(wv, bv) { v in pw(wo, bo) { o in
                h.withUnsafeBufferPointer { hp in y.withUnsafeMutableBufferPointer { yp in
                    Attention.forward(h: hp.baseAddress!, channels: c, length: l, heads: heads, q: q, k: k, v: v, out: o,
                                      y: yp.baseAddress!, scratch: scratch)
                } }
            } } } }
            let ref = Reference.attention(h, channels: c, length: l, heads: heads, wq: wq, bq: bq, wk: wk, bk: bk, wv: wv, bv: bv, wo: wo, bo: bo)
            XCTAssertLessThan(TensorError.relativeL2(y, ref), Self.attentionTolerance, "c \(c) l \(l) heads \(heads)")
        }
    }

    func testLinearSiLUAndResampling() {
        var r = TestRandom(5)
        let x = Tensor(shape: [3, 7], data: r.floats(21)), w = Tensor(shape: [5, 7], data: r.floats(35)), b = Tensor(shape: [5], data: r.floats(5))
        XCTAssertLessThan(TensorError.relativeL2(Linear.forward(x, weight: w, bias: b).data, Reference.linear(x, weight: w, bias: b).data), Self.linearTolerance)
        let img = Tensor(shape: [2, 3, 6, 4], data: r.floats(144).map { $0 * 4 })
        XCTAssertLessThan(TensorError.relativeL2(Activations.silu(img).data, Reference.silu(img).data), Self.linearTolerance)
        XCTAssertEqual(Resample.upsampleNearest2x(img), Reference.upsampleNearest2x(img))
        XCTAssertLessThan(TensorError.relativeL2(Resample.averagePool2x(img).data, Reference.averagePool2x(img).data), Self.linearTolerance)
    }
}

final class ActivationKernelTests: XCTestCase {
    /// Polynomial-exp SiLU (every kernel level) vs double-precision SiLU: relative L2 limit.
    static let siluRelative = 1e-6

    func testAffineSiLUMatchesReference() {
        var r = TestRandom(9)
        for n in [1, 15, 16, 17, 100, 256] {
            let x = r.floats(n).map { $0 * 12 }
            var y = [Float](repeating: 0, count: n)
            let ref = Reference.silu(Tensor(shape: [n], data: x.map { $0 * 1.5 - 0.25 }))
            for level in KernelLevel.allCases where level.isSupported {
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                    FastConv.affineSiLU(xp.baseAddress!, yp.baseAddress!, count: n, a: 1.5, b: -0.25, level: level)
                } }
                XCTAssertLessThan(TensorError.relativeL2(y, ref.data), Self.siluRelative, "n \(n) \(level)")
            }
        }
    }
}

final class ReLUKernelTests: XCTestCase {
    /// FastConv.relu at every level equals Reference.relu bit for bit, on odd lengths (the masked AVX-512 tail and
    /// the 64-wide body) and on NaN, +-0, +-inf and subnormals.
    func testReLUMatchesReferenceBitForBit() {
        var r = TestRandom(21)
        let specials: [Float] = [.nan, -.nan, 0, -0.0, .infinity, -.infinity, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                                 .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 1, -1]
        for n in [1, 5, 15, 16, 17, 63, 64, 65, 127, 130, 1000, 4099] {
            var x = r.floats(n).map { $0 * 4 }
            for (i, v) in specials.enumerated() where i < n { x[(i * 7) % n] = v }
            let want = Reference.relu(Tensor(shape: [n], data: x)).data.map(\.bitPattern)
            XCTAssertTrue(want.contains(0), "n \(n): the input has values that must clamp")
            for level in KernelLevel.allCases where level.isSupported {
                var y = x
                y.withUnsafeMutableBufferPointer { FastConv.relu($0.baseAddress!, count: n, level: level) }
                XCTAssertEqual(y.map(\.bitPattern), want, "n \(n) \(level)")
            }
        }
    }
}

final class AttentionHeadKernelTests: XCTestCase {
    /// The C attention head (every level) vs a double-precision softmax(QK^T)V on strided slices.
    static let relative = 2e-6

    func testAttentionHeadMatchesNaive() {
        var r = TestRandom(11)
        for (l, d, ld) in [(16, 8, 16), (64, 16, 192), (17, 5, 40), (1, 4, 3), (256, 32, 256), (23, 40, 29), (9, 64, 9)] {
            let q = r.floats(d * ld), k = r.floats(d * ld), v = r.floats(d * ld)
            let scale = Float(1 / Double(d).squareRoot())
            var want = [Float](repeating: 0, count: d * l)
            for i in 0..<l {
                var s = (0..<l).map { j in (0..<d).reduce(0.0) { $0 + Double(q[$1 * ld + i]) * Double(k[$1 * ld + j]) } * Double(scale) }
                let m = s.max()!
                s = s.map { Foundation.exp($0 - m) }
                let z = s.reduce(0, +)
                for c in 0..<d { want[c * l + i] = Float((0..<l).reduce(0.0) { $0 + Double(v[c * ld + $1]) * s[$1] / z }) }
            }
            for level in KernelLevel.allCases where level.isSupported {
                var out = [Float](repeating: 0, count: d * ld)
                var scratch = [Float](repeating: 0, count: l * l + 4 * d * l)
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in scratch.withUnsafeMutableBufferPointer { sp in
                        FastConv.attentionHead(q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!, ld: ld, length: l,
                                               headDim: d, scale: scale, out: op.baseAddress!, scratch: sp.baseAddress!, level: level)
                    } }
                } } }
                let got = (0..<d).flatMap { c in out[(c * ld)..<(c * ld + l)] }
                XCTAssertLessThan(TensorError.relativeL2(got, want), Self.relative, "l \(l) d \(d) ld \(ld) \(level)")
            }
        }
    }
}

final class GroupMomentsKernelTests: XCTestCase {
    /// float lanes per plane, double across planes, vs an all-double two-pass reference: relative error limits.
    static let meanRelative = 1e-6
    static let varianceRelative = 1e-5

    func testGroupMomentsMatchNaiveAndAgreeAcrossLevels() {
        var r = TestRandom(13)
        for (planes, hw, stride) in [(1, 1, 1), (2, 15, 40), (4, 16, 16), (3, 17, 51), (8, 100, 300), (2, 256, 1024)] {
            // An offset keeps the mean away from zero, where a relative error would mean little.
            let x = r.floats(planes * stride).map { $0 * 3 + 0.75 }
            for withShift in [false, true] {
                let shift = withShift ? r.floats(planes) : [Float](repeating: 0, count: planes)
                var values: [Double] = []
                for p in 0..<planes { for j in 0..<hw { values.append(Double(x[p * stride + j]) + Double(shift[p])) } }
                let mean = values.reduce(0, +) / Double(values.count)
                let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(values.count)
                var results: [KernelLevel: (mean: Double, variance: Double)] = [:]
                for level in KernelLevel.allCases where level.isSupported {
                    results[level] = x.withUnsafeBufferPointer { xp in shift.withUnsafeBufferPointer { sp in
                        FastConv.groupMoments(xp.baseAddress!, planeStride: stride, planes: planes, count: hw,
                                              shift: withShift ? sp.baseAddress! : nil, level: level)
                    } }
                    let got = results[level]!, label = "planes \(planes) hw \(hw) shift \(withShift) \(level)"
                    XCTAssertLessThan(abs(got.mean - mean) / abs(mean), Self.meanRelative, label)
                    XCTAssertLessThan(abs(got.variance - variance) / max(variance, 1e-30), Self.varianceRelative, label)
                }
                // Same lanes, same folds, no FMA: every level gives the same bits (a batch can mix none of them,
                // but a machine without AVX-512 must serve the same images).
                let reference = results[.scalar]!
                for (level, got) in results {
                    XCTAssertEqual(got.mean.bitPattern, reference.mean.bitPattern, "mean \(level)")
                    XCTAssertEqual(got.variance.bitPattern, reference.variance.bitPattern, "variance \(level)")
                }
            }
        }
    }
}

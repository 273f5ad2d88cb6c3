import XCTest
@testable import OnestepCore

/// The AVX-512 int8 1x1 driver (onestep_linear_q8.c) and the feed-forward projection with GEGLU in its epilogue
/// (FastConv.projectGEGLU). Tolerance: none. Integer sums are exact and the dequantization and epilogue are the
/// same operations, so every output must have the bits of the integer reference (Reference.convInt8ChannelMajor)
/// and of the blocked conv driver (FastConv.useLinearInt8Driver(false)), and projectGEGLU the bits of convFused
/// followed by FastConv.geglu (itself checked against the double-precision GEGLU in GEGLUKernelTests), on teams of
/// 1-3 threads. Shapes: ragged panels (M % 8), ragged tiles (columns % 32), tiles straddling images, odd K (a
/// partial last channel quad), K of one to several column blocks (tiles per block 8 down to 1), and K = 2564,
/// past the driver's limit (the blocked driver then runs: same bits). Below AVX-512 the driver is not used; the
/// levels' own tests (FastConvTests, FusedConvTests) cover them, and projectGEGLU must decline there.
final class LinearQ8DriverTests: XCTestCase {
    typealias Case = FastConvTests.Case

    static func linear(_ k: Int, _ m: Int, batch: Int, length: Int, _ name: String) -> Case {
        Case(geometry: ConvGeometry(inChannels: k, outChannels: m, kernel: 1, padding: 0), batch: batch, height: 1, width: length, name: name)
    }

    static let cases: [Case] = [
        linear(12, 17, batch: 3, length: 35, "K 12 M 17 ragged"),
        linear(7, 9, batch: 1, length: 5, "K 7 (partial quad) narrow"),
        linear(64, 40, batch: 2, length: 100, "K 64, tiles straddle images"),
        linear(640, 24, batch: 1, length: 300, "K 640: 8 tiles per block"),
        linear(1283, 16, batch: 2, length: 70, "K 1283: 4 tiles per block, partial quad"),
        linear(2560, 8, batch: 1, length: 97, "K 2560: 1 tile per block"),
        linear(2564, 11, batch: 1, length: 40, "K 2564: past the limit, blocked driver"),
    ]

    static var avx512: Bool { KernelLevel.avx512.isSupported }

    /// convFused (every epilogue) and the plain accumulating conv: the linear driver against the blocked driver
    /// and against the integer reference.
    func testSameBitsAsTheBlockedDriverAndTheReference() throws {
        try XCTSkipUnless(Self.avx512, "no AVX-512 VNNI on this CPU: the 1x1 driver is not used")
        defer { FastConv.useLinearInt8Driver(true) }
        for (ci, c) in Self.cases.enumerated() {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 300))
            var r = FastConvTests.Rand(state: UInt64(3100 + ci))
            var x = r.values(c.geometry.inChannels * c.batch * c.width)
            for i in x.indices where i % 5 == 0 { x[i] += 0.7 }   // images with different ranges
            let cols = c.batch * c.width, m = c.geometry.outChannels
            let residual = r.values(m * cols)
            let packed = PackedConvInt8(layer)
            let ref = Reference.convInt8ChannelMajor(x, batch: c.batch, height: 1, width: c.width, upsample: false,
                                                     weights: packed.unpacked(), geometry: c.geometry, initial: residual)
            let pool = BufferPool()
            for threads in [1, 2, 3] {
                var outs: [[Float]] = [], ranges: [[Float]] = []
                for on in [true, false] {
                    FastConv.useLinearInt8Driver(on)
                    let name = "\(c.name) threads \(threads) linear driver \(on)"
                    let xa = FastConvTests.activation(x, channels: c.geometry.inChannels, batch: c.batch, height: 1, width: c.width, pool: pool)
                    // accumulate onto the residual (y += conv + bias, prepareOutput's path) against the reference
                    let res = FastConvTests.activation(residual, channels: m, batch: c.batch, height: 1, width: c.width, pool: pool)
                    let noBias = PackedConvInt8(geometry: c.geometry, bias: nil, weights: packed.unpacked())
                    let y0 = FastConv.conv(xa, noBias, pool: pool, accumulateInto: res, team: FastConvTests.team(threads))
                    assertSameBits(Array(UnsafeBufferPointer(start: y0.data, count: y0.count)), ref, "\(name) accumulate vs reference")
                    // fused: bias + residual + ReLU + range
                    let res2 = FastConvTests.activation(residual, channels: m, batch: c.batch, height: 1, width: c.width, pool: pool)
                    let (y, range) = FastConv.convFused(xa, packed, pool: pool, residual: res2, relu: true, outputRange: true,
                                                        team: FastConvTests.team(threads))
                    outs.append(Array(UnsafeBufferPointer(start: y.data, count: y.count)))
                    ranges.append(range!)
                    // fused, bias only (the projections' call)
                    let (yb, _) = FastConv.convFused(xa, noBias, pool: pool, bias: layer.bias!.data, relu: false, outputRange: false,
                                                     team: FastConvTests.team(threads))
                    outs.append(Array(UnsafeBufferPointer(start: yb.data, count: yb.count)))
                }
                assertSameBits(outs[0], outs[2], "\(c.name) threads \(threads) fused residual relu")
                XCTAssertEqual(ranges[0], ranges[1], "\(c.name) threads \(threads) ranges")
                assertSameBits(outs[1], outs[3], "\(c.name) threads \(threads) fused bias")
            }
        }
    }

    /// projectGEGLU against convFused (bias) + FastConv.geglu: out bit for bit, the same ranges.
    func testProjectGEGLUEqualsProjectionThenGEGLU() throws {
        try XCTSkipUnless(Self.avx512, "no AVX-512 VNNI on this CPU: projectGEGLU declines (tested below)")
        // (K, inner, images, length): ragged tiles, straddling images, several tiles per block, K past one quad
        for (ci, (k, inner, images, length)) in [(12, 8, 3, 35), (64, 24, 2, 100), (640, 16, 1, 300), (1283, 8, 2, 70)].enumerated() {
            let g = ConvGeometry(inChannels: k, outChannels: 2 * inner, kernel: 1, padding: 0)
            let layer = FastConvTests.layer(g, seed: UInt64(ci + 500))
            let w = PackedConvInt8(geometry: g, bias: nil, weights: PackedConvInt8(layer).unpacked()), bias = layer.bias!.data
            var r = FastConvTests.Rand(state: UInt64(5100 + ci))
            var x = r.values(k * images * length, scale: 2)
            for i in x.indices where i % 7 == 0 { x[i] -= 1.5 }
            let cols = images * length
            let pool = BufferPool()
            for threads in [1, 2, 3] {
                let name = "K \(k) inner \(inner) \(images)x\(length) threads \(threads)"
                let xa = FastConvTests.activation(x, channels: k, batch: images, height: 1, width: length, pool: pool)
                let (proj, _) = FastConv.convFused(xa, w, pool: pool, bias: bias, relu: false, outputRange: false, team: FastConvTests.team(threads))
                var want = [Float](repeating: .nan, count: inner * cols)
                let wantRange = FastConv.geglu(proj.data, inner: inner, columns: cols, length: length, out: &want, range: true,
                                               team: FastConvTests.team(threads))!
                var got = [Float](repeating: .nan, count: inner * cols)
                let gotRange = got.withUnsafeMutableBufferPointer { o in
                    FastConv.projectGEGLU(xa, w, bias: bias, out: o.baseAddress!, range: true, pool: pool, team: FastConvTests.team(threads))
                }
                guard let gotRange, let gr = gotRange else { return XCTFail("\(name): projectGEGLU declined on AVX-512") }
                assertSameBits(got, want, name)
                XCTAssertEqual(gr, wantRange, "\(name) ranges")
                let noRange = got.withUnsafeMutableBufferPointer { o in
                    FastConv.projectGEGLU(xa, w, bias: bias, out: o.baseAddress!, range: false, pool: pool, team: FastConvTests.team(threads))
                }
                XCTAssertTrue(noRange != nil && noRange! == nil, "\(name): without range it returns .some(nil)")
            }
        }
    }

    /// Where it does not apply it writes nothing and returns nil: below AVX-512, I not a multiple of 8, K past the
    /// driver's limit, the driver switched off.
    func testProjectGEGLUDeclinesWhereItDoesNotApply() {
        let pool = BufferPool()
        func attempt(k: Int, inner: Int, level: KernelLevel) -> Bool {
            let g = ConvGeometry(inChannels: k, outChannels: 2 * inner, kernel: 1, padding: 0)
            let w = PackedConvInt8(geometry: g, bias: nil, weights: PackedConvInt8(FastConvTests.layer(g, seed: 7)).unpacked())
            var r = FastConvTests.Rand(state: 9)
            let xa = FastConvTests.activation(r.values(k * 40), channels: k, batch: 1, height: 1, width: 40, pool: pool)
            var out = [Float](repeating: 42, count: inner * 40)
            let result = out.withUnsafeMutableBufferPointer { o in
                FastConv.projectGEGLU(xa, w, bias: nil, out: o.baseAddress!, range: true, pool: pool, level: level)
            }
            if result == nil { XCTAssertTrue(out.allSatisfy { $0 == 42 }, "K \(k) inner \(inner) \(level): declined but wrote") }
            return result != nil
        }
        for level in FastConvTests.levels where level != .avx512 {
            XCTAssertFalse(attempt(k: 16, inner: 8, level: level), "\(level) must decline")
        }
        guard Self.avx512 else { return }
        XCTAssertTrue(attempt(k: 16, inner: 8, level: .avx512))
        XCTAssertFalse(attempt(k: 16, inner: 12, level: .avx512), "inner 12 is not a multiple of 8")
        XCTAssertFalse(attempt(k: 2564, inner: 8, level: .avx512), "K past the linear driver's limit")
        FastConv.useLinearInt8Driver(false)
        defer { FastConv.useLinearInt8Driver(true) }
        XCTAssertFalse(attempt(k: 16, inner: 8, level: .avx512), "driver off")
    }
}

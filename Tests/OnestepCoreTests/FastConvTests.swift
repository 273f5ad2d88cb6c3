import XCTest
@testable import OnestepCore

/// FastConv (CKernels: implicit-GEMM fp32 and int8 convolutions) against the double-precision reference, at
/// every kernel level this CPU supports; bit-identity between levels; batch invariance.
final class FastConvTests: XCTestCase {
    /// fp32: one fma chain per output in fp32 vs a double sum (K up to ~600 here): relative L2 limit.
    static let fp32RelativeL2 = 1e-6
    /// int8 (per-channel symmetric weights, per-image affine uint8 activations) vs the fp32 reference on
    /// Gaussian data: relative L2 limit. Measured 0.6-0.9% on these shapes (see testInt8Error output).
    static let int8RelativeL2 = 1.5e-2

    static let levels = KernelLevel.allCases.filter(\.isSupported)

    struct Case {
        var geometry: ConvGeometry
        var batch: Int, height: Int, width: Int
        var upsample = false
        var name: String
    }

    /// All geometries of the model, with odd Cout / Cin / sizes so tiles and panels have ragged edges.
    static let cases: [Case] = [
        Case(geometry: ConvGeometry(inChannels: 8, outChannels: 16, kernel: 3, padding: 1), batch: 2, height: 8, width: 8, name: "3x3 s1 p1"),
        Case(geometry: ConvGeometry(inChannels: 5, outChannels: 13, kernel: 3, padding: 1), batch: 3, height: 7, width: 5, name: "3x3 s1 p1 odd"),
        Case(geometry: ConvGeometry(inChannels: 7, outChannels: 3, kernel: 3, padding: 1), batch: 1, height: 9, width: 11, name: "3x3 s1 p1 conv_out-like"),
        Case(geometry: ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, stride: 2, padding: 1), batch: 3, height: 8, width: 8, name: "3x3 s2 p1"),
        Case(geometry: ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, stride: 2, padding: 1), batch: 2, height: 7, width: 9, name: "3x3 s2 p1 odd"),
        Case(geometry: ConvGeometry(inChannels: 4, outChannels: 10, kernelH: 3, kernelW: 3, stride: 2,
                                    padTop: 0, padLeft: 0, padBottom: 1, padRight: 1), batch: 3, height: 8, width: 8, name: "3x3 s2 pad (0,0,1,1)"),
        Case(geometry: ConvGeometry(inChannels: 12, outChannels: 17, kernel: 1, padding: 0), batch: 3, height: 5, width: 7, name: "1x1"),
        Case(geometry: ConvGeometry(inChannels: 6, outChannels: 11, kernel: 3, padding: 1), batch: 2, height: 4, width: 5, upsample: true, name: "upsample + 3x3"),
        Case(geometry: ConvGeometry(inChannels: 64, outChannels: 32, kernel: 3, padding: 1), batch: 2, height: 16, width: 16, name: "3x3 64->32 16x16"),
    ]

    // MARK: - Data

    struct Rand {
        var state: UInt64
        mutating func gaussian() -> Float {
            func u() -> Double {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return (Double(state >> 11) + 0.5) / Double(1 << 53)
            }
            return Float((-2 * log(u())).squareRoot() * cos(2 * .pi * u()))
        }
        mutating func values(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in gaussian() * scale } }
    }

    static func layer(_ g: ConvGeometry, seed: UInt64) -> Conv2DLayer {
        var r = Rand(state: seed)
        let w = r.values(g.outChannels * g.reduction, scale: 1 / Float(g.reduction).squareRoot())
        let b = r.values(g.outChannels, scale: 0.1)
        struct Source: WeightSource {
            var w: [Float], b: [Float]
            func tensor(_ key: String, shape: [Int]) throws -> Tensor {
                Tensor(shape: shape, data: key.hasSuffix(".weight") ? w : b)
            }
            func contains(_ key: String) -> Bool { true }
        }
        return try! Conv2DLayer("test", Source(w: w, b: b), geometry: g)
    }

    static func activation(_ values: [Float], channels: Int, batch: Int, height: Int, width: Int, pool: BufferPool) -> Activation {
        let a = Activation(pool: pool, channels: channels, batch: batch, height: height, width: width)
        a.data.update(from: values, count: values.count)
        return a
    }

    /// One shared team per size (teams are persistent threads; tests run one at a time per team).
    nonisolated(unsafe) static var teams: [Int: ThreadTeam] = [:]
    static func team(_ threads: Int) -> ThreadTeam? {
        guard threads > 1 else { return nil }
        if let t = teams[threads] { return t }
        let t = ThreadTeam(threads: threads)
        teams[threads] = t
        return t
    }

    /// Runs one conv (fp32 or int8) with bias and, when `residual` is given, accumulation onto it.
    static func run(_ c: Case, _ layer: Conv2DLayer, x: [Float], batch: Int, residual: [Float]?, int8: Bool,
                    level: KernelLevel, threads: Int = 1) -> [Float] {
        let pool = BufferPool()
        let xa = activation(x, channels: c.geometry.inChannels, batch: batch, height: c.height, width: c.width, pool: pool)
        let h = c.upsample ? 2 * c.height : c.height, w = c.upsample ? 2 * c.width : c.width
        let ho = c.geometry.outputHeight(h), wo = c.geometry.outputWidth(w)
        let existing = residual.map { activation($0, channels: c.geometry.outChannels, batch: batch, height: ho, width: wo, pool: pool) }
        let y = int8
            ? FastConv.conv(xa, PackedConvInt8(layer), upsample: c.upsample, pool: pool, accumulateInto: existing, level: level, team: Self.team(threads))
            : FastConv.conv(xa, PackedConvF32(layer), upsample: c.upsample, pool: pool, accumulateInto: existing, level: level, team: Self.team(threads))
        return Array(UnsafeBufferPointer(start: y.data, count: y.count))
    }

    static func reference(_ c: Case, _ layer: Conv2DLayer, x: [Float], batch: Int, residual: [Float]?) -> [Float] {
        let h = c.upsample ? 2 * c.height : c.height, w = c.upsample ? 2 * c.width : c.width
        let cols = batch * c.geometry.outputHeight(h) * c.geometry.outputWidth(w)
        var initial = residual ?? [Float](repeating: 0, count: c.geometry.outChannels * cols)
        for co in 0..<c.geometry.outChannels { for j in 0..<cols { initial[co * cols + j] += layer.bias!.data[co] } }
        return Reference.convChannelMajor(x, batch: batch, height: c.height, width: c.width, upsample: c.upsample,
                                          weight: layer.weight.data, geometry: c.geometry, initial: initial)
    }

    static func outputCount(_ c: Case, batch: Int) -> Int {
        let h = c.upsample ? 2 * c.height : c.height, w = c.upsample ? 2 * c.width : c.width
        return c.geometry.outChannels * batch * c.geometry.outputHeight(h) * c.geometry.outputWidth(w)
    }

    // MARK: - Tests

    func testLevelsAvailable() {
        XCTAssertTrue(KernelLevel.scalar.isSupported)
        print("FastConv: best level \(KernelLevel.best), supported \(Self.levels)")
    }

    func testFP32MatchesReference() {
        var worst = 0.0
        for (ci, c) in Self.cases.enumerated() {
            let layer = Self.layer(c.geometry, seed: UInt64(ci + 1))
            var r = Rand(state: UInt64(100 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let residual = r.values(Self.outputCount(c, batch: c.batch))
            for res in [nil, residual] {
                let ref = Self.reference(c, layer, x: x, batch: c.batch, residual: res)
                var first: [Float]?
                for level in Self.levels {
                    for threads in [1, 2, 3] {
                        let y = Self.run(c, layer, x: x, batch: c.batch, residual: res, int8: false, level: level, threads: threads)
                        let err = TensorError.relativeL2(y, ref)
                        worst = max(worst, err)
                        XCTAssertLessThan(err, Self.fp32RelativeL2, "\(c.name) \(level)")
                        // Every level and thread split: the same fma chain, the same bits.
                        if let first { XCTAssertEqual(y, first, "\(c.name) \(level) threads \(threads) differs from \(Self.levels[0])") }
                        else { first = y }
                    }
                }
            }
        }
        print(String(format: "FastConv fp32 worst relative L2 vs double reference: %.2e", worst))
    }

    func testInt8Error() {
        var worst = 0.0
        for (ci, c) in Self.cases.enumerated() {
            let layer = Self.layer(c.geometry, seed: UInt64(ci + 1))
            var r = Rand(state: UInt64(200 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let residual = r.values(Self.outputCount(c, batch: c.batch))
            // Error of the conv term alone: compare y - residual - bias against the reference's.
            let ref = Self.reference(c, layer, x: x, batch: c.batch, residual: residual)
            let base = Self.reference(c, layer, x: [Float](repeating: 0, count: x.count), batch: c.batch, residual: residual)
            var first: [Float]?, caseError = 0.0
            for level in Self.levels {
                for threads in [1, 2, 3] {
                    let y = Self.run(c, layer, x: x, batch: c.batch, residual: residual, int8: true, level: level, threads: threads)
                    let err = TensorError.relativeL2(zip(y, base).map { $0 - $1 }, zip(ref, base).map { $0 - $1 })
                    caseError = max(caseError, err)
                    worst = max(worst, err)
                    XCTAssertLessThan(err, Self.int8RelativeL2, "\(c.name) \(level)")
                    if let first { XCTAssertEqual(y, first, "\(c.name) \(level) threads \(threads) differs from \(Self.levels[0])") }
                    else { first = y }
                }
            }
            print(String(format: "FastConv int8 %@: relative L2 %.4f", c.name, caseError))
        }
        print(String(format: "FastConv int8 worst relative L2 vs fp32 reference: %.4f", worst))
    }

    /// Shapes that cross the int8 drivers' blocks (AVX-512: 192 k quads; AVX2: 128 k quads and 8-column kernel
    /// tiles): k quads past one block (and not a multiple of it), columns past one 256-column block with a ragged
    /// last tile, Cout not a multiple of the 8-row panel,
    /// Cin not a multiple of 4, stride 2, the fused upsample; run whole and cut into (rows, columns) parts.
    static let blockCases: [Case] = [
        Case(geometry: ConvGeometry(inChannels: 130, outChannels: 21, kernel: 3, padding: 1), batch: 3, height: 11, width: 13, name: "3x3 K4 297, 429 columns"),
        Case(geometry: ConvGeometry(inChannels: 771, outChannels: 9, kernel: 1, padding: 0), batch: 2, height: 9, width: 31, name: "1x1 K4 193, 558 columns"),
        Case(geometry: ConvGeometry(inChannels: 97, outChannels: 35, kernel: 3, stride: 2, padding: 1), batch: 1, height: 33, width: 35, name: "3x3 s2 K4 225"),
        Case(geometry: ConvGeometry(inChannels: 45, outChannels: 17, kernel: 3, padding: 1), batch: 2, height: 9, width: 7, upsample: true, name: "upsample 3x3 K4 108"),
        // Three k blocks (192 + 192 + 147 k quads) with a 3x3 tap pattern, and a 1x1 with a short last block (192 + 65).
        Case(geometry: ConvGeometry(inChannels: 233, outChannels: 13, kernel: 3, padding: 1), batch: 2, height: 7, width: 9, name: "3x3 K4 531"),
        Case(geometry: ConvGeometry(inChannels: 1027, outChannels: 11, kernel: 1, padding: 0), batch: 1, height: 5, width: 40, name: "1x1 K4 257"),
    ]

    /// int8 convolution against the plain integer reference (Reference.convInt8ChannelMajor): the same bits at
    /// every level, on thread teams of 1-3 (the team cuts rows and columns), and through osk_conv_q8_part on
    /// arbitrary (rows, columns) rectangles.
    func testInt8MatchesIntegerReferenceExactly() {
        for (ci, c) in (Self.cases + Self.blockCases).enumerated() {
            let layer = Self.layer(c.geometry, seed: UInt64(ci + 11))
            var r = Rand(state: UInt64(500 + ci))
            var x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            for i in x.indices where i % 5 == 0 { x[i] += 0.75 }  // not centred on 0: zero points away from 128
            let residual = r.values(Self.outputCount(c, batch: c.batch))
            let packed = PackedConvInt8(layer)
            var initial = residual
            let cols = initial.count / c.geometry.outChannels
            for co in 0..<c.geometry.outChannels { for j in 0..<cols { initial[co * cols + j] += layer.bias!.data[co] } }
            let ref = Reference.convInt8ChannelMajor(x, batch: c.batch, height: c.height, width: c.width, upsample: c.upsample,
                                                     weights: packed.unpacked(), geometry: c.geometry, initial: initial)
            for level in Self.levels {
                for threads in [1, 2, 3] {
                    let y = Self.run(c, layer, x: x, batch: c.batch, residual: residual, int8: true, level: level, threads: threads)
                    if y != ref {
                        let bad = zip(y, ref).enumerated().first { $0.element.0 != $0.element.1 }!
                        XCTFail("\(c.name) \(level) threads \(threads): output \(bad.offset) is \(bad.element.0), reference \(bad.element.1)")
                    }
                }
                let parts = Self.runInt8Parts(c, packed, x: x, initial: initial, level: level)
                XCTAssertEqual(parts, ref, "\(c.name) \(level): osk_conv_q8_part rectangles differ from the reference")
            }
        }
    }

    /// The int8 conv cut into a 3 x 4 grid of (rows, columns) rectangles, run one by one.
    static func runInt8Parts(_ c: Case, _ w: PackedConvInt8, x: [Float], initial: [Float], level: KernelLevel) -> [Float] {
        let rows = c.geometry.outChannels, cols = initial.count / rows, panels = (rows + 7) / 8, tiles = (cols + 31) / 32
        let rowCuts = (0...3).map { min(rows, panels * $0 / 3 * 8) }, colCuts = (0...4).map { min(cols, tiles * $0 / 4 * 32) }
        var y = [Float]()
        FastConv.convInt8Parts(x, channels: c.geometry.inChannels, batch: c.batch, height: c.height, width: c.width,
                               upsample: c.upsample, w, initial: initial, level: level,
                               rectangles: rowCuts.indices.dropLast().flatMap { i in colCuts.indices.dropLast().map { j in
                                   (rowCuts[i]..<rowCuts[i + 1], colCuts[j]..<colCuts[j + 1]) } }, into: &y)
        return y
    }

    /// One image gives the same bits alone and at any position in batches of 2...16, at every level.
    func testBatchInvariance() {
        for (ci, c) in Self.cases.enumerated() where c.geometry.outChannels * c.geometry.reduction < 20_000 {
            let layer = Self.layer(c.geometry, seed: UInt64(ci + 1))
            let plane = c.height * c.width, g = c.geometry
            var r = Rand(state: UInt64(300 + ci))
            let target = r.values(g.inChannels * plane)
            for int8 in [false, true] {
                for level in Self.levels {
                    let alone = Self.run(c, layer, x: target, batch: 1, residual: nil, int8: int8, level: level)
                    let outPlane = alone.count / g.outChannels
                    for batch in [2, 5, 16] {
                        for position in Set([0, batch / 2, batch - 1]) {
                            // (C, N, H, W): channel ch of image `position` is the target's channel ch.
                            var x = r.values(g.inChannels * batch * plane, scale: 3)
                            for ch in 0..<g.inChannels {
                                x.replaceSubrange((ch * batch + position) * plane..<((ch * batch + position + 1) * plane),
                                                  with: target[ch * plane..<((ch + 1) * plane)])
                            }
                            let y = Self.run(c, layer, x: x, batch: batch, residual: nil, int8: int8, level: level, threads: 2)
                            for co in 0..<g.outChannels {
                                let got = Array(y[(co * batch + position) * outPlane..<((co * batch + position + 1) * outPlane)])
                                if got != Array(alone[co * outPlane..<((co + 1) * outPlane)]) {
                                    XCTFail("\(c.name) \(int8 ? "int8" : "fp32") \(level): batch \(batch) position \(position) channel \(co) differs")
                                    break
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The plain GEMM entry point on odd shapes, column sub-ranges included.
    func testGemmMatchesReference() {
        var r = Rand(state: 7)
        for (m, k, n) in [(1, 1, 1), (13, 37, 45), (32, 288, 100), (9, 5, 33)] {
            let a = r.values(m * k), b = r.values(k * n), c0 = r.values(m * n)
            var ref = [Float](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var acc = Double(c0[i * n + j])
                for kk in 0..<k { acc += Double(a[i * k + kk]) * Double(b[kk * n + j]) }
                ref[i * n + j] = Float(acc)
            } }
            let packed = a.withUnsafeBufferPointer { PackedGemmF32($0, rows: m, depth: k) }
            for level in Self.levels {
                var c = c0
                let split = n / 3
                b.withUnsafeBufferPointer { bp in
                    c.withUnsafeMutableBufferPointer { cp in
                        FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: 0..<split, level: level)
                        FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: split..<n, level: level)
                    }
                }
                XCTAssertLessThan(TensorError.relativeL2(c, ref), Self.fp32RelativeL2, "gemm \(m)x\(k)x\(n) \(level)")
            }
        }
    }

    /// A column gives the same bits through the narrow path (fewer than 8 columns: a batch-1 linear layer) as inside
    /// a wide tile (a batch of 40): the server's batch invariance depends on it.
    func testNarrowGemmColumnsEqualWideTileBitForBit() {
        var r = Rand(state: 11)
        for (m, k, n) in [(1, 1, 40), (13, 37, 40), (64, 128, 40), (35, 300, 40)] {
            let a = r.values(m * k), b = r.values(k * n), c0 = r.values(m * n)
            let packed = a.withUnsafeBufferPointer { PackedGemmF32($0, rows: m, depth: k) }
            for level in Self.levels {
                var wide = c0, narrow = c0
                b.withUnsafeBufferPointer { bp in
                    wide.withUnsafeMutableBufferPointer { cp in
                        FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: 0..<n, level: level)
                    }
                    narrow.withUnsafeMutableBufferPointer { cp in
                        var j = 0
                        for width in [1, 7, 3, 1, 5, 2, 4, 6, 1] where j < n {  // every narrow width, then the rest
                            FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: j..<min(j + width, n), level: level)
                            j += width
                        }
                        FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: j..<n, level: level)
                    }
                }
                XCTAssertEqual(wide.map(\.bitPattern), narrow.map(\.bitPattern), "gemm \(m)x\(k)x\(n) \(level)")
            }
        }
    }
}

/// The int8 conv's activation quantization split over a team (each image's positions split when there are fewer
/// images than threads) gives the same codes, scales and zero points as one thread, at every level; and the scale
/// and zero point are the per-image range rule (range widened to hold 0, 255 steps).
final class QuantizeActivationsSplitTests: XCTestCase {
    func quantize(_ x: [Float], channels c: Int, batch n: Int, height h: Int, width w: Int, level: KernelLevel,
                  threads: Int) -> (codes: [UInt32], scales: [Float], zps: [Int32]) {
        let pool = BufferPool()
        let a = FastConvTests.activation(x, channels: c, batch: n, height: h, width: w, pool: pool)
        var codes = [UInt32](repeating: 0xDEAD_BEEF, count: (c + 3) / 4 * n * h * w)
        var scales = [Float](repeating: -1, count: n), zps = [Int32](repeating: -1, count: n)
        codes.withUnsafeMutableBufferPointer { cp in scales.withUnsafeMutableBufferPointer { sp in zps.withUnsafeMutableBufferPointer { zp in
            FastConv.quantizeActivations(a, codes: cp.baseAddress!, scales: sp.baseAddress!, zeroPoints: zp.baseAddress!,
                                         level: level, team: FastConvTests.team(threads))
        } } }
        return (codes, scales, zps)
    }

    func testSplitOverPositionsEqualsOneThread() {
        var r = TestRandom(31)
        // (C, N, H, W): odd channel counts (a partial 4-channel word), odd position counts (masked tails), one and
        // two images, all large enough (splitsQuantizationByPositions) that the split path runs on 2 and 3 threads.
        // (1283, 1, 15, 17): few positions but many channels (splitQuantizeMinValues), as the UNet's inner levels.
        for (c, n, h, w) in [(5, 1, 67, 71), (64, 1, 64, 64), (3, 1, 80, 81), (8, 2, 70, 70), (1, 1, 64, 65), (1283, 1, 15, 17)] {
            let a = Activation(viewing: UnsafeMutablePointer<Float>(bitPattern: 64)!, channels: c, batch: n, height: h, width: w)
            XCTAssertTrue(FastConv.splitsQuantizationByPositions(a), "\(c)x\(n)x\(h)x\(w) must take the split path")
            // Skewed values: image ranges neither symmetric nor holding 0 until widened.
            let x = (0..<(c * n * h * w)).map { i in Float(Int(r.next() % 20001) - 4000) / 1000 + (i % 7 == 0 ? 0.5 : 0) }
            for level in KernelLevel.allCases where level.isSupported {
                let one = quantize(x, channels: c, batch: n, height: h, width: w, level: level, threads: 1)
                XCTAssertFalse(one.codes.contains(0xDEAD_BEEF), "every code word written")
                for threads in [2, 3] {
                    let split = quantize(x, channels: c, batch: n, height: h, width: w, level: level, threads: threads)
                    XCTAssertEqual(split.scales.map(\.bitPattern), one.scales.map(\.bitPattern), "\(c)x\(n)x\(h)x\(w) \(level) threads \(threads)")
                    XCTAssertEqual(split.zps, one.zps, "\(c)x\(n)x\(h)x\(w) \(level) threads \(threads)")
                    XCTAssertTrue(split.codes == one.codes, "codes differ: \(c)x\(n)x\(h)x\(w) \(level) threads \(threads)")
                }
                // The rule: s = (max(hi, 0) - min(lo, 0)) / 255, zp = round(-lo / s), per image.
                for i in 0..<n {
                    var lo: Float = 0, hi: Float = 0
                    for ch in 0..<c { for j in 0..<(h * w) { let v = x[(ch * n + i) * h * w + j]; lo = min(lo, v); hi = max(hi, v) } }
                    XCTAssertEqual(one.scales[i], (hi - lo) / 255, "image \(i)")
                    XCTAssertEqual(one.zps[i], Int32((-lo / one.scales[i]).rounded(.toNearestOrEven)), "image \(i)")
                }
            }
        }
    }
}

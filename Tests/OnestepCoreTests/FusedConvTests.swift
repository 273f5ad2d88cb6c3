import XCTest
@testable import OnestepCore

/// Fails naming the first differing element (not the whole arrays) unless a and b have the same bits.
func assertSameBits(_ a: [Float], _ b: [Float], _ name: String, file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else { return XCTFail("\(name): \(a.count) values, expected \(b.count)", file: file, line: line) }
    if let i = a.indices.first(where: { a[$0].bitPattern != b[$0].bitPattern }) {
        XCTFail("\(name): element \(i) is \(a[i]), expected \(b[i])", file: file, line: line)
    }
}

/// FastConv.convFused (osk_conv_q8_fused: bias, residual, ReLU and the per-image output range in the int8 conv's
/// tile epilogue) against the unfused calls it replaces: FastConv.conv accumulating onto a copy of the residual,
/// then Reference.relu, then the per-image min / max (with 0) the quantizer's range pass finds. Tolerance: none, the bits must be equal (the unfused
/// int8 conv is itself checked bit for bit against Reference.convInt8ChannelMajor in FastConvTests), at every
/// level, on teams of 1-3 threads, on the odd and blocked (several k blocks) shapes of FastConvTests.
final class FusedConvTests: XCTestCase {
    typealias Case = FastConvTests.Case

    /// The unfused result: (y, per-image [lo, hi] of y with 0 included).
    static func unfused(_ c: Case, _ w: PackedConvInt8, x: [Float], residual: [Float]?, relu: Bool, level: KernelLevel,
                        pool: BufferPool) -> ([Float], [Float]) {
        let xa = FastConvTests.activation(x, channels: c.geometry.inChannels, batch: c.batch, height: c.height, width: c.width, pool: pool)
        let (ho, wo) = outputSize(c)
        let existing = residual.map { FastConvTests.activation($0, channels: c.geometry.outChannels, batch: c.batch, height: ho, width: wo, pool: pool) }
        let y = FastConv.conv(xa, w, upsample: c.upsample, pool: pool, accumulateInto: existing, level: level)
        var out = Array(UnsafeBufferPointer(start: y.data, count: y.count))
        if relu { out = Reference.relu(Tensor(shape: [out.count], data: out)).data }
        var range = [Float](repeating: 0, count: 2 * c.batch)   // what the int8 quantizer's range pass finds
        for ch in 0..<c.geometry.outChannels {
            for i in 0..<c.batch {
                for j in 0..<(ho * wo) {
                    let v = out[(ch * c.batch + i) * ho * wo + j]
                    range[2 * i] = min(range[2 * i], v)
                    range[2 * i + 1] = max(range[2 * i + 1], v)
                }
            }
        }
        return (out, range)
    }

    static func outputSize(_ c: Case) -> (Int, Int) {
        let h = c.upsample ? 2 * c.height : c.height, w = c.upsample ? 2 * c.width : c.width
        return (c.geometry.outputHeight(h), c.geometry.outputWidth(w))
    }

    /// Every combination of residual / ReLU / a bias or none, at every level and on 1-3 threads: y bit for bit,
    /// ranges equal (== : the sign of a zero bound may differ, which gives the same scale and zero point).
    func testFusedEqualsSeparatePasses() {
        for (ci, c) in (FastConvTests.cases + FastConvTests.blockCases).enumerated() {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 40))
            var r = FastConvTests.Rand(state: UInt64(900 + ci))
            var x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            for i in x.indices where i % 3 == 0 { x[i] += 0.5 }
            let residual = r.values(FastConvTests.outputCount(c, batch: c.batch))
            let withBias = PackedConvInt8(layer), noBias = PackedConvInt8(geometry: c.geometry, bias: nil, weights: withBias.unpacked())
            for (w, bname) in [(withBias, "bias"), (noBias, "no bias")] {
                for useResidual in [false, true] {
                    for relu in [false, true] {
                        for level in FastConvTests.levels {
                            let pool = BufferPool()
                            let (ref, refRange) = Self.unfused(c, w, x: x, residual: useResidual ? residual : nil, relu: relu, level: level, pool: pool)
                            for threads in [1, 2, 3] {
                                let name = "\(c.name) \(bname) residual \(useResidual) relu \(relu) \(level) threads \(threads)"
                                let xa = FastConvTests.activation(x, channels: c.geometry.inChannels, batch: c.batch, height: c.height, width: c.width, pool: pool)
                                let (ho, wo) = Self.outputSize(c)
                                let res = useResidual ? FastConvTests.activation(residual, channels: c.geometry.outChannels, batch: c.batch, height: ho, width: wo, pool: pool) : nil
                                let (y, range) = FastConv.convFused(xa, w, upsample: c.upsample, pool: pool, residual: res, relu: relu,
                                                                    outputRange: true, level: level, team: FastConvTests.team(threads))
                                let got = Array(UnsafeBufferPointer(start: y.data, count: y.count))
                                assertSameBits(got, ref, name)
                                XCTAssertEqual(range, refRange, name)
                                // The measured range fed back as the next conv's input range gives the codes a range pass gives.
                                if c.geometry.inChannels == c.geometry.outChannels && !c.upsample && c.geometry.stride == 1 {
                                    let (y2a, _) = FastConv.convFused(y, w, pool: pool, relu: relu, inputRange: range, outputRange: false, level: level,
                                                                      team: FastConvTests.team(threads))
                                    let (y2b, _) = FastConv.convFused(y, w, pool: pool, relu: relu, outputRange: false, level: level,
                                                                      team: FastConvTests.team(threads))
                                    XCTAssertTrue(UnsafeBufferPointer(start: y2a.data, count: y2a.count).elementsEqual(
                                        UnsafeBufferPointer(start: y2b.data, count: y2b.count)) { $0.bitPattern == $1.bitPattern }, "\(name): input range")
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `into` the residual itself (a projection's y += W x + b, LatentRunner.project) equals accumulating onto a copy.
    func testAccumulateIntoTheResidualInPlace() {
        for (ci, c) in FastConvTests.cases.enumerated() where !c.upsample && c.geometry.stride == 1 {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 70))
            var r = FastConvTests.Rand(state: UInt64(1300 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let residual = r.values(FastConvTests.outputCount(c, batch: c.batch))
            let packed = PackedConvInt8(layer), bias = layer.bias!.data
            let w = PackedConvInt8(geometry: c.geometry, bias: nil, weights: packed.unpacked())
            for level in FastConvTests.levels {
                let pool = BufferPool()
                let (ref, _) = Self.unfused(c, packed, x: x, residual: residual, relu: false, level: level, pool: pool)
                for threads in [1, 2] {
                    let xa = FastConvTests.activation(x, channels: c.geometry.inChannels, batch: c.batch, height: c.height, width: c.width, pool: pool)
                    let (ho, wo) = Self.outputSize(c)
                    let y = FastConvTests.activation(residual, channels: c.geometry.outChannels, batch: c.batch, height: ho, width: wo, pool: pool)
                    _ = FastConv.convFused(xa, w, pool: pool, into: y, residual: y, bias: bias, relu: false, outputRange: false,
                                           level: level, team: FastConvTests.team(threads))
                    assertSameBits(Array(UnsafeBufferPointer(start: y.data, count: y.count)), ref, "\(c.name) \(level) threads \(threads)")
                }
            }
        }
    }
}

/// FastConv.geglu (onestep_geglu.c, rational erf) against the double-precision LatentReference.geglu, and its
/// levels, team splits and output ranges against each other.
final class GEGLUKernelTests: XCTestCase {
    /// Largest |out - reference| / max(1, |a| max(1, |gate|)): the float erf approximation's error (about 1e-7) plus
    /// a few roundings of the gelu and the product.
    static let maxScaledError: Float = 2e-6

    func testMatchesReferenceAndIsTheSameOnEveryLevelAndSplit() {
        var r = TestRandom(77)
        for (inner, images, length) in [(24, 1, 19), (7, 3, 33), (40, 2, 4096), (5, 1, 1)] {
            let cols = images * length
            // Gates over [-8, 8] (erf saturates past 3.9) and values over [-3, 3]; a few exact zeros and huge gates.
            var proj = (0..<(2 * inner * cols)).map { i in i < inner * cols ? 3 * r.float() : 8 * r.float() }
            for i in stride(from: 0, to: proj.count, by: 97) { proj[i] = 0 }
            for i in stride(from: inner * cols + 5, to: proj.count, by: 211) { proj[i] = i % 2 == 0 ? 1e6 : -1e6 }
            let ref = LatentReference.geglu(proj, inner: inner, columns: cols)
            var first: [Float]? = nil
            for level in FastConvTests.levels {
                for threads in [1, 2, 3] {
                    var out = [Float](repeating: .nan, count: inner * cols)
                    let range = FastConv.geglu(proj, inner: inner, columns: cols, length: length, out: &out, range: true,
                                               level: level, team: FastConvTests.team(threads))!
                    let name = "\(inner)x\(images)x\(length) \(level) threads \(threads)"
                    if let f = first { assertSameBits(out, f, name) } else { first = out }
                    var worst: Float = 0
                    for j in out.indices { worst = max(worst, abs(out[j] - ref[j]) / max(1, abs(proj[j]) * max(1, abs(proj[inner * cols + j])))) }
                    XCTAssertLessThanOrEqual(worst, Self.maxScaledError, name)
                    for i in 0..<images {
                        var lo: Float = 0, hi: Float = 0
                        for row in 0..<inner { for j in (i * length)..<((i + 1) * length) { lo = min(lo, out[row * cols + j]); hi = max(hi, out[row * cols + j]) } }
                        XCTAssertEqual(range[2 * i], lo, "\(name) image \(i) lo")
                        XCTAssertEqual(range[2 * i + 1], hi, "\(name) image \(i) hi")
                    }
                }
            }
        }
    }
}

/// Convolutions on maps at least one tile (32 columns) wide, where osk_tile_taps takes its one-row stride-1 path
/// (valid columns as one interval) and interior tiles are read in place: int8 bit for bit against the integer
/// reference, fp32 within FastConvTests.fp32RelativeL2 and bit for bit against the scalar level, at every level,
/// on 1 and 2 threads. FastConvTests' maps are narrower.
final class WideTileTapsTests: XCTestCase {
    static let cases: [FastConvTests.Case] = [
        .init(geometry: ConvGeometry(inChannels: 6, outChannels: 9, kernel: 3, padding: 1), batch: 2, height: 3, width: 70, name: "3x3 p1 width 70"),
        .init(geometry: ConvGeometry(inChannels: 5, outChannels: 8, kernel: 3, padding: 1), batch: 1, height: 4, width: 64, name: "3x3 p1 width 64"),
        .init(geometry: ConvGeometry(inChannels: 5, outChannels: 7, kernel: 3, padding: 0), batch: 2, height: 4, width: 41, name: "3x3 p0 width 41"),
        .init(geometry: ConvGeometry(inChannels: 4, outChannels: 11, kernel: 3, padding: 1), batch: 2, height: 3, width: 33, upsample: true, name: "upsample 3x3 width 33 -> 66"),
        .init(geometry: ConvGeometry(inChannels: 9, outChannels: 5, kernel: 1, padding: 0), batch: 2, height: 2, width: 96, name: "1x1 width 96"),
        .init(geometry: ConvGeometry(inChannels: 3, outChannels: 4, kernelH: 3, kernelW: 3, stride: 1, padTop: 0, padLeft: 2, padBottom: 2, padRight: 0),
              batch: 1, height: 5, width: 50, name: "3x3 pads (0, 2, 2, 0) width 50"),
        .init(geometry: ConvGeometry(inChannels: 13, outChannels: 3, kernel: 3, padding: 1), batch: 2, height: 4, width: 70, name: "conv_out-like 13->3 width 70"),
    ]

    func testWideMapsMatchTheReferences() {
        for (ci, c) in Self.cases.enumerated() {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 90))
            var r = FastConvTests.Rand(state: UInt64(1700 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let packed = PackedConvInt8(layer)
            let cols = FastConvTests.outputCount(c, batch: c.batch) / c.geometry.outChannels
            var initial = [Float](repeating: 0, count: c.geometry.outChannels * cols)
            for co in 0..<c.geometry.outChannels { for j in 0..<cols { initial[co * cols + j] = layer.bias!.data[co] } }
            let ref8 = Reference.convInt8ChannelMajor(x, batch: c.batch, height: c.height, width: c.width, upsample: c.upsample,
                                                      weights: packed.unpacked(), geometry: c.geometry, initial: initial)
            let ref32 = FastConvTests.reference(c, layer, x: x, batch: c.batch, residual: nil)
            // fp32 outputs are one fma chain per element in the same order on every level (the AVX-512 path reads
            // interior tiles of layers with <= 4 outputs in place): the scalar level's bits.
            let scalar32 = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: nil, int8: false, level: .scalar)
            for level in FastConvTests.levels {
                for threads in [1, 2] {
                    assertSameBits(FastConvTests.run(c, layer, x: x, batch: c.batch, residual: nil, int8: false, level: level, threads: threads),
                                   scalar32, "\(c.name) fp32 \(level) threads \(threads) vs scalar")
                    let y8 = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: nil, int8: true, level: level, threads: threads)
                    assertSameBits(y8, ref8, "\(c.name) int8 \(level) threads \(threads)")
                    let y32 = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: nil, int8: false, level: level, threads: threads)
                    XCTAssertLessThanOrEqual(TensorError.relativeL2(y32, ref32), FastConvTests.fp32RelativeL2, "\(c.name) fp32 \(level) threads \(threads)")
                }
            }
        }
    }
}

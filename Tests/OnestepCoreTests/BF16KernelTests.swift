import XCTest
@testable import OnestepCore

/// The bf16 convolution and GEMM (onestep_bf16.c) against double-precision references on odd shapes, at every
/// level this CPU has; the levels bit for bit (the scalar level emulates vdpbf16ps exactly); thread and batch
/// invariance.
final class BF16KernelTests: XCTestCase {
    /// Against a double sum of the same bf16-rounded operands only the fp32 accumulation differs (K <= ~1200
    /// here): relative L2 limit.
    static let fp32SumRelativeL2 = 1e-5
    /// Against the fp32 operands: each operand rounded to 8 significant bits (unit roundoff 2^-9), so a product is
    /// off by at most 2 * 2^-9 relative; relative L2 limit 2^-8. Measured ~1.5e-3 (printed).
    static let bf16RoundingRelativeL2 = 1.0 / 256

    static let levels = KernelLevel.allCases.filter(\.isSupported)

    static let cases = FastConvTests.cases + [
        FastConvTests.Case(geometry: ConvGeometry(inChannels: 131, outChannels: 21, kernel: 3, padding: 1), batch: 2, height: 7, width: 9, name: "3x3 Cin 131"),
        FastConvTests.Case(geometry: ConvGeometry(inChannels: 33, outChannels: 9, kernel: 3, stride: 2, padding: 1), batch: 1, height: 13, width: 11, name: "3x3 s2 Cin 33"),
    ]

    static func run(_ c: FastConvTests.Case, _ w: PackedConvBF16, x: [Float], batch: Int, residual: [Float]?, level: KernelLevel,
                    threads: Int = 1) -> [Float] {
        let pool = BufferPool()
        let xa = FastConvTests.activation(x, channels: c.geometry.inChannels, batch: batch, height: c.height, width: c.width, pool: pool)
        let h = c.upsample ? 2 * c.height : c.height, wd = c.upsample ? 2 * c.width : c.width
        let existing = residual.map {
            FastConvTests.activation($0, channels: c.geometry.outChannels, batch: batch, height: c.geometry.outputHeight(h),
                                     width: c.geometry.outputWidth(wd), pool: pool)
        }
        let y = FastConv.conv(xa, w, upsample: c.upsample, pool: pool, accumulateInto: existing, level: level, team: FastConvTests.team(threads))
        return Array(UnsafeBufferPointer(start: y.data, count: y.count))
    }

    func testConvMatchesReferencesAtEveryLevel() {
        print("bf16 kernels: vdpbf16ps \(FastConv.hasBF16Instructions ? "present" : "absent (scalar emulation only)"); levels \(Self.levels)")
        var worstRounding = 0.0, worstSum = 0.0
        for (ci, c) in Self.cases.enumerated() {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 21))
            var r = FastConvTests.Rand(state: UInt64(700 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let residual = r.values(FastConvTests.outputCount(c, batch: c.batch))
            let packed = PackedConvBF16(layer)
            let exact = FastConvTests.reference(c, layer, x: x, batch: c.batch, residual: residual)
            // The same reference on the bf16-rounded operands: what the kernel multiplies.
            var rounded = layer
            rounded.weight = Tensor(shape: layer.weight.shape, data: layer.weight.data.map(\.roundedToBF16))
            let onRounded = FastConvTests.reference(c, rounded, x: x.map(\.roundedToBF16), batch: c.batch, residual: residual)
            var first: [Float]?
            for level in Self.levels {
                for threads in [1, 2, 3] {
                    let y = Self.run(c, packed, x: x, batch: c.batch, residual: residual, level: level, threads: threads)
                    let sumError = TensorError.relativeL2(y, onRounded), roundingError = TensorError.relativeL2(y, exact)
                    worstSum = max(worstSum, sumError)
                    worstRounding = max(worstRounding, roundingError)
                    XCTAssertLessThan(sumError, Self.fp32SumRelativeL2, "\(c.name) \(level) vs bf16-rounded reference")
                    XCTAssertLessThan(roundingError, Self.bf16RoundingRelativeL2, "\(c.name) \(level) vs fp32 reference")
                    if let first { XCTAssertEqual(y, first, "\(c.name) \(level) threads \(threads) differs from \(Self.levels[0])") }
                    else { first = y }
                }
            }
        }
        print(String(format: "bf16 conv worst relative L2: %.2e vs rounded operands, %.2e vs fp32", worstSum, worstRounding))
    }

    /// One image gives the same bits alone and at any position in a batch.
    func testBatchInvariance() {
        let c = Self.cases[1], g = c.geometry, plane = c.height * c.width
        let packed = PackedConvBF16(FastConvTests.layer(g, seed: 5))
        var r = FastConvTests.Rand(state: 77)
        let target = r.values(g.inChannels * plane)
        for level in Self.levels {
            let alone = Self.run(c, packed, x: target, batch: 1, residual: nil, level: level)
            let outPlane = alone.count / g.outChannels
            for (batch, position) in [(2, 1), (5, 2), (16, 15)] {
                var x = r.values(g.inChannels * batch * plane, scale: 3)
                for ch in 0..<g.inChannels {
                    x.replaceSubrange((ch * batch + position) * plane..<((ch * batch + position + 1) * plane), with: target[ch * plane..<((ch + 1) * plane)])
                }
                let y = Self.run(c, packed, x: x, batch: batch, residual: nil, level: level, threads: 2)
                for co in 0..<g.outChannels {
                    XCTAssertEqual(Array(y[(co * batch + position) * outPlane..<((co * batch + position + 1) * outPlane)]),
                                   Array(alone[co * outPlane..<((co + 1) * outPlane)]), "\(level) batch \(batch) channel \(co)")
                }
            }
        }
    }

    /// The GEMM entry point on odd shapes, cut into column sub-ranges.
    func testGemmMatchesReference() {
        var r = FastConvTests.Rand(state: 9)
        for (m, k, n) in [(1, 1, 1), (13, 37, 45), (32, 288, 100), (9, 5, 33), (17, 321, 70)] {
            let a = r.values(m * k), b = r.values(k * n), c0 = r.values(m * n)
            var ref = [Float](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var acc = Double(c0[i * n + j])
                for kk in 0..<k { acc += Double(a[i * k + kk].roundedToBF16) * Double(b[kk * n + j].roundedToBF16) }
                ref[i * n + j] = Float(acc)
            } }
            let packed = PackedGemmBF16(a, rows: m, depth: k)
            var first: [Float]?
            for level in Self.levels {
                var c = c0
                let split = n / 3
                b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                    FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: 0..<split, level: level)
                    FastConv.gemm(packed, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n, columns: split..<n, level: level)
                } }
                XCTAssertLessThan(TensorError.relativeL2(c, ref), Self.fp32SumRelativeL2, "bf16 gemm \(m)x\(k)x\(n) \(level)")
                if let first { XCTAssertEqual(c, first, "bf16 gemm \(m)x\(k)x\(n): \(level) differs") } else { first = c }
            }
        }
    }

    func testRoundingToBF16() {
        XCTAssertEqual(Float(1).roundedToBF16, 1)
        XCTAssertEqual(Float(bitPattern: 0x3f80_8000).roundedToBF16, 1)                         // tie: to even (down)
        XCTAssertEqual(Float(bitPattern: 0x3f81_8000).roundedToBF16, Float(bitPattern: 0x3f82_0000))  // tie: to even (up)
        XCTAssertEqual(Float(bitPattern: 0x0000_0001).roundedToBF16, 0)                         // denormal flushed
        XCTAssertTrue(Float.nan.roundedToBF16.isNaN)
    }
}

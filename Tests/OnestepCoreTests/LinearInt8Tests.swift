import XCTest
@testable import OnestepCore

/// The int8 linear kernel (onestep_linear.c) against a naive reference on odd shapes, at every level this CPU
/// has, and the levels against each other bit for bit.
final class LinearInt8Tests: XCTestCase {
    static let levels = KernelLevel.allCases.filter(\.isSupported)
    /// The reference sums the same integer products in Double, then dequantizes: only float rounding differs.
    static let matchesReference: Float = 1e-4
    /// Quantization error of uint8 rows x int8 channels against the float product (relative L2).
    static let closeToFloat = 0.02

    /// rows, K, N: none a multiple of the 4 x 32 block or of 4 in K except where noted; 101 rows cross the avx2
    /// level's 48-row chunks with a ragged last one.
    static let shapes = [(1, 1, 1), (3, 5, 7), (5, 13, 31), (7, 67, 33), (4, 64, 32), (9, 130, 70), (33, 257, 65), (101, 130, 70)]

    func testMatchesReferenceAtEveryLevel() {
        print("int8 linear levels tested on this CPU: \(Self.levels.map(\.description).joined(separator: ", "))")
        for (si, (rows, k, n)) in Self.shapes.enumerated() {
            var r = TestRandom(UInt64(40 + si))
            var x = r.floats(rows * k)
            for i in x.indices { x[i] = x[i] * 3 + (i % 7 == 0 ? 1 : 0) }  // rows not centred on 0
            let wf = Tensor(shape: [n, k], data: r.floats(n * k))
            let bias = r.floats(n)
            let q = Int8Weights.quantize(wf)
            let packed = PackedLinearInt8(weights: q, bias: bias)
            var first: [Float]?
            for level in Self.levels {
                var y = [Float](repeating: .nan, count: rows * n)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                    FastConv.linear(xp.baseAddress!, rows: rows, packed, into: yp.baseAddress!, level: level)
                } }
                let ref = Self.reference(x, rows: rows, k: k, q, bias: bias)
                XCTAssertLessThanOrEqual(TensorError.maxAbs(y, ref), Self.matchesReference * max(1, ref.map(abs).max()!), "\(rows)x\(k)x\(n) \(level)")
                let float = Self.floatLinear(x, rows: rows, k: k, wf.data, n: n, bias: bias)
                XCTAssertLessThan(TensorError.relativeL2(y, float), Self.closeToFloat, "\(rows)x\(k)x\(n) \(level) vs float")
                if let first { XCTAssertEqual(y, first, "\(rows)x\(k)x\(n): \(level) differs from \(Self.levels[0])") } else { first = y }
            }
        }
    }

    /// A row's output is the same alone, inside a larger batch, and split over a thread team.
    func testRowsAreIndependentOfBatchAndThreads() {
        let k = 67, n = 45
        var r = TestRandom(9)
        let q = Int8Weights.quantize(Tensor(shape: [n, k], data: r.floats(n * k)))
        let packed = PackedLinearInt8(weights: q, bias: r.floats(n))
        let target = r.floats(k)
        var alone = [Float](repeating: 0, count: n)
        target.withUnsafeBufferPointer { xp in alone.withUnsafeMutableBufferPointer { FastConv.linear(xp.baseAddress!, rows: 1, packed, into: $0.baseAddress!) } }
        let team = ThreadTeam(threads: 3)
        for rows in [2, 5, 11] {
            for position in [0, rows - 1] {
                var x = r.floats(rows * k).map { $0 * 5 }
                x.replaceSubrange(position * k..<(position + 1) * k, with: target)
                for t in [nil, team] {
                    var y = [Float](repeating: 0, count: rows * n)
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { FastConv.linear(xp.baseAddress!, rows: rows, packed, into: $0.baseAddress!, team: t) } }
                    XCTAssertEqual(Array(y[position * n..<(position + 1) * n]), alone, "rows \(rows) position \(position) team \(t?.threads ?? 1)")
                }
            }
        }
    }

    /// The VNNI peak microbenchmark runs where the CPU has VNNI and reports a plausible figure; skipped elsewhere.
    func testVNNIPeakMeasures() throws {
        guard KernelLevel.avx512.isSupported else { throw XCTSkip("no AVX-512 VNNI on this CPU: the peak chain cannot run") }
        let gops = try XCTUnwrap(FastConv.vnniPeakGops(seconds: 0.05))
        XCTAssertGreaterThan(gops, 1, "a vpdpbusd chain cannot run below 1 GOP/s")
    }

    /// The avx2 level's int8 peak (vpmaddwd + vpaddd chains) runs where the CPU has AVX2; skipped elsewhere.
    func testAVX2Int8PeakMeasures() throws {
        guard KernelLevel.avx2.isSupported else { throw XCTSkip("no AVX2 on this CPU") }
        let peaks = MachinePeaks.measure(seconds: 0.05)
        let gops = try XCTUnwrap(peaks.maddGops)
        XCTAssertGreaterThan(gops, 1, "a vpmaddwd chain cannot run below 1 GOP/s")
        XCTAssertNotNil(peaks.fmaGflops, "the fp32 FMA peak runs at the avx2 level too")
    }

    /// AMX is not implemented (no AMX on the CPUs this was written on, so nothing could be tested): say so.
    func testAMXIsReportedUnavailable() throws {
        throw XCTSkip("AMX-INT8/BF16 kernels are not implemented; this CPU (\(KernelLevel.best)) runs VNNI/AVX2/scalar")
    }

    // MARK: - References

    /// Quantizes each row as the documented rule says (independently of the C code), then sums in Double.
    static func reference(_ x: [Float], rows: Int, k: Int, _ q: Int8Tensor, bias: [Float]) -> [Float] {
        let n = q.shape[0]
        var y = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows {
            let row = Array(x[r * k..<(r + 1) * k])
            let lo = min(0, row.min()!), hi = max(0, row.max()!)
            var s = (hi - lo) / 255
            if !(s > 0) { s = 1 }
            let inv = 1 / s
            let zp = min(255, max(0, Int((-lo * inv).rounded(.toNearestOrEven))))
            let codes = row.map { min(255, max(0, Int(($0 * inv).rounded(.toNearestOrEven)) + zp)) }
            for o in 0..<n {
                var acc = 0
                for kk in 0..<k { acc += (codes[kk] - zp) * Int(q.codes[o * k + kk]) }
                y[r * n + o] = Float(Double(acc) * Double(s) * Double(q.scales[o]) + Double(bias[o]))
            }
        }
        return y
    }

    static func floatLinear(_ x: [Float], rows: Int, k: Int, _ w: [Float], n: Int, bias: [Float]) -> [Float] {
        var y = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows { for o in 0..<n {
            var acc = Double(bias[o])
            for kk in 0..<k { acc += Double(x[r * k + kk]) * Double(w[o * k + kk]) }
            y[r * n + o] = Float(acc)
        } }
        return y
    }
}

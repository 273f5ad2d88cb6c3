// The AVX2 training paths keep the bits of the paths they replace: osk_conv_f32_init (y = bias + conv, each tile's
// columns set just before its FMAs) against filling y and osk_conv_f32 at the scalar level, at every level; and the
// AVX2 GroupNorm passes and affine SiLU (which ran the scalar loops before) against the scalar level, bit for bit.
// The values themselves are checked against references in FastTrainingKernelTests and KernelTests.
import XCTest
@testable import OnestepTrain
import OnestepCore

final class AVX2TrainingBitsTests: XCTestCase {
    /// Shapes with edge tiles (columns not a multiple of 32), layers of 3, 7, 12 and 13 outputs (the AVX2 tile's 6-
    /// and 4-row groups and rows past M), stride 2 and 1x1.
    func testConvolutionWritesTheFillThenAccumulateBits() {
        let cases: [(ConvGeometry, Int, Int, Int)] = [
            (ConvGeometry(inChannels: 5, outChannels: 12, kernel: 3, padding: 1), 3, 16, 16),
            (ConvGeometry(inChannels: 4, outChannels: 3, kernel: 3, padding: 1), 2, 8, 8),
            (ConvGeometry(inChannels: 7, outChannels: 13, kernel: 3, stride: 2, padding: 1), 3, 9, 9),
            (ConvGeometry(inChannels: 12, outChannels: 7, kernel: 1, padding: 0), 3, 4, 5),
        ]
        for (g, n, h, w) in cases {
            let cols = n * g.outputHeight(h) * g.outputWidth(w), m = g.outChannels
            let x = GradientCheck.random(g.inChannels * n * h * w, seed: 81)   // (Cin, N, H, W)
            let weights = GradientCheck.random(m * g.reduction, seed: 82), bias = GradientCheck.random(m, seed: 83)
            var packed = [Float](repeating: 0, count: FastConv.packedWeightCount(g))
            FastConv.packWeights(weights, geometry: g, into: &packed)
            for withBias in [false, true] {
                var expected = [Float](repeating: 0, count: m * cols)
                if withBias { for co in 0..<m { for j in 0..<cols { expected[co * cols + j] = bias[co] } } }
                FastConv.convAccumulate(x: x, packed: packed, geometry: g, batch: n, height: h, width: w, y: &expected, level: .scalar)
                for level in KernelLevel.allCases where level.isSupported {
                    var y = [Float](repeating: .nan, count: m * cols)   // every entry must be written
                    x.withUnsafeBufferPointer { xp in packed.withUnsafeBufferPointer { pp in bias.withUnsafeBufferPointer { bp in
                        y.withUnsafeMutableBufferPointer { yp in
                            TrainKernels.convolution(x: xp.baseAddress!, packed: pp.baseAddress!, bias: withBias ? bp.baseAddress! : nil,
                                                     geometry: g, batch: n, height: h, width: w, y: yp.baseAddress!, level: level)
                        }
                    } } }
                    XCTAssertEqual(y, expected, "\(g) on \(n)x\(h)x\(w), bias \(withBias), \(level)")
                }
            }
        }
    }

    func testGroupNormPassesAndSiLUAtAVX2GiveTheScalarBits() throws {
        guard KernelLevel.avx2.isSupported else { throw XCTSkip("no AVX2 on this CPU") }
        for n in [1, 7, 8, 15, 16, 17, 64, 100, 256] {
            // Wide enough for e^x's clamp and for large SiLU arguments.
            let x = GradientCheck.random(n, seed: UInt64(90 + n)).map { $0 * 40 }, dy = GradientCheck.random(n, seed: UInt64(190 + n))
            for silu in [false, true] {
                var dz: [[Float]] = [], sums: [[Float]] = [], dx: [[Float]] = []
                for level in [KernelLevel.scalar, .avx2] {
                    var d = [Float](repeating: 0, count: n)
                    let s = TrainKernels.groupNormGradient(x: x, dy: dy, dz: &d, count: n, mean: 0.3, rstd: 0.7, gamma: 1.3,
                                                           beta: -0.2, silu: silu, level: level)
                    dz.append(d); sums.append([s.sumDz, s.sumDzXhat])
                    TrainKernels.groupNormGradientFinish(x: x, &d, count: n, mean: 0.3, rstd: 0.7, gamma: 1.3, meanG: 0.01,
                                                         meanGX: -0.02, level: level)
                    dx.append(d)
                }
                XCTAssertEqual(dz[1], dz[0], "n \(n) silu \(silu): dz")
                XCTAssertEqual(sums[1], sums[0], "n \(n) silu \(silu): sums")
                XCTAssertEqual(dx[1], dx[0], "n \(n) silu \(silu): dx")
            }
            var ys: [[Float]] = []
            for level in [KernelLevel.scalar, .avx2] {
                var y = [Float](repeating: 0, count: n)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                    FastConv.affineSiLU(xp.baseAddress!, yp.baseAddress!, count: n, a: 1.5, b: -0.25, level: level)
                } }
                ys.append(y)
            }
            XCTAssertEqual(ys[1], ys[0], "n \(n): affine SiLU")
        }
    }
}

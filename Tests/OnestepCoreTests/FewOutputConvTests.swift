import XCTest
@testable import OnestepCore

/// The AVX-512 ring kernel for fp32 3x3 convs of at most 4 outputs (onestep_conv_few.c: the decoders' conv_out).
/// Tolerance: none against the other paths: each output is the same fma chain (k = channel * 9 + tap ascending
/// from y's value), so its bits must equal the scalar level's and the tile driver's (the kernel switched off),
/// with and without accumulation, on teams of 1-3 threads (column splits that cut rows); against the double
/// reference within FastConvTests.fp32RelativeL2. Shapes: 1-4 outputs, odd channel counts, widths of one column,
/// of a partial and of several 64-column steps, batches of 2 (the ring must not reuse rows across images).
final class FewOutputConvTests: XCTestCase {
    typealias Case = FastConvTests.Case

    static let cases: [Case] = [
        Case(geometry: ConvGeometry(inChannels: 13, outChannels: 3, kernel: 3, padding: 1), batch: 2, height: 5, width: 70, name: "13->3 5x70"),
        Case(geometry: ConvGeometry(inChannels: 4, outChannels: 1, kernel: 3, padding: 1), batch: 1, height: 3, width: 1, name: "4->1 3x1"),
        Case(geometry: ConvGeometry(inChannels: 7, outChannels: 4, kernel: 3, padding: 1), batch: 2, height: 1, width: 17, name: "7->4 1x17"),
        Case(geometry: ConvGeometry(inChannels: 64, outChannels: 3, kernel: 3, padding: 1), batch: 1, height: 9, width: 130, name: "64->3 9x130 (TAESD conv_out)"),
        Case(geometry: ConvGeometry(inChannels: 5, outChannels: 2, kernel: 3, padding: 1), batch: 3, height: 6, width: 64, name: "5->2 6x64"),
    ]

    func testSameBitsAsTheScalarLevelAndTheTileDriver() throws {
        try XCTSkipUnless(KernelLevel.avx512.isSupported, "no AVX-512 on this CPU: the ring kernel is not used")
        defer { FastConv.useFewOutputConvKernel(true) }
        for (ci, c) in Self.cases.enumerated() {
            let layer = FastConvTests.layer(c.geometry, seed: UInt64(ci + 700))
            var r = FastConvTests.Rand(state: UInt64(7100 + ci))
            let x = r.values(c.geometry.inChannels * c.batch * c.height * c.width)
            let residual = r.values(FastConvTests.outputCount(c, batch: c.batch))
            for res in [nil, residual] {
                let name = "\(c.name) residual \(res != nil)"
                let scalar = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: res, int8: false, level: .scalar)
                let ref = FastConvTests.reference(c, layer, x: x, batch: c.batch, residual: res)
                XCTAssertLessThanOrEqual(TensorError.relativeL2(scalar, ref), FastConvTests.fp32RelativeL2, "\(name) scalar vs reference")
                for threads in [1, 2, 3] {
                    FastConv.useFewOutputConvKernel(true)
                    let ring = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: res, int8: false, level: .avx512, threads: threads)
                    FastConv.useFewOutputConvKernel(false)
                    let tiles = FastConvTests.run(c, layer, x: x, batch: c.batch, residual: res, int8: false, level: .avx512, threads: threads)
                    assertSameBits(ring, scalar, "\(name) threads \(threads): ring kernel vs scalar level")
                    assertSameBits(ring, tiles, "\(name) threads \(threads): ring kernel vs tile driver")
                }
            }
        }
    }
}

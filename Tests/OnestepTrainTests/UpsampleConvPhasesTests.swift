// UpsampleConvPhases (upsample 2x + 3x3 conv as four 2x2 convs of the low-res input) against the plain
// composition on the reference kernels: ReferenceConvGrad on the materialised upsampled input, and
// ResampleGrad's adjoint of the upsampling for dX.
import XCTest
@testable import OnestepTrain
import OnestepCore

final class UpsampleConvPhasesTests: XCTestCase {
    /// Forward: each output sums the same 9*Cin products, grouped into 4*Cin partial sums of the phase weights.
    static let forwardRelativeL2 = 1e-6
    /// dW, db, dX: sums over N*H*W (dW) or 4*Cout (dX) products in another grouping.
    static let gradientRelativeL2 = 1e-5

    func compare(cin: Int, cout: Int, batch n: Int, height h: Int, width w: Int, _ what: String) {
        let g = ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1)
        let store = ParameterStore()
        let conv = TrainableConv2D("conv", store, geometry: g)
        store.seal(seed: 17)
        let phases = UpsampleConvPhases(conv, store)
        let h2 = 2 * h, w2 = 2 * w, inCount = n * cin * h * w, outCount = n * cout * h2 * w2
        let x = GradientCheck.random(inCount, seed: 18), dy = GradientCheck.random(outCount, seed: 19)
        store.zeroGrads()
        let (y, dx): ([Float], [Float]) = x.withUnsafeBufferPointer { xp in
            let y = Array(UnsafeBufferPointer(start: phases.forward(xp.baseAddress!, batch: n, height: h, width: w), count: outCount))
            let dx = dy.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: phases.backward($0.baseAddress!), count: inCount)) }
            return (y, dx)
        }
        let dw = Array(UnsafeBufferPointer(start: store.grad(conv.weight), count: cout * g.reduction))
        let db = Array(UnsafeBufferPointer(start: store.grad(conv.bias!), count: cout))

        var up = [Float](repeating: 0, count: n * cin * h2 * w2)
        Resample.upsampleNearest2x(x, planes: n * cin, height: h, width: w, y: &up)
        var yRef = [Float](repeating: 0, count: outCount), dupRef = up, dxRef = x
        var dwRef = [Float](repeating: 0, count: cout * g.reduction), dbRef = [Float](repeating: 0, count: cout)
        let scratch = ReferenceConvGrad.scratchCount(height: h2, width: w2, geometry: g)
        var col = [Float](repeating: 0, count: scratch), dcol = col
        ReferenceConvGrad.forward(x: up, batch: n, height: h2, width: w2, weight: store.value(conv.weight),
                                  bias: UnsafePointer(store.value(conv.bias!)), geometry: g, y: &yRef, scratch: &col)
        dbRef.withUnsafeMutableBufferPointer { dbp in
            ReferenceConvGrad.backward(x: up, dy: dy, batch: n, height: h2, width: w2, weight: store.value(conv.weight), geometry: g,
                                       dw: &dwRef, db: dbp.baseAddress!, dx: &dupRef, col: &col, dcol: &dcol)
        }
        ResampleGrad.upsampleNearest2xBackward(dupRef, planes: n * cin, height: h, width: w, dx: &dxRef)
        XCTAssertLessThanOrEqual(TensorError.relativeL2(y, yRef), Self.forwardRelativeL2, "\(what): forward")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dx, dxRef), Self.gradientRelativeL2, "\(what): dX")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(dw, dwRef), Self.gradientRelativeL2, "\(what): dW")
        XCTAssertLessThanOrEqual(TensorError.relativeL2(db, dbRef), Self.gradientRelativeL2, "\(what): db")
        XCTAssertGreaterThan(dxRef.map { abs($0) }.max() ?? 0, 0, what)
    }

    func testPhasesMatchUpsampleThenConv() {
        compare(cin: 5, cout: 7, batch: 2, height: 3, width: 4, "odd channels, 3x4 -> 6x8")
        compare(cin: 64, cout: 64, batch: 3, height: 4, width: 4, "default model's first upsampler (4x4 -> 8x8)")
        compare(cin: 16, cout: 40, batch: 2, height: 8, width: 8, "8x8 -> 16x16, 40 output channels")
    }

    /// Phase (a, b)'s tap sets cover each of the 3x3 taps exactly once per parity.
    func testTapSetsPartitionTheKernel() {
        for a in 0..<2 {
            let rows = (0..<2).flatMap { Array(UpsampleConvPhases.taps(parity: a, tap: $0)) }
            XCTAssertEqual(rows, [0, 1, 2], "parity \(a)")
        }
    }
}

import Foundation
import XCTest
@testable import OnestepCore

/// LatentKernels against the naive double-precision LatentReference, with named tolerances.
final class LatentKernelsTests: XCTestCase {
    /// float32 kernels vs double references: a few ulps of the largest value per output.
    static let relativeTolerance = 1e-6

    func random(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var r = TestRandom(seed)
        return (0..<n).map { _ in r.float() * scale }
    }

    func testLayerNormChannels() {
        let c = 40, cols = 37
        let x = random(c * cols, seed: 1, scale: 3).map { $0 + 0.7 }, gamma = random(c, seed: 2), beta = random(c, seed: 3)
        var y = [Float](repeating: 0, count: c * cols), scratch = [Float](repeating: 0, count: 4 * cols)
        LatentKernels.layerNormChannels(x, channels: c, columns: cols, gamma: gamma, beta: beta, eps: 1e-5, y: &y, scratch: &scratch)
        let ref = LatentReference.layerNormChannels(x, channels: c, columns: cols, gamma: gamma, beta: beta, eps: 1e-5)
        XCTAssertLessThanOrEqual(TensorError.relativeL2(y, ref), Self.relativeTolerance)
    }

    func testGEGLU() {
        let inner = 24, cols = 19
        let proj = random(2 * inner * cols, seed: 4, scale: 4)
        var y = [Float](repeating: 0, count: inner * cols)
        LatentKernels.geglu(proj, inner: inner, columns: cols, out: &y)
        XCTAssertLessThanOrEqual(TensorError.relativeL2(y, LatentReference.geglu(proj, inner: inner, columns: cols)), Self.relativeTolerance)
    }

    /// One head of one image inside strided channel-major buffers (image 1 of 2, head 1 of 2), Lq != Lk.
    func testCrossAttentionHead() {
        let d = 8, heads = 2, n = 2, lq = 30, lk = 11, c = d * heads
        let q = random(c * n * lq, seed: 5), k = random(c * n * lk, seed: 6), v = random(c * n * lk, seed: 7)
        var out = [Float](repeating: 0, count: c * n * lq), scratch = [Float](repeating: 0, count: lq * lk)
        let qo = 1 * d * n * lq + 1 * lq, ko = 1 * d * n * lk + 1 * lk
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in
                LatentKernels.crossAttentionHead(q: qp.baseAddress! + qo, ldq: n * lq, k: kp.baseAddress! + ko, v: vp.baseAddress! + ko,
                                                 ldk: n * lk, queries: lq, keys: lk, headDim: d, scale: 1 / Float(d).squareRoot(),
                                                 out: op.baseAddress! + qo, scratch: &scratch)
            }
        } } }
        func slice(_ a: [Float], _ off: Int, _ l: Int, _ ld: Int) -> [Float] { (0..<d).flatMap { Array(a[(off + $0 * ld)..<(off + $0 * ld + l)]) } }
        let ref = LatentReference.attentionHead(q: slice(q, qo, lq, n * lq), k: slice(k, ko, lk, n * lk), v: slice(v, ko, lk, n * lk),
                                                headDim: d, queries: lq, keys: lk)
        XCTAssertLessThanOrEqual(TensorError.relativeL2(slice(out, qo, lq, n * lq), ref), Self.relativeTolerance)
        XCTAssertTrue(out[0..<lq].allSatisfy { $0 == 0 }, "other heads' rows untouched")
    }

    /// Nearest resizing to the sizes the UNet's upsample_size produces (and 2x, and shrinking): exact.
    func testResizeNearest() {
        for (h, w, ho, wo) in [(3, 3, 5, 5), (5, 6, 9, 11), (4, 4, 8, 8), (7, 5, 3, 2), (2, 3, 7, 13)] {
            let x = random(2 * h * w, seed: UInt64(h * 100 + w))
            var y = [Float](repeating: 0, count: 2 * ho * wo)
            LatentKernels.resizeNearest(x, planes: 2, height: h, width: w, toHeight: ho, width: wo, y: &y)
            XCTAssertEqual(y, LatentReference.resizeNearest(x, planes: 2, height: h, width: w, toHeight: ho, width: wo), "\(h)x\(w) -> \(ho)x\(wo)")
        }
    }
}

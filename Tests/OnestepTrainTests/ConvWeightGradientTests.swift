// TrainKernels.weightGradient (onestep_conv_grad.c) at every kernel level against a naive reference: the definition
// dW[co, ci, ky, kx] = sum over (i, oy, ox) of dY[co, i, oy, ox] * x[ci, i, oy*s - padTop + ky, ox*s - padLeft + kx]
// as plain loops with a Double accumulator, db[co] = sum of dY[co, ...]. The levels must also agree bit for bit
// (each entry is the same fmaf chain in the same order at every level).
import XCTest
@testable import OnestepTrain
import OnestepCore

final class ConvWeightGradientTests: XCTestCase {
    /// fp32 FMA chains over up to N*Ho*Wo = 2048 products against a Double sum of the same products.
    static let weightGradientRelativeL2 = 1e-6
    /// db is a plain float sum of N*Ho*Wo values of both signs (one chain, as the previous Swift loop): with only
    /// 3 channels (conv_out) one cancelling sum decides the relative error.
    static let biasGradientRelativeL2 = 1e-5

    /// The naive reference on channel-major x (Cin, N, H, W) and dy (Cout, N, Ho, Wo).
    static func naive(x: [Float], dy: [Float], geometry g: ConvGeometry, batch n: Int, height h: Int, width w: Int,
                      dw: inout [Float], db: inout [Float]) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        for co in 0..<g.outChannels {
            var sb = 0.0
            for i in 0..<n { for oy in 0..<ho { for ox in 0..<wo { sb += Double(dy[((co * n + i) * ho + oy) * wo + ox]) } } }
            db[co] += Float(sb)
            for ci in 0..<g.inChannels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
                var s = 0.0
                for i in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
                    let iy = oy * g.stride - g.padTop + ky, ix = ox * g.stride - g.padLeft + kx
                    guard iy >= 0 && iy < h && ix >= 0 && ix < w else { continue }
                    s += Double(dy[((co * n + i) * ho + oy) * wo + ox]) * Double(x[((ci * n + i) * h + iy) * w + ix])
                } } }
                dw[((co * g.inChannels + ci) * g.kernelH + ky) * g.kernelW + kx] += Float(s)
            } } }
        }
    }

    func check(_ g: ConvGeometry, batch n: Int, height h: Int, width w: Int, _ what: String) {
        let ho = g.outputHeight(h), wo = g.outputWidth(w)
        let x = GradientCheck.random(g.inChannels * n * h * w, seed: 21)
        let dy = GradientCheck.random(g.outChannels * n * ho * wo, seed: 22)
        // Non-zero starting values: the kernel accumulates (dW += ..., db += ...).
        let dw0 = GradientCheck.random(g.outChannels * g.reduction, seed: 23, scale: 0.1)
        let db0 = GradientCheck.random(g.outChannels, seed: 24, scale: 0.1)
        var dwRef = dw0, dbRef = db0
        Self.naive(x: x, dy: dy, geometry: g, batch: n, height: h, width: w, dw: &dwRef, db: &dbRef)
        var byLevel: [(KernelLevel, [Float], [Float])] = []
        for level in KernelLevel.allCases where level.isSupported {
            var dw = dw0, db = db0
            var scratch = [Float](repeating: .nan, count: TrainKernels.weightGradientScratch(g, batch: n, height: h, width: w))
            TrainKernels.weightGradient(x: x, dy: dy, geometry: g, batch: n, height: h, width: w, dw: &dw, db: &db, scratch: &scratch,
                                    level: level)
            XCTAssertLessThanOrEqual(TensorError.relativeL2(dw, dwRef), Self.weightGradientRelativeL2, "\(what), \(level): dW")
            XCTAssertLessThanOrEqual(TensorError.relativeL2(db, dbRef), Self.biasGradientRelativeL2, "\(what), \(level): db")
            byLevel.append((level, dw, db))
        }
        XCTAssertGreaterThan(byLevel.count, 1, "at least scalar and one vector level run on this machine")
        for (level, dw, db) in byLevel.dropFirst() {
            XCTAssertEqual(dw, byLevel[0].1, "\(what): dW of \(level) differs from \(byLevel[0].0) in some bit")
            XCTAssertEqual(db, byLevel[0].2, "\(what): db of \(level) differs from \(byLevel[0].0) in some bit")
        }
        // Not vacuous: the gradient moved away from its starting value.
        XCTAssertGreaterThan(TensorError.relativeL2(dwRef, dw0), 0.5, what)
    }

    func testEveryLevelMatchesTheNaiveReference() {
        check(ConvGeometry(inChannels: 5, outChannels: 11, kernel: 3, padding: 1), batch: 3, height: 7, width: 6, "3x3 pad 1, 11 channels")
        check(ConvGeometry(inChannels: 8, outChannels: 40, kernel: 3, padding: 1), batch: 2, height: 16, width: 16,
              "3x3 pad 1, 40 channels (a full and a partial 32-channel tile), several column chunks")
        check(ConvGeometry(inChannels: 6, outChannels: 17, kernel: 3, stride: 2, padding: 1), batch: 2, height: 8, width: 8,
              "3x3 stride 2 pad 1 (Downsample2D)")
        check(ConvGeometry(inChannels: 4, outChannels: 5, kernel: 3, stride: 2, padding: 1), batch: 2, height: 7, width: 5,
              "3x3 stride 2 pad 1, odd size")
        check(ConvGeometry(inChannels: 3, outChannels: 4, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1,
                           padRight: 1), batch: 2, height: 6, width: 6, "3x3 stride 2 pad (0, 1, 0, 1)")
        check(ConvGeometry(inChannels: 12, outChannels: 64, kernel: 1, padding: 0), batch: 3, height: 4, width: 5, "1x1, 64 channels")
        check(ConvGeometry(inChannels: 3, outChannels: 32, kernel: 3, padding: 1), batch: 2, height: 16, width: 16, "conv_in (K = 27)")
        check(ConvGeometry(inChannels: 32, outChannels: 3, kernel: 3, padding: 1), batch: 2, height: 16, width: 16, "conv_out (3 channels)")
    }

    /// Without db (a conv with no bias) the same dW.
    func testWithoutBiasGradient() {
        let g = ConvGeometry(inChannels: 4, outChannels: 9, kernel: 3, padding: 1), n = 2, h = 5, w = 6
        let x = GradientCheck.random(g.inChannels * n * h * w, seed: 31), dy = GradientCheck.random(g.outChannels * n * h * w, seed: 32)
        var a = [Float](repeating: 0, count: g.outChannels * g.reduction), b = a, db = [Float](repeating: 0, count: g.outChannels)
        var scratch = [Float](repeating: 0, count: TrainKernels.weightGradientScratch(g, batch: n, height: h, width: w))
        TrainKernels.weightGradient(x: x, dy: dy, geometry: g, batch: n, height: h, width: w, dw: &a, db: &db, scratch: &scratch)
        TrainKernels.weightGradient(x: x, dy: dy, geometry: g, batch: n, height: h, width: w, dw: &b, db: nil, scratch: &scratch)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(db, [Float](repeating: 0, count: g.outChannels))
    }
}

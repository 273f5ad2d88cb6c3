import Foundation
import XCTest
@testable import OnestepCore

/// ChannelMajor.groupNormQuantized (GroupNorm + SiLU straight to int8 codes, onestep_norm_q8.c) against its naive
/// reference, the two passes it replaces: ChannelMajor.groupNorm writing fp32, then the quantizer's exact range
/// (min / max with 0) and osk_q8_encode (written out in `encode`).
final class GroupNormInt8Tests: XCTestCase {
    /// Otherwise the bound is an endpoint value, computed as the element itself is: equal up to the last bits.
    static let boundTolerance: Float = 1e-6

    struct Setup { var channels: Int, groups: Int, batch: Int, height: Int, width: Int, silu: Bool, conditioning: Int }

    /// The image's range against the exact min / max of the fp32 output, relative: the same values, found by a
    /// different route (SiLU's non-monotone last bits near its minimum could move it by an ulp).
    static let rangeTolerance: Float = 1e-6

    /// Odd sizes: channels not a multiple of 4 (padding quads), positions not a multiple of 16 (masks), 1x1 maps.
    static let setups = [
        Setup(channels: 30, groups: 6, batch: 3, height: 5, width: 7, silu: true, conditioning: 2),
        Setup(channels: 32, groups: 8, batch: 2, height: 8, width: 8, silu: true, conditioning: 1),
        Setup(channels: 24, groups: 4, batch: 2, height: 6, width: 6, silu: false, conditioning: 0),
        Setup(channels: 18, groups: 3, batch: 1, height: 1, width: 1, silu: true, conditioning: 0),
        Setup(channels: 64, groups: 16, batch: 2, height: 17, width: 9, silu: true, conditioning: 2),
    ]

    func layer(_ s: Setup, seed: UInt64) throws -> GroupNormLayer {
        var l = try GroupNormLayer("gn", RandomWeights(), channels: s.channels, groups: s.groups, eps: 1e-5)
        var r = FastConvTests.Rand(state: seed)
        l.gamma.data = r.values(s.channels, scale: 0.6).map { $0 + 1 }
        l.beta.data = r.values(s.channels, scale: 0.8)   // some channels centred below SiLU's minimum, some above
        return l
    }

    /// Codes [C4][N*HW] and per-image (scale, zero point) of the reference: the fp32 GroupNorm then the quantizer.
    static func reference(_ x: Activation, _ l: GroupNormLayer, silu: Bool, pre: [Float]?, ss: [Float]?, pool: BufferPool)
        -> (h: [Float], lo: [Float], hi: [Float]) {
        let h = Activation(pool: pool, channels: x.channels, batch: x.batch, height: x.height, width: x.width)
        defer { h.release(to: pool) }
        pre.withOptionalPointer { p in ss.withOptionalPointer { s in
            ChannelMajor.groupNorm(x, l, silu: silu, preShift: p, scaleShift: s, into: h.data)
        } }
        let values = Array(UnsafeBufferPointer(start: h.data, count: h.count))
        var lo = [Float](repeating: 0, count: x.batch), hi = lo
        for ch in 0..<x.channels { for i in 0..<x.batch { for j in 0..<x.pixels {
            let v = values[(ch * x.batch + i) * x.pixels + j]
            lo[i] = min(lo[i], v)
            hi[i] = max(hi[i], v)
        } } }
        return (values, lo, hi)
    }

    /// The reference encoder (osk_q8_encode's rule, written out): code = clamp(round-half-even(v / s) + zp, 0, 255),
    /// 4 channels per word, channels past C at the zero point; codes [C4][N*HW].
    static func encode(_ h: [Float], channels c: Int, batch n: Int, pixels hw: Int, scales: [Float], zeroPoints: [Int32]) -> [UInt32] {
        let c4 = (c + 3) / 4
        var out = [UInt32](repeating: 0, count: c4 * n * hw)
        for q in 0..<c4 { for i in 0..<n {
            let inv = 1 / scales[i], zp = Int(zeroPoints[i])
            for j in 0..<hw {
                var word: UInt32 = 0
                for b in 0..<4 {
                    let ch = 4 * q + b
                    let code = ch < c ? min(255, max(0, Int((h[(ch * n + i) * hw + j] * inv).rounded(.toNearestOrEven)) + zp)) : zp
                    word |= UInt32(code) << (8 * b)
                }
                out[(q * n + i) * hw + j] = word
            }
        } }
        return out
    }

    /// Codes: exactly the reference encoder's on the fp32 GroupNorm output with the same (scale, zero point), at every
    /// level, on 1-3 threads, and for each image alone. Params: the quantizer's own from the exact range. The input
    /// range it also reports (for the shortcut's quantizer): x's exact min / max with 0.
    func testCodesAreTheSeparatePassesCodesAtEveryLevelBatchAndTeam() throws {
        let pool = BufferPool()
        let teams: [Int: ThreadTeam?] = [1: nil, 2: ThreadTeam(threads: 2), 3: ThreadTeam(threads: 3)]
        for (si, s) in Self.setups.enumerated() {
            let l = try layer(s, seed: UInt64(10 + si))
            var r = FastConvTests.Rand(state: UInt64(70 + si))
            let hw = s.height * s.width
            let xv = r.values(s.channels * s.batch * hw, scale: 1.5)
            let x = FastConvTests.activation(xv, channels: s.channels, batch: s.batch, height: s.height, width: s.width, pool: pool)
            let pre: [Float]? = s.conditioning == 1 ? r.values(s.batch * s.channels) : nil
            let ss: [Float]? = s.conditioning == 2 ? r.values(2 * s.batch * s.channels, scale: 0.5) : nil
            let ref = Self.reference(x, l, silu: s.silu, pre: pre, ss: ss, pool: pool)
            var first: [UInt32]?
            for level in FastConvTests.levels {
                for threads in [1, 2, 3] {
                    pool.team = teams[threads]!
                    var inputRange = [Float](repeating: .nan, count: 2 * s.batch)
                    let q = pre.withOptionalPointer { p in ss.withOptionalPointer { sp in
                        ChannelMajor.groupNormQuantized(x, l, silu: s.silu, preShift: p, scaleShift: sp, inputRange: &inputRange,
                                                        pool: pool, level: level)
                    } }
                    pool.team = nil
                    for i in 0..<s.batch {   // x's own range, as the quantizer's range pass finds it (with 0)
                        let xi = ChannelMajorTestData.image(xv, channels: s.channels, batch: s.batch, pixels: hw, i)
                        XCTAssertEqual(inputRange[2 * i], min(0, xi.min()!), "\(si) \(level) \(threads): x's low end, image \(i)")
                        XCTAssertEqual(inputRange[2 * i + 1], max(0, xi.max()!), "\(si) \(level) \(threads): x's high end, image \(i)")
                    }
                    let name = "setup \(si) \(level) \(threads) threads"
                    let codes = Array(UnsafeBufferPointer(start: q.codes, count: q.wordCount))
                    let scales = (0..<s.batch).map { q.scales[$0] }, zps = (0..<s.batch).map { q.zeroPoints[$0] }
                    if let first { XCTAssertEqual(codes, first, name) } else { first = codes }
                    XCTAssertEqual(codes, Self.encode(ref.h, channels: s.channels, batch: s.batch, pixels: hw, scales: scales, zeroPoints: zps), name)
                    for i in 0..<s.batch {   // the quantizer's own params from the exact range
                        let (es, ez) = FastConv.quantizationParams(lo: ref.lo[i], hi: ref.hi[i])
                        XCTAssertEqual(scales[i], es, accuracy: es * Self.rangeTolerance, name)
                        XCTAssertEqual(zps[i], ez, name)
                    }
                    q.release(to: pool)
                }
            }
            // Batch invariance: each image alone gets the codes it got in the batch.
            if s.batch > 1, let first {
                let c4 = (s.channels + 3) / 4
                for i in 0..<s.batch {
                    let xi = FastConvTests.activation(ChannelMajorTestData.image(xv, channels: s.channels, batch: s.batch, pixels: hw, i),
                                                      channels: s.channels, batch: 1, height: s.height, width: s.width, pool: pool)
                    let preI = pre.map { Array($0[(i * s.channels)..<((i + 1) * s.channels)]) }
                    let ssI = ss.map { Array($0[(2 * i * s.channels)..<(2 * (i + 1) * s.channels)]) }
                    let q = preI.withOptionalPointer { p in ssI.withOptionalPointer { sp in
                        ChannelMajor.groupNormQuantized(xi, l, silu: s.silu, preShift: p, scaleShift: sp, pool: pool)
                    } }
                    for quad in 0..<c4 {
                        let alone = Array(UnsafeBufferPointer(start: q.codes + quad * hw, count: hw))
                        XCTAssertEqual(alone, Array(first[((quad * s.batch + i) * hw)..<((quad * s.batch + i + 1) * hw)]), "setup \(si) image \(i) alone")
                    }
                    q.release(to: pool)
                    xi.release(to: pool)
                }
            }
            x.release(to: pool)
        }
    }

    /// The bound of f(x * a + b) over a channel's [min, max] (osk_affine_bounds), and for SiLU the range of
    /// osk_silu_range, against the exact min / max of the values over that channel (f = SiLU or identity; a of both
    /// signs; channels whose pre-activations straddle SiLU's minimum, where the bound is that minimum but the range
    /// is exact).
    func testAffineBoundsHoldEveryValue() {
        var r = FastConvTests.Rand(state: 5)
        var straddled = 0
        for t in 0..<400 {
            let x = r.values(1 + t % 50, scale: 2)
            let a = r.gaussian() * 1.5, b = r.gaussian(), silu = t % 3 != 0
            let values = x.map { v -> Float in
                if silu { let z = v * a + b; return Float(Double(z) / (1 + Foundation.exp(-Double(z)))) }
                return v * a + b
            }
            var lo: Float = 0, hi: Float = 0
            FastConv.foldAffineBounds(FastConv.planeRange(x, count: x.count), a: a, b: b, silu: silu, into: &lo, &hi)
            let exactLo = min(0, values.min()!), exactHi = max(0, values.max()!)
            let tol = Self.boundTolerance + 1e-5 * max(abs(exactLo), abs(exactHi))   // the polynomial e^x vs Foundation's
            XCTAssertEqual(hi, exactHi, accuracy: tol, "case \(t)")
            XCTAssertLessThanOrEqual(lo, exactLo + tol, "case \(t)")
            let z = x.map { fmaf($0, a, b) }
            if silu {   // the exact range (osk_silu_range), every level
                for level in FastConvTests.levels {
                    var slo: Float = 0, shi: Float = 0
                    FastConv.foldSiLURange(x, count: x.count, a: a, b: b, into: &slo, &shi, level: level)
                    XCTAssertEqual(slo, exactLo, accuracy: tol, "case \(t) \(level)")
                    XCTAssertEqual(shi, exactHi, accuracy: tol, "case \(t) \(level)")
                }
            }
            if silu && z.min()! < -1.2784645 && z.max()! > -1.2784645 {
                // SiLU's minimum, rounded down: below every value, however few values come near it.
                XCTAssertEqual(lo, -0.27847, "case \(t)")
                straddled += 1
            } else {
                XCTAssertEqual(lo, exactLo, accuracy: tol, "case \(t): an endpoint bound")
            }
        }
        XCTAssertGreaterThan(straddled, 20, "the SiLU-minimum case was not exercised")
    }
}

/// Image i of a channel-major (C, N, HW) array, as a (C, 1, HW) array.
enum ChannelMajorTestData {
    static func image(_ x: [Float], channels c: Int, batch n: Int, pixels hw: Int, _ i: Int) -> [Float] {
        var out = [Float]()
        for ch in 0..<c {
            let start = (ch * n + i) * hw
            out += x[start..<(start + hw)]
        }
        return out
    }
}

/// The pixel UNet's fused int8 forward (UNet2DModel+Int8Forward.swift: GroupNorm straight to codes, fused q/k/v,
/// biases and residuals in the conv epilogue) on cd_tiny (scale-shift resnets, up / down resnets, attention with
/// and without a norm): the same bytes on 1-3 threads and for each image alone as in a batch. Tolerance: none.
final class Int8FusedForwardTests: XCTestCase {
    func testSameBytesOnAnyTeamAndAloneAsInABatch() throws {
        let loaded = try ImagePipeline.load(path: try Fixtures.goldenCase("cd_tiny"), precision: .fp32)
        var model = loaded.model
        model.int8Policy = .innerConvolutionsAndAttentionBF16Heads
        model.packForServing(.int8)
        let fused = model.downBlocks.flatMap(\.attentions).filter { $0.packedQKV8 != nil }.count
        XCTAssertGreaterThan(fused, 0, "no attention block runs the fused q/k/v")
        XCTAssertTrue(model.downBlocks.flatMap(\.resnets).allSatisfy(\.runsInt8Fused), "a resnet is not on the fused int8 path")
        let n = 3, s = model.config.sampleSize, c = model.config.inChannels
        var r = FastConvTests.Rand(state: 31)
        let x = Tensor(shape: [n, c, s, s], data: r.values(n * c * s * s))
        let t: [Float] = [10, 400, 999], labels = [1, 5, 9]
        var batched: [Float]?
        for threads in [1, 2, 3] {
            let pool = BufferPool()
            pool.team = threads > 1 ? ThreadTeam(threads: threads) : nil
            let y = model.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool).data
            if let batched { assertSameBits(y, batched, "\(threads) threads") } else { batched = y }
        }
        let per = c * s * s
        for i in 0..<n {
            let xi = Tensor(shape: [1, c, s, s], data: Array(x.data[(i * per)..<((i + 1) * per)]))
            let yi = model.forwardBatched(xi, timesteps: [t[i]], classLabels: [labels[i]], pool: BufferPool()).data
            assertSameBits(yi, Array(batched![(i * yi.count)..<((i + 1) * yi.count)]), "image \(i) alone")
        }
    }
}

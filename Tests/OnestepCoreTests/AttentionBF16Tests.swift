import Foundation
import XCTest
@testable import OnestepCore

/// The bf16 attention head (onestep_attention.c through FastAttention) against the naive references of
/// AttentionReference, on odd shapes; its fallback; the policies that choose it; and, on real models, that it
/// keeps batch and thread invariance and stays close to the fp32 images.
final class AttentionBF16Tests: XCTestCase {
    /// Relative L2 against AttentionReference with the kernel's bf16 roundings done in double: what is left is fp32
    /// summation order and the polynomial exp (measured 1.1e-6 worst over the shapes below, on Zen 5).
    static let vsBF16Reference = 1e-5
    /// Relative L2 against exact attention (no rounding): bf16 keeps 8 significant bits (measured ~3.4e-3 on
    /// these inputs, whose scores span about +-10 so the softmax is peaked, as in trained models).
    static let vsExact = 8e-3

    /// (queries, keys, head dim): token counts not multiples of the 8-row block or the 32-key tile, head dims
    /// 8 / 40 / 64 / 80 (and odd, and the VAE's 512), self- and cross-attention shapes.
    static let shapes: [(lq: Int, lk: Int, d: Int)] = [
        (1, 1, 8), (7, 7, 8), (100, 100, 8), (33, 33, 64), (64, 64, 64), (257, 257, 64), (77, 77, 80), (13, 5, 80),
        (9, 200, 40), (40, 77, 40), (31, 31, 3), (17, 17, 160), (20, 20, 512),
    ]

    private func requireBF16() throws {
        guard FastAttention.resolved(.bf16) == .bf16 else {
            throw XCTSkip("no AVX512-BF16 (vdpbf16ps) at kernel level \(KernelLevel.best) on this CPU: bf16 heads run the fp32 head here (testFallbackIsTheFP32Head covers that)")
        }
    }

    /// Runs one bf16 head on slices at row strides ldq / ldk inside larger buffers; returns the dense output and
    /// whether anything outside the head's slice of `out` changed.
    private func run(_ q: [Float], _ k: [Float], _ v: [Float], lq: Int, lk: Int, d: Int, ldq: Int, ldk: Int,
                     offsetQ: Int, offsetK: Int) -> (out: [Float], touchedOutside: Bool) {
        let sentinel: Float = -7.25
        var out = [Float](repeating: sentinel, count: d * ldq + offsetQ)
        var scratch = [Float](repeating: .nan, count: FastAttention.bf16ScratchCount(queries: lq, keys: lk, headDim: d))
        let scale = Float(1 / Double(d).squareRoot())
        // the dense inputs placed in strided slices
        var qs = [Float](repeating: 9, count: d * ldq + offsetQ), ks = [Float](repeating: 9, count: d * ldk + offsetK)
        var vs = ks
        for c in 0..<d {
            for i in 0..<lq { qs[offsetQ + c * ldq + i] = q[c * lq + i] }
            for j in 0..<lk { ks[offsetK + c * ldk + j] = k[c * lk + j]; vs[offsetK + c * ldk + j] = v[c * lk + j] }
        }
        let ran = qs.withUnsafeBufferPointer { qp in ks.withUnsafeBufferPointer { kp in vs.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in scratch.withUnsafeMutableBufferPointer { sp in
                FastAttention.crossHeadBF16(q: qp.baseAddress! + offsetQ, ldq: ldq, queries: lq, k: kp.baseAddress! + offsetK,
                                            v: vp.baseAddress! + offsetK, ldk: ldk, keys: lk, headDim: d, scale: scale,
                                            out: op.baseAddress! + offsetQ, scratch: sp.baseAddress!)
            } }
        } } }
        XCTAssertTrue(ran)
        var dense = [Float](repeating: 0, count: d * lq), outside = false
        for (idx, value) in out.enumerated() {
            let rel = idx - offsetQ, c = rel >= 0 ? rel / ldq : -1, i = rel >= 0 ? rel % ldq : -1
            if c >= 0 && c < d && i < lq { dense[c * lq + i] = value } else if value.bitPattern != sentinel.bitPattern { outside = true }
        }
        return (dense, outside)
    }

    func testBF16HeadMatchesNaiveReferencesOnOddShapes() throws {
        try requireBF16()
        var r = TestRandom(21)
        var worstRounded = 0.0, worstExact = 0.0
        for (lq, lk, d) in Self.shapes {
            // q, k in [-2, 2): scores up to ~+-10 after the 1/sqrt(d) scale; v in [-1, 1).
            let q = r.floats(d * lq).map { $0 * 2 }, k = r.floats(d * lk).map { $0 * 2 }, v = r.floats(d * lk)
            let scale = Float(1 / Double(d).squareRoot())
            let got = run(q, k, v, lq: lq, lk: lk, d: d, ldq: lq + 5, ldk: lk + 3, offsetQ: 2, offsetK: 1)
            XCTAssertFalse(got.touchedOutside, "lq \(lq) lk \(lk) d \(d): wrote outside the head's slice")
            let rounded = AttentionReference.head(q: q, k: k, v: v, headDim: d, queries: lq, keys: lk, scale: scale, bf16Rounding: true)
            let exact = AttentionReference.head(q: q, k: k, v: v, headDim: d, queries: lq, keys: lk, scale: scale, bf16Rounding: false)
            let eRounded = TensorError.relativeL2(got.out, rounded), eExact = TensorError.relativeL2(got.out, exact)
            XCTAssertLessThan(eRounded, Self.vsBF16Reference, "lq \(lq) lk \(lk) d \(d) vs the bf16-rounded reference")
            XCTAssertLessThan(eExact, Self.vsExact, "lq \(lq) lk \(lk) d \(d) vs exact attention")
            worstRounded = max(worstRounded, eRounded)
            worstExact = max(worstExact, eExact)
        }
        print(String(format: "bf16 attention head, %d shapes: worst relative L2 %.2e vs the bf16-rounded reference, %.2e vs exact",
                     Self.shapes.count, worstRounded, worstExact))
    }

    /// A head's bytes do not depend on its row stride or where its slice sits (its image's place in a batch).
    func testBF16HeadBytesDoNotDependOnStrideOrPosition() throws {
        try requireBF16()
        var r = TestRandom(22)
        for (lq, lk, d) in [(33, 33, 64), (77, 77, 40), (9, 50, 80)] {
            let q = r.floats(d * lq), k = r.floats(d * lk), v = r.floats(d * lk)
            let a = run(q, k, v, lq: lq, lk: lk, d: d, ldq: lq, ldk: lk, offsetQ: 0, offsetK: 0).out
            let b = run(q, k, v, lq: lq, lk: lk, d: d, ldq: 3 * lq + 1, ldk: 4 * lk + 7, offsetQ: lq, offsetK: 2 * lk).out
            XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "lq \(lq) lk \(lk) d \(d)")
        }
    }

    /// A head cut into query chunks at multiples of the 8-query block (how LatentRunner spreads few heads over
    /// threads) gives the bytes of the whole head.
    func testBF16HeadInQueryChunksGivesTheWholeHeadsBytes() throws {
        try requireBF16()
        var r = TestRandom(24)
        for (l, d, cuts) in [(200, 64, [0, 96, 200]), (131, 40, [0, 8, 64, 131]), (77, 80, [0, 72, 77])] {
            let q = r.floats(d * l), k = r.floats(d * l), v = r.floats(d * l)
            let whole = run(q, k, v, lq: l, lk: l, d: d, ldq: l, ldk: l, offsetQ: 0, offsetK: 0).out
            var chunked = [Float](repeating: 0, count: d * l)
            var scratch = [Float](repeating: 0, count: FastAttention.bf16ScratchCount(queries: l, keys: l, headDim: d))
            for (q0, q1) in zip(cuts, cuts.dropFirst()) {
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                    chunked.withUnsafeMutableBufferPointer { op in scratch.withUnsafeMutableBufferPointer { sp in
                        _ = FastAttention.crossHeadBF16(q: qp.baseAddress! + q0, ldq: l, queries: q1 - q0, k: kp.baseAddress!,
                                                        v: vp.baseAddress!, ldk: l, keys: l, headDim: d,
                                                        scale: Float(1 / Double(d).squareRoot()),
                                                        out: op.baseAddress! + q0, scratch: sp.baseAddress!)
                    } }
                } } }
            }
            XCTAssertEqual(chunked.map(\.bitPattern), whole.map(\.bitPattern), "l \(l) d \(d) cut at \(cuts)")
        }
    }

    /// Where bf16 does not run (a level below avx512, or a CPU without AVX512-BF16), a bf16 request is the fp32
    /// head, bit for bit.
    func testFallbackIsTheFP32Head() {
        var r = TestRandom(23)
        let (l, d, ld) = (37, 40, 50)
        let q = r.floats(d * ld), k = r.floats(d * ld), v = r.floats(d * ld)
        for level in KernelLevel.allCases where level.isSupported && FastAttention.resolved(.bf16, level: level) == .fp32 {
            func head(_ p: AttentionPrecision) -> [Float] {
                var out = [Float](repeating: 0, count: d * ld)
                var scratch = [Float](repeating: 0, count: FastAttention.scratchCount(p, length: l, headDim: d, level: level))
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in scratch.withUnsafeMutableBufferPointer { sp in
                        FastAttention.head(p, q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!, ld: ld, length: l, headDim: d,
                                           scale: 0.15, out: op.baseAddress!, scratch: sp.baseAddress!, level: level)
                    } }
                } } }
                return out
            }
            XCTAssertEqual(head(.bf16).map(\.bitPattern), head(.fp32).map(\.bitPattern), "\(level)")
        }
        XCTAssertEqual(FastAttention.resolved(.fp32), .fp32)
    }

    /// What each policy runs where: the bf16 policies keep the older policies' I8 sets (so the files they write
    /// are the same), and put the attention cores (and, for bf16-attention, the projections) in bf16.
    func testPoliciesPutAttentionInBF16AndKeepTheirI8Sets() throws {
        let model = try ModelDirectory(path: try Fixtures.goldenCase("cd_tiny")).loadModel().0
        let layers = model.plan.layers
        let cores = layers.filter { if case .attention = $0.kind { return true } else { return false } }
        XCTAssertFalse(cores.isEmpty, "cd_tiny has attention blocks")
        for layer in layers {
            XCTAssertEqual(Int8Policy.innerConvolutionsAndAttentionBF16Heads.selects(layer),
                           Int8Policy.innerConvolutionsAndAttention.selects(layer), layer.key)
            XCTAssertEqual(Int8Policy.innerConvolutionsBF16Attention.selects(layer), Int8Policy.innerConvolutions.selects(layer), layer.key)
            let isCore = cores.contains(layer)
            XCTAssertEqual(Int8Policy.innerConvolutionsAndAttentionBF16Heads.precision(of: layer) == .bf16, isCore, layer.key)
            XCTAssertEqual(Int8Policy.innerConvolutionsBF16Attention.precision(of: layer) == .bf16,
                           isCore || layer.role == .attentionProjection, layer.key)
            XCTAssertNotEqual(Int8Policy.innerConvolutionsAndAttention.precision(of: layer), .bf16, layer.key)
        }
        // Packing follows the policy: heads marked bf16 at int8 only, projections packed bf16 for bf16-attention.
        for (policy, precision) in [(Int8Policy.innerConvolutionsAndAttentionBF16Heads, ConvPrecision.int8),
                                    (.innerConvolutionsBF16Attention, .int8), (.innerConvolutionsBF16Attention, .fp32)] {
            var m = model
            m.int8Policy = policy
            m.packForServing(precision)
            var audit = AttentionPrecisionAudit()
            m.visitLayers(&audit)
            XCTAssertEqual(audit.heads.count, cores.count)
            XCTAssertTrue(audit.heads.allSatisfy { $0 == (precision == .int8 ? .bf16 : .fp32) }, "\(policy) \(precision)")
            let bf16Projections = policy == .innerConvolutionsBF16Attention && precision == .int8 && FastConv.hasBF16Instructions
            XCTAssertEqual(audit.bf16Linears, bf16Projections ? 4 * cores.count : 0, "\(policy) \(precision)")
        }
    }

    /// `quantize --int8-policy P` records P in the file, and a server loading that file runs its heads (and, for
    /// bf16-attention, its projections) as P says, with the I8 tensors P selects.
    func testQuantizedFileCarriesTheBF16PolicyToServing() throws {
        for policy in [Int8Policy.innerConvolutionsAndAttentionBF16Heads, .innerConvolutionsBF16Attention] {
            let out = Fixtures.tempDir()
            _ = try Quantizer.quantizeDirectory(source: try Fixtures.goldenCase("cd_tiny"), destination: out, policy: policy)
            let (model, file) = try ModelDirectory(path: out).loadModel()
            XCTAssertEqual(file.metadata[Int8Policy.metadataKey], policy.rawValue)
            XCTAssertEqual(model.int8Policy, policy)
            for layer in model.plan.layers {
                guard let dtype = file.entries[layer.key + ".weight"]?.dtype else { continue }
                XCTAssertEqual(dtype == .I8, policy.selects(layer), "\(policy) \(layer.key)")
            }
            let served = try ImagePipeline.load(path: out, precision: .int8).model
            var m = served
            var audit = AttentionPrecisionAudit()
            m.visitLayers(&audit)
            XCTAssertFalse(audit.heads.isEmpty)
            XCTAssertTrue(audit.heads.allSatisfy { $0 == .bf16 }, "\(policy): heads \(audit.heads)")
            XCTAssertEqual(audit.bf16Linears > 0, policy == .innerConvolutionsBF16Attention && FastConv.hasBF16Instructions, "\(policy)")
        }
    }

    /// One forward with bf16 attention gives the same bytes alone or in a batch, and on 1, 2 or 3 threads.
    func testBF16AttentionForwardIsBatchAndThreadInvariant() throws {
        var cases: [(String, String)] = [("cd_tiny", try Fixtures.goldenCase("cd_tiny"))]
        cases.append(("default model", Fixtures.repoRoot + "/models/shapes16-cd-int8"))
        let teams = [2: ThreadTeam(threads: 2), 3: ThreadTeam(threads: 3)]
        for (name, dir) in cases {
            for policy in [Int8Policy.innerConvolutionsAndAttentionBF16Heads, .innerConvolutionsBF16Attention] {
                var model = try ModelDirectory(path: dir).loadModel().0
                model.int8Policy = policy
                model.packForServing(.int8)
                var g = TorchGenerator(seed: 6)
                let x = g.randn(shape: [3, model.config.inChannels, model.config.sampleSize, model.config.sampleSize])
                let labels = model.config.numClassEmbeds.map { k in [0, 1, 2].map { $0 % k } }
                let t: [Float] = [0.5, 3, 40]
                let batch = model.forwardBatched(x, timesteps: t, classLabels: labels, pool: BufferPool())
                let per = x.count / 3
                for i in 0..<3 {
                    let one = Tensor(shape: [1] + Array(x.shape.dropFirst()), data: Array(x.data[(i * per)..<((i + 1) * per)]))
                    let alone = model.forwardBatched(one, timesteps: [t[i]], classLabels: labels.map { [$0[i]] }, pool: BufferPool())
                    XCTAssertEqual(alone.data, Array(batch.data[(i * per)..<((i + 1) * per)]), "\(name) \(policy): image \(i) alone vs in a batch")
                }
                for threads in [2, 3] {
                    let pool = BufferPool()
                    pool.team = teams[threads]
                    let split = model.forwardBatched(x, timesteps: t, classLabels: labels, pool: pool)
                    XCTAssertEqual(split.data, batch.data, "\(name) \(policy) on \(threads) threads differs from 1 thread")
                }
            }
        }
    }

    /// The default model's images with bf16 attention against fp32 kernels (same floor as Int8QualityTests).
    func testDefaultModelWithBF16AttentionStaysCloseToFP32() throws {
        let path = Fixtures.repoRoot + "/models/shapes16-cd-int8"
        let loaded = try ImagePipeline.load(path: path, precision: .fp32)
        for policy in [Int8Policy.innerConvolutionsAndAttention, .innerConvolutionsAndAttentionBF16Heads, .innerConvolutionsBF16Attention] {
            var model = loaded.model
            model.int8Policy = policy
            let int8 = ImagePipeline(name: loaded.name, model: model, sampler: loaded.sampler, weightDType: loaded.weightDType, precision: .int8)
            let (relative, psnr) = Quantizer.compare(loaded, int8, seeds: Int8QualityTests.seeds)
            print(String(format: "default model, %@ vs fp32 on %d seeds: relative L2 %.4f, PSNR %.2f dB (bf16 heads %@)",
                         policy.rawValue, Int8QualityTests.seeds.count, relative, psnr,
                         FastAttention.resolved(.bf16) == .bf16 ? "on vdpbf16ps" : "fall back to fp32 here"))
            XCTAssertGreaterThan(psnr, Int8QualityTests.minimumPSNR, policy.rawValue)
        }
    }
}

/// The precision of every attention block's heads and the number of linear layers packed bf16.
struct AttentionPrecisionAudit: LayerVisitor {
    var heads: [AttentionPrecision] = []
    var bf16Linears = 0
    mutating func visit(_ layer: inout LinearLayer) { if layer.packedBF16 != nil { bf16Linears += 1 } }
    mutating func visit(attentionCore spec: LayerSpec, precision: inout AttentionPrecision) { heads.append(precision) }
}

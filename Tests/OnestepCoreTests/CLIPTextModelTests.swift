import Foundation
import XCTest
@testable import OnestepCore

/// CLIPTextModel against transformers (prompt_embeds of the golden pipelines) and against a naive double-precision
/// reference forward written out below.
final class CLIPTextModelTests: XCTestCase {
    /// shared/golden/T2I_README.md: prompt_embeds relative L2 error <= 1e-5.
    static let goldenRelativeL2 = 1e-5
    /// BLAS float32 forward vs the double reference, small random model (a few float32 roundings per layer).
    static let referenceRelativeL2 = 2e-6

    func testGoldenPromptEmbeds() throws {
        for name in CLIPTokenizerTests.pipelineFolders {
            let dir = try CLIPTokenizerTests.pipelineFolder(name)
            let model = try CLIPTextModel(folder: dir + "/text_encoder")
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            let expected = try io.floats("prompt_embeds")
            let (prompts, ids) = try CLIPTokenizerTests.goldenPrompts(dir)
            let y = try model.forward(ids: ids)
            XCTAssertEqual(y.shape, expected.shape, name)
            var whole = model
            whole.batchInvariant = false
            let yWhole = try whole.forward(ids: ids)
            XCTAssertLessThanOrEqual(TensorError.relativeL2(yWhole.data, expected.data), Self.goldenRelativeL2, "\(name): one sgemm over the batch")
            let rel = TensorError.relativeL2(y.data, expected.data)
            XCTAssertLessThanOrEqual(rel, Self.goldenRelativeL2, "\(name): prompt_embeds relative L2 \(rel)")
            print("\(name): prompt_embeds relative L2 \(rel) (limit \(Self.goldenRelativeL2))")
            // Each prompt on its own too (the error of a short prompt is not hidden by the others).
            let per = y.count / ids.count
            for i in 0..<ids.count {
                let r = TensorError.relativeL2(Array(y.data[(i * per)..<((i + 1) * per)]), Array(expected.data[(i * per)..<((i + 1) * per)]))
                XCTAssertLessThanOrEqual(r, Self.goldenRelativeL2, "\(name): prompt \(i) relative L2 \(r)")
            }
            // Text to embeddings through our tokenizer.
            let tok = try CLIPTokenizer(folder: dir + "/tokenizer")
            let z = try model.forward(ids: tok.encode(prompts))
            XCTAssertLessThanOrEqual(TensorError.relativeL2(z.data, expected.data), Self.goldenRelativeL2, "\(name): text -> embeddings")
        }
    }

    static func randomModel(_ act: CLIPActivation, seed: UInt64) throws -> CLIPTextModel {
        let c = CLIPTextConfig(vocabSize: 120, hiddenSize: 24, intermediateSize: 40, numHiddenLayers: 2,
                               numAttentionHeads: 3, maxPositionEmbeddings: 16, layerNormEps: 1e-5, hiddenAct: act)
        final class Weights: WeightSource {
            var rng: TestRandom
            init(_ seed: UInt64) { rng = TestRandom(seed) }
            func contains(_ key: String) -> Bool { true }
            func tensor(_ key: String, shape: [Int]) throws -> Tensor {
                let n = shape.reduce(1, *)
                // Norm weights near 1, everything else large enough that the attention is far from uniform.
                let scale: Float = key.contains("embedding") ? 1 : 0.4
                let offset: Float = key.contains("norm") && key.hasSuffix("weight") ? 1 : 0
                return Tensor(shape: shape, data: rng.floats(n).map { $0 * scale + offset })
            }
        }
        return try CLIPTextModel(config: c, weights: Weights(seed))
    }

    func testForwardMatchesNaiveReference() throws {
        for act in CLIPActivation.allCases {
            let model = try Self.randomModel(act, seed: act == .gelu ? 3 : 4)
            var rng = TestRandom(9)
            let ids = (0..<3).map { _ in (0..<13).map { _ in rng.int(120) } }
            let y = try model.forward(ids: ids)
            XCTAssertEqual(y.shape, [3, 13, 24])
            let ref = Self.reference(model, ids: ids)
            let rel = TensorError.relativeL2(y.data, ref)
            XCTAssertLessThanOrEqual(rel, Self.referenceRelativeL2, "\(act): relative L2 to the naive forward \(rel)")
            print("\(act): relative L2 to the naive double forward \(rel) (limit \(Self.referenceRelativeL2))")
            // The causal mask: changing the last token leaves every earlier position's output unchanged.
            var changed = ids
            changed[0][12] = (ids[0][12] + 1) % 120
            let y2 = try model.forward(ids: changed)
            XCTAssertEqual(Array(y2.data[0..<(12 * 24)]), Array(y.data[0..<(12 * 24)]), "\(act): earlier tokens see a later one")
            XCTAssertNotEqual(Array(y2.data[(12 * 24)..<(13 * 24)]), Array(y.data[(12 * 24)..<(13 * 24)]))
        }
    }

    /// A prompt gives the same bits alone or in a batch, at any position (one sgemm per projection over the batch).
    func testBatchInvariance() throws {
        for name in ["sd_turbo_tiny", "lcm_tiny"] {
            let dir = try CLIPTokenizerTests.pipelineFolder(name)
            let model = try CLIPTextModel(folder: dir + "/text_encoder")
            let (_, ids) = try CLIPTokenizerTests.goldenPrompts(dir)
            let all = try model.forward(ids: ids)
            let per = all.count / ids.count
            for i in 0..<ids.count {
                let alone = try model.forward(ids: [ids[i]])
                XCTAssertEqual(alone.data, Array(all.data[(i * per)..<((i + 1) * per)]), "\(name): prompt \(i) alone vs in a batch of \(ids.count)")
            }
        }
        let model = try CLIPTextModel(config: CLIPTextBench.clipL.with(layers: 1), weights: CLIPTextBench.RandomWeights(seed: 2))
        let a = [49406] + (0..<75).map { $0 * 31 } + [49407], b = [49406] + (0..<75).map { $0 * 17 + 5 } + [49407]
        let pair = try model.forward(ids: [b, a, b])
        let alone = try model.forward(ids: [a])
        XCTAssertEqual(alone.data, Array(pair.data[(77 * 768)..<(2 * 77 * 768)]), "CLIP-L width: prompt alone vs second of three")
    }

    func testBadInputsAreRefused() throws {
        let model = try Self.randomModel(.quickGELU, seed: 1)
        XCTAssertThrowsError(try model.forward(ids: [])) { XCTAssertTrue("\($0)".contains("no token ids")) }
        XCTAssertThrowsError(try model.forward(ids: [[1, 2], [1]])) { XCTAssertTrue("\($0)".contains("different token counts")) }
        XCTAssertThrowsError(try model.forward(ids: [Array(repeating: 1, count: 17)])) { XCTAssertTrue("\($0)".contains("max_position_embeddings 16")) }
        XCTAssertThrowsError(try model.forward(ids: [[1, 120]])) { XCTAssertTrue("\($0)".contains("token id 120")) }
        XCTAssertThrowsError(try model.forward(ids: [[-1]])) { XCTAssertTrue("\($0)".contains("token id -1")) }
    }

    /// CLIPTextTransformer written out in double precision, loop by loop.
    static func reference(_ m: CLIPTextModel, ids: [[Int]]) -> [Float] {
        let c = m.config, d = c.hiddenSize, heads = c.numAttentionHeads, dh = d / heads
        func layerNorm(_ x: [Double], _ g: Tensor, _ b: Tensor) -> [Double] {
            let mean = x.reduce(0, +) / Double(x.count)
            let variance = x.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(x.count)
            return x.indices.map { (x[$0] - mean) / (variance + Double(c.layerNormEps)).squareRoot() * Double(g.data[$0]) + Double(b.data[$0]) }
        }
        func linear(_ x: [Double], _ l: LinearLayer) -> [Double] {
            let outF = l.weight.shape[0], inF = l.weight.shape[1]
            return (0..<outF).map { o in (0..<inF).reduce(Double(l.bias.data[o])) { $0 + x[$1] * Double(l.weight.data[o * inF + $1]) } }
        }
        func act(_ v: Double) -> Double {
            switch c.hiddenAct {
            case .quickGELU: return v / (1 + exp(-1.702 * v))
            case .gelu: return 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
            }
        }
        var out: [Float] = []
        for row in ids {
            let l = row.count
            var x: [[Double]] = (0..<l).map { t in (0..<d).map { Double(m.tokenEmbedding.data[row[t] * d + $0]) + Double(m.positionEmbedding.data[t * d + $0]) } }
            for layer in m.layers {
                let h = x.map { layerNorm($0, layer.norm1Weight, layer.norm1Bias) }
                let q = h.map { linear($0, layer.q) }, k = h.map { linear($0, layer.k) }, v = h.map { linear($0, layer.v) }
                var attn = [[Double]](repeating: [Double](repeating: 0, count: d), count: l)
                for hd in 0..<heads {
                    for i in 0..<l {
                        let scores = (0...i).map { j in (0..<dh).reduce(0.0) { $0 + q[i][hd * dh + $1] * k[j][hd * dh + $1] } / Double(dh).squareRoot() }
                        let mx = scores.max()!
                        let e = scores.map { exp($0 - mx) }, s = e.reduce(0, +)
                        for j in 0...i { for z in 0..<dh { attn[i][hd * dh + z] += e[j] / s * v[j][hd * dh + z] } }
                    }
                }
                for t in 0..<l {
                    let o = linear(attn[t], layer.out)
                    for j in 0..<d { x[t][j] += o[j] }
                    let h2 = layerNorm(x[t], layer.norm2Weight, layer.norm2Bias)
                    let f = linear(linear(h2, layer.fc1).map(act), layer.fc2)
                    for j in 0..<d { x[t][j] += f[j] }
                }
            }
            for t in 0..<l { out += layerNorm(x[t], m.finalNormWeight, m.finalNormBias).map { Float($0) } }
        }
        return out
    }
}

extension CLIPTextConfig {
    func with(layers: Int) -> CLIPTextConfig {
        var c = self
        c.numHiddenLayers = layers
        return c
    }
}

// Throughput of the text side of a text-to-image pipeline, for `onestep-serve bench-text`: tokenizer load time and
// prompts/s, and CLIPTextModel forward time at a full-size CLIP ViT-L/14 text config (12 layers, width 768, the SD
// 1.x encoder) with random weights, next to a plain OpenBLAS sgemm of the encoder's largest projection (fc1)
// measured in the same run, so the ratio survives a shared, noisy machine.
import Foundation

public enum CLIPTextBench {
    /// The SD 1.x text encoder (openai/clip-vit-large-patch14 text tower).
    public static let clipL = CLIPTextConfig(vocabSize: 49408, hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12,
                                             numAttentionHeads: 12, maxPositionEmbeddings: 77, layerNormEps: 1e-5,
                                             hiddenAct: .quickGELU)

    /// Deterministic random weights (xorshift, uniform in +-0.02; LayerNorm weights 1), for timing only.
    public final class RandomWeights: WeightSource {
        var state: UInt64
        public init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
        public func contains(_ key: String) -> Bool { true }
        public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
            let n = shape.reduce(1, *)
            if key.contains("layer_norm") && key.hasSuffix(".weight") { return Tensor(shape: shape, data: [Float](repeating: 1, count: n)) }
            var data = [Float](repeating: 0, count: n)
            for i in 0..<n {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                data[i] = (Float(state >> 40) / Float(1 << 24) * 2 - 1) * 0.02
            }
            return Tensor(shape: shape, data: data)
        }
    }

    /// Multiply-adds x 2 of one forward pass of `batch` prompts of `length` tokens.
    public static func flops(_ c: CLIPTextConfig, batch: Int, length l: Int) -> Double {
        let n = Double(batch * l), d = Double(c.hiddenSize), i = Double(c.intermediateSize)
        let linear = 2 * n * (4 * d * d + 2 * d * i)
        let attention = 2 * Double(batch) * 2 * Double(l * l) * d  // QK^T and PV over all heads (full squares)
        return Double(c.numHiddenLayers) * (linear + attention)
    }

    /// Median seconds of `body` over repeats filling about `seconds` (at least 3 runs).
    static func median(seconds: Double, _ body: () -> Void) -> Double {
        var times: [Double] = []
        let start = Date()
        while times.count < 3 || Date().timeIntervalSince(start) < seconds {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return times.sorted()[times.count / 2]
    }

    /// Prompts for the tokenizer figures: 1000 distinct sentences of common words, numbers and punctuation.
    public static func prompts(count: Int = 1000) -> [String] {
        let words = ["a", "photo", "of", "cat", "astronaut", "riding", "horse", "on", "mars", "highly", "detailed", "8k",
                     "trending", "artstation", "portrait", "oil", "painting", "landscape", "sunset", "cinematic",
                     "lighting", "by", "greg", "rutkowski", "Ünïcödé", "café", "don't", "!!", "4k", "ultra-realistic"]
        var state: UInt64 = 12345
        return (0..<count).map { i in
            var s = ""
            for _ in 0..<(8 + i % 20) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                s += words[Int(state >> 33) % words.count] + " "
            }
            return s + "\(i)"
        }
    }

    /// One encoder measurement: milliseconds per forward of the batch, its GFLOP/s, and the sgemm reference
    /// measured in turns with it.
    public struct Row: Sendable {
        public var batch: Int
        public var wholeBatchGEMM: Bool
        public var milliseconds: Double
        public var gflops: Double
        public var sgemmGflops: Double
    }

    static func time(_ body: () -> Void) -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    public struct Report: Sendable {
        public var tokenizerLoadMilliseconds: Double?
        public var tokenizerLoadBreakdown: String?
        public var promptsPerSecondFirstPass: Double?
        public var promptsPerSecondCached: Double?
        public var encoderLoadSeconds: Double?
        /// Per batch size: (milliseconds per forward of the batch, GFLOP/s).
        public var encoder: [Row]

        public var text: String {
            var lines: [String] = []
            if let t = tokenizerLoadMilliseconds { lines.append(String(format: "tokenizer load (vocab.json + merges.txt + config): %.1f ms (median of 5)", t)) }
            if let b = tokenizerLoadBreakdown { lines.append("  of which " + b) }
            if let a = promptsPerSecondFirstPass, let b = promptsPerSecondCached {
                lines.append(String(format: "tokenize: %.0f prompts/s first pass (BPE cache filling), %.0f prompts/s cached", a, b))
            }
            guard let encoderLoadSeconds else { return lines.joined(separator: "\n") }
            lines.append(String(format: "CLIP-L text encoder (12 layers, width 768, random weights) built in %.2f s", encoderLoadSeconds))
            for e in encoder {
                let mode = e.wholeBatchGEMM ? "one sgemm over the batch" : "sgemm per prompt, batch-invariant"
                lines.append("encoder batch \(e.batch) (\(mode)): " + String(format: "%.1f ms per batch (%.1f ms per prompt), %.1f GFLOP/s = %.2f x an sgemm (77, 768) x (768, 3072) at %.1f GFLOP/s in turns with it",
                                    e.milliseconds, e.milliseconds / Double(e.batch), e.gflops, e.gflops / e.sgemmGflops, e.sgemmGflops))
            }
            return lines.joined(separator: "\n")
        }
    }

    /// Measures everything. `tokenizerFolder` nil skips the tokenizer figures.
    public static func run(tokenizerFolder: String?, batches: [Int] = [1, 2], seconds: Double = 2, encoder: Bool = true) throws -> Report {
        var loadMs: Double?, firstPass: Double?, cached: Double?, loadBreakdown: String?
        if let folder = tokenizerFolder {
            loadMs = try medianThrowing(runs: 5) { _ = try CLIPTokenizer(folder: folder) } * 1000
            // Where the load time goes (same steps as CLIPTokenizer.init).
            var vocab = ByteStringTable(expectedCount: 0, expectedBytes: 0)
            var merges: [UInt64: UInt64] = [:]
            let vocabMs = try medianThrowing(runs: 3) { vocab = try TokenizerFiles.readVocab(path: folder + "/vocab.json") } * 1000
            let mergesMs = try medianThrowing(runs: 3) { merges = try TokenizerFiles.readMerges(path: folder + "/merges.txt", vocab: vocab).table } * 1000
            let tableMs = try medianThrowing(runs: 3) {
                _ = try BytePairEncoding(vocab: vocab, merges: merges, unknownToken: Array("<|endoftext|>".utf8), vocabPath: "")
            } * 1000
            loadBreakdown = String(format: "vocab.json to hash table %.1f ms, merges.txt to rank table %.1f ms, byte symbols %.1f ms",
                                   vocabMs, mergesMs, tableMs)
            let tok = try CLIPTokenizer(folder: folder)
            let ps = prompts()
            let t0 = DispatchTime.now().uptimeNanoseconds
            for p in ps { _ = tok.encode(p) }
            firstPass = Double(ps.count) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            cached = Double(ps.count) / median(seconds: seconds) { for p in ps { _ = tok.encode(p) } }
        }
        guard encoder else {
            return Report(tokenizerLoadMilliseconds: loadMs, tokenizerLoadBreakdown: loadBreakdown, promptsPerSecondFirstPass: firstPass,
                          promptsPerSecondCached: cached, encoderLoadSeconds: nil, encoder: [])
        }
        let t0 = Date()
        let model = try CLIPTextModel(config: clipL, weights: RandomWeights(seed: 1))
        let buildSeconds = Date().timeIntervalSince(t0)

        // Reference: one sgemm of fc1's shape for one prompt (the encoder's largest GEMM), measured in turns with
        // each encoder row (sgemm, encoder, sgemm, ...) so both see the same load on a shared machine.
        let m = 77, k = 768, n = 3072
        let a = [Float](repeating: 0.01, count: m * k), b = [Float](repeating: 0.02, count: k * n)
        var c = [Float](repeating: 0, count: m * n)
        func sgemmOnce() {
            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                BLAS.sgemm(transB: true, m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: k, c: cp.baseAddress!, ldc: n)
            } } }
        }
        var rows: [Row] = []
        for batch in batches {
            let ids = (0..<batch).map { i in [49406] + (0..<75).map { (i * 7919 + $0 * 104729) % 49406 } + [49407] }
            for whole in batch > 1 ? [false, true] : [false] {
                var model = model
                model.batchInvariant = !whole
                var gemmTimes: [Double] = [], encoderTimes: [Double] = []
                let start = Date()
                while encoderTimes.count < 3 || Date().timeIntervalSince(start) < seconds {
                    // The sgemm is ~1/80 of a forward: repeat it so its time is not dominated by timer noise.
                    gemmTimes.append(time { for _ in 0..<8 { sgemmOnce() } } / 8)
                    encoderTimes.append(time { _ = try? model.forward(ids: ids) })
                }
                let e = encoderTimes.sorted()[encoderTimes.count / 2], g = gemmTimes.sorted()[gemmTimes.count / 2]
                rows.append(Row(batch: batch, wholeBatchGEMM: whole, milliseconds: e * 1000,
                                gflops: flops(clipL, batch: batch, length: 77) / e / 1e9, sgemmGflops: 2.0 * Double(m * n * k) / g / 1e9))
            }
        }
        return Report(tokenizerLoadMilliseconds: loadMs, tokenizerLoadBreakdown: loadBreakdown, promptsPerSecondFirstPass: firstPass, promptsPerSecondCached: cached,
                      encoderLoadSeconds: buildSeconds, encoder: rows)
    }

    static func medianThrowing(runs: Int, _ body: () throws -> Void) throws -> Double {
        var times: [Double] = []
        for _ in 0..<runs {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return times.sorted()[runs / 2]
    }
}

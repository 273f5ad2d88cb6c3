// transformers' CLIPTextModel (modeling_clip.py CLIPTextTransformer) in eval mode, returning last_hidden_state:
//
//   x = token_embedding[ids] + position_embedding[0..<L]                                  (B*L, D)
//   per layer:  x += out_proj(causal_attention(q_proj, k_proj, v_proj of layer_norm1(x)))
//               x += fc2(act(fc1(layer_norm2(x))))                  act = quick_gelu or gelu (hidden_act)
//   last_hidden_state = final_layer_norm(x)                                                (B, L, D)
//
// Activations are token-major (B*L, D). Each linear layer is one OpenBLAS sgemm per prompt (M = L = 77 rows) by
// default: OpenBLAS splits M into micro-kernel row blocks whose accumulation differs at the tails, so one sgemm over
// all B*L rows gives a prompt other bits in a batch than alone (measured: CLIPTextModelTests.testBatchInvariance
// fails that way). `batchInvariant = false` runs one sgemm over the whole batch instead (bench-text prints both).
// Diffusers pipelines pass no attention mask (padding tokens are attended, causally), and neither do we. SD 2.x
// folders already hold the penultimate-layer encoder (num_hidden_layers reduced), so all layers run.
// Weights: text_encoder/model.safetensors with keys as transformers 5 saves them ("embeddings.token_embedding.weight",
// "encoder.layers.0.self_attn.q_proj.weight", ...) or as 4.x did, under "text_model.". A projection stored int8 by
// `quantize` (I8 + KEY_scale, Quant/LatentInt8.swift) runs on FastConv.linear from its stored codes.
import Foundation

public struct CLIPTextInputError: Error, CustomStringConvertible, Equatable {
    public var problem: String
    public var description: String { problem }
}

public struct CLIPTextModel: Sendable {
    public struct Layer: Sendable {
        public var norm1Weight: Tensor, norm1Bias: Tensor   // (D)
        public var q: LinearLayer, k: LinearLayer, v: LinearLayer, out: LinearLayer  // (D, D)
        public var norm2Weight: Tensor, norm2Bias: Tensor   // (D)
        public var fc1: LinearLayer                        // (I, D)
        public var fc2: LinearLayer                        // (D, I)
    }

    public let config: CLIPTextConfig
    public let tokenEmbedding: Tensor     // (V, D)
    public let positionEmbedding: Tensor  // (P, D)
    public let layers: [Layer]
    public let finalNormWeight: Tensor, finalNormBias: Tensor  // (D)
    /// true: one sgemm per prompt and projection, so a prompt's embedding has the same bits alone or in any batch.
    /// false: one sgemm per projection over every token of the batch (not bitwise batch-invariant).
    public var batchInvariant = true

    /// Loads a transformers text encoder folder (config.json + model[.variant].safetensors).
    /// - Parameters: `variant` picks `model.<variant>.safetensors` (diffusers' `variant=`, e.g. "fp16"); nil takes
    ///   model.safetensors, or the only variant file when there is no plain one. `loras`: LoRA files whose text
    ///   encoder layers are fused into the weights as they are read (`loraTargets(config)`).
    /// - Throws: ModelLoadError naming the file: a config outside the subset (with the key), missing weights, a
    ///   tensor of the wrong shape, missing or not finite, tensors the config does not use, or a LoRA that does
    ///   not fit (LoRAFusion).
    public init(folder: String, variant: String? = nil, loras: [(file: LoRAFile, scale: Float)] = []) throws {
        let configPath = folder + "/config.json", plainPath = folder + "/model.safetensors"
        let config = try CLIPTextConfig.load(path: configPath)
        let weightsPath: String
        if variant == nil, FileManager.default.fileExists(atPath: plainPath) {
            weightsPath = plainPath
        } else {
            let hasVariants = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).contains { $0.hasPrefix("model.") && $0.hasSuffix(".safetensors") }
            guard variant != nil || hasVariants else {
                throw ModelLoadError(path: plainPath, problem: "is missing; a text encoder folder needs model.safetensors beside config.json")
            }
            weightsPath = try ModelDirectory.weightsFile(in: folder, base: "model", variant: variant)
        }
        let file: SafetensorsFile
        do { file = try SafetensorsFile(path: weightsPath) } catch let e as SafetensorsError {
            throw ModelLoadError(path: weightsPath, problem: e.problem + (e.tensor.map { " (tensor \($0))" } ?? ""))
        }
        let fusion = try LoRAFusion(files: loras, targets: Self.loraTargets(config))
        if fusion.isEmpty {
            try self.init(config: config, weights: CLIPTextWeightFile(file: file))
        } else {
            let fusing = FusingWeightSource(base: CLIPTextWeightFile(file: file), fusion: fusion)
            try self.init(config: config, weights: fusing)
            try fusing.checkAllFused()
        }
    }

    /// The projections a LoRA may adapt: each layer's q/k/v/out_proj and mlp.fc1 / fc2, named as the weights file
    /// does without "text_model." (LoRA files write it: PEFT "text_encoder.text_model.encoder.layers.0...",
    /// kohya "lora_te_text_model_encoder_layers_0_...").
    public static func loraTargets(_ config: CLIPTextConfig) -> LoRATargets {
        let d = config.hiddenSize, i = config.intermediateSize
        var shapes: [String: [Int]] = [:]
        for n in 0..<config.numHiddenLayers {
            let p = "encoder.layers.\(n)."
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] { shapes[p + "self_attn." + proj] = [d, d] }
            shapes[p + "mlp.fc1"] = [i, d]
            shapes[p + "mlp.fc2"] = [d, i]
        }
        return LoRATargets(component: .textEncoder, shapes: shapes, optionalPrefixes: ["text_model."])
    }

    public init(config: CLIPTextConfig, weights src: WeightSource) throws {
        self.config = config
        let d = config.hiddenSize, i = config.intermediateSize
        tokenEmbedding = try src.tensor("embeddings.token_embedding.weight", shape: [config.vocabSize, d])
        positionEmbedding = try src.tensor("embeddings.position_embedding.weight", shape: [config.maxPositionEmbeddings, d])
        layers = try (0..<config.numHiddenLayers).map { n in
            let p = "encoder.layers.\(n)."
            return Layer(norm1Weight: try src.tensor(p + "layer_norm1.weight", shape: [d]),
                         norm1Bias: try src.tensor(p + "layer_norm1.bias", shape: [d]),
                         q: try LinearLayer(p + "self_attn.q_proj", src, in: d, out: d),
                         k: try LinearLayer(p + "self_attn.k_proj", src, in: d, out: d),
                         v: try LinearLayer(p + "self_attn.v_proj", src, in: d, out: d),
                         out: try LinearLayer(p + "self_attn.out_proj", src, in: d, out: d),
                         norm2Weight: try src.tensor(p + "layer_norm2.weight", shape: [d]),
                         norm2Bias: try src.tensor(p + "layer_norm2.bias", shape: [d]),
                         fc1: try LinearLayer(p + "mlp.fc1", src, in: d, out: i),
                         fc2: try LinearLayer(p + "mlp.fc2", src, in: i, out: d))
        }
        finalNormWeight = try src.tensor("final_layer_norm.weight", shape: [d])
        finalNormBias = try src.tensor("final_layer_norm.bias", shape: [d])
        if let file = (src as? CLIPTextWeightFile) ?? ((src as? FusingWeightSource)?.base as? CLIPTextWeightFile) {
            try file.checkAllUsed(layers: config.numHiddenLayers)
        }
    }

    /// last_hidden_state (B, L, D) for B prompts of L token ids each (L <= max_position_embeddings, all rows the
    /// same length; the tokenizer gives 77).
    /// - Throws: CLIPTextInputError for an empty batch, rows of different lengths, too long rows or ids outside
    ///   the vocabulary.
    /// A `team` splits each int8 projection's token rows between its threads (rows are quantized one by one, so
    /// the bytes are the same on any team size); fp32 projections use OpenBLAS's own threads.
    public func forward(ids: [[Int]], team: ThreadTeam? = nil) throws -> Tensor {
        guard let l = ids.first?.count, l > 0 else { throw CLIPTextInputError(problem: "no token ids: pass at least one prompt of at least one token") }
        guard ids.allSatisfy({ $0.count == l }) else { throw CLIPTextInputError(problem: "prompts have different token counts; pad them to one length") }
        guard l <= config.maxPositionEmbeddings else {
            throw CLIPTextInputError(problem: "\(l) tokens is more than max_position_embeddings \(config.maxPositionEmbeddings)")
        }
        for row in ids { for t in row where t < 0 || t >= config.vocabSize {
            throw CLIPTextInputError(problem: "token id \(t) is outside the vocabulary 0..<\(config.vocabSize)")
        } }
        let b = ids.count, d = config.hiddenSize, n = b * l
        var x = Tensor(zeros: [b, l, d])
        x.data.withUnsafeMutableBufferPointer { xp in
            tokenEmbedding.data.withUnsafeBufferPointer { te in
                positionEmbedding.data.withUnsafeBufferPointer { pe in
                    for (r, row) in ids.enumerated() { for (t, id) in row.enumerated() {
                        let dst = xp.baseAddress! + (r * l + t) * d, tok = te.baseAddress! + id * d, pos = pe.baseAddress! + t * d
                        for j in 0..<d { dst[j] = tok[j] + pos[j] }
                    } }
                }
            }
            let work = CLIPTextWorkspace(tokens: n, length: l, width: d, intermediate: config.intermediateSize)
            defer { work.free() }
            for layer in layers { run(layer, x: xp.baseAddress!, batch: b, length: l, work: work, team: team) }
            finalNormWeight.data.withUnsafeBufferPointer { g in finalNormBias.data.withUnsafeBufferPointer { be in
                LayerNorm.forward(x: xp.baseAddress!, rows: n, width: d, eps: config.layerNormEps,
                                  gamma: g.baseAddress!, beta: be.baseAddress!, y: xp.baseAddress!)
            } }
        }
        return x
    }

    /// One pre-LN encoder layer, x (B*L, D) updated in place.
    func run(_ layer: Layer, x: UnsafeMutablePointer<Float>, batch b: Int, length l: Int, work w: CLIPTextWorkspace,
             team: ThreadTeam? = nil) {
        let n = b * l, d = config.hiddenSize, eps = config.layerNormEps
        layer.norm1Weight.data.withUnsafeBufferPointer { g in layer.norm1Bias.data.withUnsafeBufferPointer { be in
            LayerNorm.forward(x: x, rows: n, width: d, eps: eps, gamma: g.baseAddress!, beta: be.baseAddress!, y: w.h)
        } }
        linear(layer.q, w.h, rows: n, length: l, into: w.q, team: team)
        linear(layer.k, w.h, rows: n, length: l, into: w.k, team: team)
        linear(layer.v, w.h, rows: n, length: l, into: w.v, team: team)
        CausalSelfAttention.forward(q: w.q, k: w.k, v: w.v, batch: b, length: l, channels: d,
                                    heads: config.numAttentionHeads, out: w.h, scratch: w.scores)
        linear(layer.out, w.h, rows: n, length: l, into: x, accumulate: true, team: team)  // residual
        layer.norm2Weight.data.withUnsafeBufferPointer { g in layer.norm2Bias.data.withUnsafeBufferPointer { be in
            LayerNorm.forward(x: x, rows: n, width: d, eps: eps, gamma: g.baseAddress!, beta: be.baseAddress!, y: w.h)
        } }
        linear(layer.fc1, w.h, rows: n, length: l, into: w.mlp, team: team)
        switch config.hiddenAct {
        case .quickGELU: GELU.quick(w.mlp, count: n * config.intermediateSize)
        case .gelu: GELU.exact(w.mlp, count: n * config.intermediateSize)
        }
        linear(layer.fc2, w.mlp, rows: n, length: l, into: x, accumulate: true, team: team)  // residual
    }

    /// y (rows, out) (+)= x (rows, in) W^T + b: one sgemm per prompt of `length` rows (or over all rows when
    /// not batchInvariant). With `accumulate` the product is added to y (the residual), as torch's r + (x W^T + b).
    func linear(_ layer: LinearLayer, _ x: UnsafePointer<Float>, rows n: Int, length l: Int,
                into y: UnsafeMutablePointer<Float>, accumulate: Bool = false, team: ThreadTeam? = nil) {
        let chunk = batchInvariant ? l : n, inF = layer.weight.shape[1], outF = layer.weight.shape[0]
        for start in stride(from: 0, to: n, by: chunk) {
            Self.linear(layer, x + start * inF, rows: chunk, into: y + start * outF, accumulate: accumulate, team: team)
        }
    }

    static func linear(_ layer: LinearLayer, _ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>,
                       accumulate: Bool, team: ThreadTeam? = nil) {
        let outF = layer.weight.shape[0], inF = layer.weight.shape[1]
        if let q = layer.packedRows8 {
            // int8 (stored codes): each token row quantized alone, so batching cannot change its bits; bias inside.
            guard accumulate else { FastConv.linear(x, rows: rows, q, into: y, team: team); return }
            let t = UnsafeMutablePointer<Float>.allocate(capacity: rows * outF)
            defer { t.deallocate() }
            FastConv.linear(x, rows: rows, q, into: t, team: team)
            for j in 0..<(rows * outF) { y[j] += t[j] }
            return
        }
        layer.weight.data.withUnsafeBufferPointer { w in layer.bias.data.withUnsafeBufferPointer { bias in
            if accumulate {
                // torch adds the bias inside the linear, then the residual: (xW^T + b) + r. Keep that order.
                let t = UnsafeMutablePointer<Float>.allocate(capacity: rows * outF)
                defer { t.deallocate() }
                BLAS.sgemm(transB: true, m: rows, n: outF, k: inF, a: x, lda: inF, b: w.baseAddress!, ldb: inF, c: t, ldc: outF)
                for r in 0..<rows {
                    let src = t + r * outF, dst = y + r * outF
                    for j in 0..<outF { dst[j] += src[j] + bias[j] }
                }
            } else {
                BLAS.sgemm(transB: true, m: rows, n: outF, k: inF, a: x, lda: inF, b: w.baseAddress!, ldb: inF, c: y, ldc: outF)
                for r in 0..<rows {
                    let dst = y + r * outF
                    for j in 0..<outF { dst[j] += bias[j] }
                }
            }
        } }
    }
}

/// Scratch buffers of one forward pass.
final class CLIPTextWorkspace {
    let h, q, k, v, mlp, scores: UnsafeMutablePointer<Float>
    init(tokens n: Int, length l: Int, width d: Int, intermediate i: Int) {
        h = .allocate(capacity: n * d)
        q = .allocate(capacity: n * d)
        k = .allocate(capacity: n * d)
        v = .allocate(capacity: n * d)
        mlp = .allocate(capacity: n * i)
        scores = .allocate(capacity: CausalSelfAttention.scratchCount(length: l))
    }
    func free() { for p in [h, q, k, v, mlp, scores] { p.deallocate() } }
}

/// model.safetensors of a text encoder, keys with or without the "text_model." prefix of transformers 4.x.
final class CLIPTextWeightFile: WeightSource {
    let file: SafetensorsFile
    let prefix: String
    private(set) var used = Set<String>()

    init(file: SafetensorsFile) {
        self.file = file
        prefix = file.entries["text_model.embeddings.token_embedding.weight"] != nil ? "text_model." : ""
    }

    func contains(_ key: String) -> Bool { file.entries[prefix + key] != nil }

    func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        let name = prefix + key
        guard let e = file.entries[name] else {
            throw ModelLoadError(path: file.path, problem: "tensor \(name) is missing; the file does not hold the CLIPTextModel that config.json describes")
        }
        guard e.shape == shape else {
            throw ModelLoadError(path: file.path, problem: "tensor \(name) has shape \(e.shape) but config.json needs \(shape)")
        }
        let t: Tensor
        do {
            if e.dtype == .I8 {
                // Onestep's int8 format (Quant/Int8Weights.swift): the projection runs on the stored codes
                // (int8(_:shape:)); the floats are what they stand for.
                t = try Int8Weights.dequantize(file: file, key: name)
                used.insert(name + Int8Weights.scaleSuffix)
            } else {
                t = try file.floats(name)
            }
        } catch let err as SafetensorsError {
            throw ModelLoadError(path: file.path, problem: "tensor \(name): \(err.problem)")
        }
        if let bad = t.data.firstIndex(where: { !$0.isFinite }) {
            throw ModelLoadError(path: file.path, problem: "tensor \(name) holds \(t.data[bad]) at index \(bad); weights must be finite")
        }
        used.insert(name)
        return t
    }

    func int8(_ key: String, shape: [Int]) throws -> Int8Tensor? {
        let name = prefix + key
        guard let e = file.entries[name], e.dtype == .I8, e.shape == shape else { return nil }
        do { return try Int8Weights.stored(file: file, key: name) } catch let err as SafetensorsError {
            throw ModelLoadError(path: file.path, problem: "tensor \(err.tensor ?? name): \(err.problem)")
        }
    }

    /// Refuses tensors no layer read (e.g. more encoder layers than num_hidden_layers), except the position_ids
    /// buffer older files carry and the projection of CLIPTextModelWithProjection.
    func checkAllUsed(layers: Int) throws {
        let allowed: Set<String> = [prefix + "embeddings.position_ids", "text_projection.weight"]
        let extra = file.names.filter { !used.contains($0) && !allowed.contains($0) }
        guard extra.isEmpty else {
            throw ModelLoadError(path: file.path, problem: "holds \(extra.count) tensor(s) a \(layers)-layer CLIPTextModel does not use (\(extra.prefix(3).joined(separator: ", "))\(extra.count > 3 ? ", ..." : "")); config.json and model.safetensors do not belong together")
        }
    }
}

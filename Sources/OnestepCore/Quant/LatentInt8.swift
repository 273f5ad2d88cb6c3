// int8 weights for the latent networks (UNet2DConditionModel, AutoencoderKL and AutoencoderTiny decoders), in the
// same file convention as the pixel models (Int8Weights.swift): KEY I8 (Cout, ...) codes, KEY_scale F32 (Cout),
// every other tensor F32, and __metadata__ saying so. What differs is which layers are int8:
//   "onestep.int8_policy": "latent-convolutions+projections" — every convolution and projection (attention
//       q/k/v/out, feed-forward, proj_in/out, time_emb_proj, resnet and resampler convs) except those reading or
//       writing at most `edgeChannels` channels (conv_in / conv_out / post_quant_conv: the latents and pixels),
//       and except the layers whose weight error exceeds the threshold below, which stay F32.
//   "onestep.int8_max_weight_error": that threshold (relative L2 of the dequantized weight, per tensor).
// The loader (LatentWeights) needs neither key: a layer runs in int8 exactly when its weight is stored I8.
import Foundation

public enum LatentInt8 {
    public static let policyName = "latent-convolutions+projections"
    public static let maxWeightErrorKey = "onestep.int8_max_weight_error"
    /// Per-tensor limit on ||dequant(quant(w)) - w|| / ||w|| above which a layer stays fp32. Per-output-channel
    /// symmetric int8 of a uniform or Gaussian weight measures 0.005 to 0.02; a tensor above 0.05 has rows
    /// dominated by a few large values (the codes of the rest round to a handful of levels).
    public static let defaultMaxWeightError = 0.05
    /// Convolutions whose input or output has at most this many channels (latents: 4, RGB: 3) stay fp32: their
    /// error lands directly in the latents or pixels and they are a negligible share of the work.
    public static let edgeChannels = 4

    /// The weights of `plan` that may be stored int8, with their shapes: convolution and projection weights that
    /// are not at the edges.
    public static func candidates(_ plan: LatentPlan) -> [(key: String, shape: [Int])] {
        plan.parameters.filter { p in
            p.key.hasSuffix(".weight") && p.shape.count >= 2 && p.shape[0] > edgeChannels && p.shape[1] > edgeChannels
        }
    }

    /// One weight's quantization error and what was decided for it.
    public struct LayerError: Sendable, Codable, Equatable {
        public var key: String
        public var shape: [Int]
        /// ||dequant(quant(w)) - w||_2 / ||w||_2.
        public var weightRelativeL2: Double
        /// True when stored (and run) int8; false when kept fp32 because the error exceeded the threshold.
        public var int8: Bool
    }

    /// Writes the weights file at `sourcePath` (a component's diffusion_pytorch_model.safetensors, float) as an
    /// int8 file at `path`: each candidate weight of `plan` whose relative error is at most `maxWeightError`
    /// becomes I8 codes + F32 scales (Int8Weights.quantize, the same rule as the pixel models); everything else,
    /// including tensors the plan does not use (a VAE's encoder), is written F32 (F16 / BF16 inputs are widened).
    /// - Returns: one LayerError per candidate, in key order.
    /// - Throws: SafetensorsError when the source is unreadable or already holds I8 tensors.
    @discardableResult
    public static func writeComponent(weights sourcePath: String, plan: LatentPlan, maxWeightError: Double,
                                      to path: String) throws -> [LayerError] {
        let candidates = Dictionary(candidates(plan).map { ($0.key, $0.shape) }, uniquingKeysWith: { a, _ in a })
        return try write(weights: sourcePath, candidates: candidates, maxWeightError: maxWeightError, to: path)
    }

    /// The CLIP text encoder's int8 candidates in its model.safetensors: every encoder layer's q/k/v/out_proj and
    /// mlp fc1/fc2 weight (keys as the file spells them, with or without "text_model."). Embeddings, layer norms
    /// and the optional text_projection stay fp32.
    public static func textEncoderCandidates(_ file: SafetensorsFile) -> [String: [Int]] {
        let suffixes = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                        "self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
        var out: [String: [Int]] = [:]
        for (name, e) in file.entries where name.contains("encoder.layers.") && e.shape.count == 2 {
            if suffixes.contains(where: { name.hasSuffix("." + $0) }) { out[name] = e.shape }
        }
        return out
    }

    /// The same candidates by config (keys without the "text_model." prefix, as CLIPTextModel reads them): for
    /// in-memory quantization, `QuantizingWeights(source, selected: LatentInt8.textEncoderCandidates(config))`.
    public static func textEncoderCandidates(_ config: CLIPTextConfig) -> Set<String> {
        var out = Set<String>()
        for n in 0..<config.numHiddenLayers {
            for s in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"] {
                out.insert("encoder.layers.\(n).\(s).weight")
            }
        }
        return out
    }

    /// writeComponent for any safetensors file: the `candidates` (key -> shape) within `maxWeightError` become I8.
    @discardableResult
    public static func write(weights sourcePath: String, candidates: [String: [Int]], maxWeightError: Double,
                             to path: String) throws -> [LayerError] {
        let file = try SafetensorsFile(path: sourcePath)
        if let q = file.entries.values.first(where: { $0.dtype == .I8 }) {
            throw SafetensorsError(file: sourcePath, tensor: q.name, problem: "is already int8; quantize the float32 model it was made from")
        }
        var writer = SafetensorsWriter()
        var report: [LayerError] = []
        for name in file.names {
            guard [.F32, .F16, .BF16, .F64].contains(file.entries[name]!.dtype) else {
                // Integer buffers (a text encoder's position_ids) are copied as they are.
                let v = try file.integers(name)
                writer.add(name, int64: v.values, shape: v.shape)
                continue
            }
            let t = try file.floats(name)
            guard let shape = candidates[name], shape == t.shape else { writer.add(name, t); continue }
            let q = Int8Weights.quantize(t)
            let error = TensorError.relativeL2(Int8Weights.dequantize(q).data, t.data)
            let keep = error <= maxWeightError
            report.append(LayerError(key: name, shape: t.shape, weightRelativeL2: error, int8: keep))
            if keep {
                writer.add(name, int8: q.codes, shape: t.shape)
                writer.add(name + Int8Weights.scaleSuffix, Tensor(shape: [t.shape[0]], data: q.scales))
            } else {
                writer.add(name, t)
            }
        }
        writer.metadata = ["format": "pt", Int8Weights.metadataKey: Int8Weights.formatName,
                           "onestep.scale_suffix": Int8Weights.scaleSuffix,
                           "onestep.quantized": report.filter(\.int8).map(\.key).joined(separator: ","),
                           Int8Policy.metadataKey: policyName, maxWeightErrorKey: String(maxWeightError)]
        try writer.write(to: path)
        return report
    }
}

/// A weight source that quantizes another in memory exactly as LatentInt8.writeComponent would write it: the
/// selected weights read as their int8 codes (and their dequantized floats), so a network built on it runs the
/// same int8 layers, with the same bits, as one loaded from the written file. For benchmarks (random full-size
/// weights) and tests; `RandomWeights().quantized(plan)` is the bench's int8 switch.
public final class QuantizingWeights: WeightSource, @unchecked Sendable {
    // Only used during single-threaded model construction.
    let base: WeightSource
    let selected: Set<String>
    private var last: (key: String, q: Int8Tensor)?

    /// `selected`: the keys to quantize (e.g. LatentInt8.candidates(plan)); every other key is read from `base` as is.
    public init(_ base: WeightSource, selected: Set<String>) {
        self.base = base
        self.selected = selected
    }

    public func contains(_ key: String) -> Bool { base.contains(key) }

    public func tensor(_ key: String, shape: [Int]) throws -> Tensor {
        guard let q = try int8(key, shape: shape) else { return try base.tensor(key, shape: shape) }
        return Int8Weights.dequantize(q)
    }

    public func int8(_ key: String, shape: [Int]) throws -> Int8Tensor? {
        guard selected.contains(key) else { return nil }
        if let last, last.key == key, last.q.shape == shape { return last.q }
        let q = Int8Weights.quantize(try base.tensor(key, shape: shape))
        last = (key, q)
        return q
    }
}

extension WeightSource {
    /// This source with every int8 candidate of `plan` (LatentInt8.candidates) quantized in memory; no error
    /// threshold (a file written with the default threshold keeps the same layers int8 unless a weight is
    /// badly conditioned).
    public func quantized(_ plan: LatentPlan) -> QuantizingWeights {
        QuantizingWeights(self, selected: Set(LatentInt8.candidates(plan).map(\.key)))
    }
}

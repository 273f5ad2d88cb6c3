// The subset of transformers' CLIPTextConfig (text_encoder/config.json) that Onestep runs. Keys and defaults match
// transformers 5 configuration_clip.py CLIPTextConfig; values outside the subset, and keys that are neither read
// here nor known to leave last_hidden_state unchanged, are refused with the key named.
import Foundation

/// The MLP activation (hidden_act), as transformers' ACT2FN defines it.
public enum CLIPActivation: String, Sendable, CaseIterable {
    /// x * sigmoid(1.702 x) (QuickGELUActivation): OpenAI CLIP ViT-L/14, SD 1.x.
    case quickGELU = "quick_gelu"
    /// 0.5 x (1 + erf(x / sqrt 2)) (GELUActivation, exact): OpenCLIP ViT-H/14, SD 2.x.
    case gelu = "gelu"
}

public struct CLIPTextConfig: Sendable, Equatable {
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var maxPositionEmbeddings: Int
    public var layerNormEps: Float
    public var hiddenAct: CLIPActivation

    public var headDim: Int { hiddenSize / numAttentionHeads }

    public init(vocabSize: Int = 49408, hiddenSize: Int = 512, intermediateSize: Int = 2048, numHiddenLayers: Int = 12,
                numAttentionHeads: Int = 8, maxPositionEmbeddings: Int = 77, layerNormEps: Float = 1e-5,
                hiddenAct: CLIPActivation = .quickGELU) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.layerNormEps = layerNormEps
        self.hiddenAct = hiddenAct
    }

    /// Keys read below.
    static let modelKeys: Set<String> = [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "layer_norm_eps", "hidden_act", "model_type", "architectures",
    ]
    /// Keys that do not change last_hidden_state in eval: token ids used only for pooling or generation,
    /// dropout (off in eval), initialisation, the projection (CLIPTextModelWithProjection's text_projection, not run
    /// here), bookkeeping, and the generic PretrainedConfig fields transformers 4.x wrote into every config.json.
    static let ignoredKeys: Set<String> = [
        "bos_token_id", "eos_token_id", "pad_token_id", "projection_dim", "attention_dropout", "dropout",
        "initializer_factor", "initializer_range", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
        "_commit_hash", "_attn_implementation_autoset", "output_attentions", "output_hidden_states", "return_dict",
        "use_return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
        "id2label", "label2id", "problem_type", "torchscript", "pruned_heads", "tie_word_embeddings", "tie_encoder_decoder",
        "cross_attention_hidden_size", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
        "sep_token_id", "decoder_start_token_id", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
        "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
        "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss",
        "use_bfloat16", "xla_device", "gradient_checkpointing",
    ]

    /// Reads text_encoder/config.json. Throws ModelLoadError naming the file and the key.
    public static func load(path: String) throws -> CLIPTextConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be read; a text encoder folder needs config.json (CLIPTextModel)")
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw ModelLoadError(path: path, problem: "is not valid JSON (\(error.localizedDescription))")
        }
        guard let dict = json as? [String: Any] else { throw ModelLoadError(path: path, problem: "is not a JSON object") }
        do { return try CLIPTextConfig(json: dict) } catch let e as ConfigError {
            throw ModelLoadError(path: path, problem: e.description)
        }
    }

    /// - Throws: ConfigError naming the key.
    public init(json d: [String: Any]) throws {
        for key in d.keys.sorted() where !Self.modelKeys.contains(key) && !Self.ignoredKeys.contains(key) {
            throw ConfigError(key: key, problem: "is not part of the supported CLIPTextModel subset (\(Self.modelKeys.sorted().joined(separator: ", ")))")
        }
        if let t = d["model_type"], !(t is NSNull) {
            guard let s = t as? String, s == "clip_text_model" || s == "clip" else {
                throw ConfigError(key: "model_type", problem: "\(t) is not supported; only clip_text_model is")
            }
        }
        if let a = d["architectures"], !(a is NSNull) {
            let supported: Set<String> = ["CLIPTextModel", "CLIPTextModelWithProjection"]
            guard let list = a as? [String], list.allSatisfy(supported.contains) else {
                throw ConfigError(key: "architectures", problem: "\(a) is not supported; only CLIPTextModel (or CLIPTextModelWithProjection, run without its projection) is")
            }
        }
        let r = ConfigReader(d)
        vocabSize = try r.int("vocab_size", default: 49408, range: 1...1_000_000)
        hiddenSize = try r.int("hidden_size", default: 512, range: 1...16384)
        intermediateSize = try r.int("intermediate_size", default: 2048, range: 1...65536)
        numHiddenLayers = try r.int("num_hidden_layers", default: 12, range: 1...128)
        numAttentionHeads = try r.int("num_attention_heads", default: 8, range: 1...256)
        maxPositionEmbeddings = try r.int("max_position_embeddings", default: 77, range: 1...4096)
        layerNormEps = try r.float("layer_norm_eps", default: 1e-5)
        if let v = d["hidden_act"], !(v is NSNull) {
            guard let s = v as? String, let a = CLIPActivation(rawValue: s) else {
                throw ConfigError(key: "hidden_act", problem: "\(v) is not supported (supported: \(CLIPActivation.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            hiddenAct = a
        } else {
            hiddenAct = .quickGELU
        }
        guard hiddenSize % numAttentionHeads == 0 else {
            throw ConfigError(key: "num_attention_heads", problem: "\(numAttentionHeads) does not divide hidden_size \(hiddenSize)")
        }
    }
}

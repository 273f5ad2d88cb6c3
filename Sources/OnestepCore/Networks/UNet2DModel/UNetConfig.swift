// The subset of diffusers' UNet2DModel configuration (config.json) that Onestep runs.
// Keys and defaults match diffusers UNet2DModel.__init__; a value outside the subset is refused at load
// with an error naming the key and the value, never silently approximated.
import Foundation

public enum DownBlockType: String, Sendable, CaseIterable {
    case down = "DownBlock2D", attnDown = "AttnDownBlock2D", resnetDownsample = "ResnetDownsampleBlock2D"
    var hasAttention: Bool { self == .attnDown }
}

public enum UpBlockType: String, Sendable, CaseIterable {
    case up = "UpBlock2D", attnUp = "AttnUpBlock2D", resnetUpsample = "ResnetUpsampleBlock2D"
    var hasAttention: Bool { self == .attnUp }
}

/// How a resnet block applies the time embedding (resnet_time_scale_shift).
public enum TimeConditioning: String, Sendable { case `default`, scaleShift = "scale_shift" }

/// How AttnDown/AttnUp blocks resample (downsample_type / upsample_type): a strided conv, or a resnet block.
public enum ResampleKind: String, Sendable { case conv, resnet }

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var key: String
    public var problem: String
    /// "config key 'K': PROBLEM"; a problem with the whole file (key "(file)") is the problem alone.
    public var description: String { key == "(file)" ? problem : "config key '\(key)': \(problem)" }
}

public struct UNetConfig: Sendable, Equatable {
    public var sampleSize: Int
    public var inChannels: Int
    public var outChannels: Int
    public var centerInputSample: Bool
    public var flipSinToCos: Bool
    public var freqShift: Int
    public var downBlockTypes: [DownBlockType]
    public var upBlockTypes: [UpBlockType]
    public var midBlock: Bool
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var midBlockScaleFactor: Float
    public var downsamplePadding: Int
    public var downsampleType: ResampleKind
    public var upsampleType: ResampleKind
    public var attentionHeadDim: Int?
    public var normNumGroups: Int
    public var attnNormNumGroups: Int?
    public var normEps: Float
    public var timeConditioning: TimeConditioning
    public var addAttention: Bool
    public var numClassEmbeds: Int?
    public var timeEmbeddingDim: Int?
    /// Class names by index, from "id2label" when the config has it (Onestep writes it; diffusers ignores it).
    /// With a null label it names the `numClasses` real classes only.
    public var classNames: [String]?
    /// The unconditional ("null") class of a classifier-free-guidance model, from "null_class_label" (Onestep's key;
    /// diffusers ignores it): always the embedding table's last row, num_class_embeds - 1, the convention of
    /// diffusers' DiT LabelEmbedding (class_dropout_prob > 0 adds one row, index num_classes; DiTPipeline's class_null).
    public var nullClassLabel: Int?

    /// The number of real classes: num_class_embeds, less the null label's row when there is one. nil: unconditional.
    public var numClasses: Int? { numClassEmbeds.map { nullClassLabel == nil ? $0 : $0 - 1 } }

    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }
    public var levels: Int { blockOutChannels.count }

    public static func load(path: String) throws -> UNetConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(key: "(file)", problem: "cannot be read; check that it exists and that this user may read it")
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw ConfigError(key: "(file)", problem: "is not valid JSON \(JSONSyntax.whereInvalid(data)); correct the file there")
        }
        guard let dict = json as? [String: Any] else {
            throw ConfigError(key: "(file)", problem: "is not a JSON object; a config.json holds one {...} of settings")
        }
        return try UNetConfig(json: dict)
    }

    public init(json d: [String: Any]) throws {
        let r = ConfigReader(d)
        if let cls = d["_class_name"] as? String, cls != "UNet2DModel" {
            throw ConfigError(key: "_class_name", problem: "\(cls) is not supported; only UNet2DModel is")
        }
        try r.require("time_embedding_type", oneOf: ["positional"], default: "positional")
        try r.require("act_fn", oneOf: ["silu", "swish"], default: "silu")
        try r.requireNull("class_embed_type")
        sampleSize = try r.squareSize("sample_size", range: 1...4096)
        inChannels = try r.int("in_channels", default: 3, range: 1...4)
        outChannels = try r.int("out_channels", default: 3, range: 1...4)
        centerInputSample = try r.bool("center_input_sample", default: false)
        flipSinToCos = try r.bool("flip_sin_to_cos", default: true)
        freqShift = try r.int("freq_shift", default: 0, range: 0...1)
        downBlockTypes = try r.strings("down_block_types", default: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]).map(ConfigReader.blockName).map { v in
            guard let t = DownBlockType(rawValue: v) else {
                throw ConfigError(key: "down_block_types", problem: "block type \(v) is not supported (supported: \(DownBlockType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            return t
        }
        upBlockTypes = try r.strings("up_block_types", default: ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]).map(ConfigReader.blockName).map { v in
            guard let t = UpBlockType(rawValue: v) else {
                throw ConfigError(key: "up_block_types", problem: "block type \(v) is not supported (supported: \(UpBlockType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            return t
        }
        let mid = r.d["mid_block_type"]
        if mid == nil || mid is NSNull { midBlock = r.d.keys.contains("mid_block_type") ? false : true } else {
            guard let m = mid as? String, m == "UNetMidBlock2D" else {
                throw ConfigError(key: "mid_block_type", problem: "\(mid!) is not supported; use UNetMidBlock2D or null")
            }
            midBlock = true
        }
        blockOutChannels = try r.ints("block_out_channels", default: [224, 448, 672, 896])
        layersPerBlock = try r.int("layers_per_block", default: 2, range: 1...16)
        midBlockScaleFactor = try r.float("mid_block_scale_factor", default: 1)
        downsamplePadding = try r.int("downsample_padding", default: 1, range: 0...1)
        downsampleType = try r.enumValue("downsample_type", default: .conv)
        upsampleType = try r.enumValue("upsample_type", default: .conv)
        attentionHeadDim = try r.optionalInt("attention_head_dim", default: 8)
        normNumGroups = try r.int("norm_num_groups", default: 32, range: 1...1024)
        attnNormNumGroups = try r.optionalInt("attn_norm_num_groups", default: nil)
        normEps = try r.float("norm_eps", default: 1e-5)
        timeConditioning = try r.enumValue("resnet_time_scale_shift", default: .default)
        addAttention = try r.bool("add_attention", default: true)
        numClassEmbeds = try r.optionalInt("num_class_embeds", default: nil)
        // diffusers: `time_embedding_dim or block_out_channels[0] * 4`, so 0 also means the default.
        timeEmbeddingDim = JSONValues.integer(r.d["time_embedding_dim"] as Any) == 0 ? nil : try r.optionalInt("time_embedding_dim", default: nil)
        nullClassLabel = try r.optionalInt("null_class_label", default: nil)
        if let null = nullClassLabel {
            guard let k = numClassEmbeds, k >= 2 else {
                throw ConfigError(key: "null_class_label", problem: "\(null) needs num_class_embeds of at least 2 (the real classes plus the null row)")
            }
            guard null == k - 1 else {
                throw ConfigError(key: "null_class_label", problem: "\(null) must be the last class embedding, num_class_embeds - 1 = \(k - 1) (the null label follows the real classes, as diffusers' DiT LabelEmbedding)")
            }
        }
        classNames = try Self.parseLabels(r.d["id2label"], count: numClasses)
        try validate()
    }

    static func parseLabels(_ v: Any?, count: Int?) throws -> [String]? {
        guard let v, !(v is NSNull) else { return nil }
        guard let map = v as? [String: Any], let count else {
            throw ConfigError(key: "id2label", problem: "must be an object {\"0\": \"name\", ...} and needs num_class_embeds")
        }
        var names = [String](repeating: "", count: count)
        for (k, name) in map {
            guard let i = Int(k), (0..<count).contains(i), let s = name as? String, !s.isEmpty else {
                throw ConfigError(key: "id2label", problem: "entry \(k): \(name) is not a class index below \(count) with a name")
            }
            names[i] = s
        }
        guard !names.contains("") else {
            throw ConfigError(key: "id2label", problem: "must name all \(count) classes")
        }
        guard Set(names).count == names.count else {
            throw ConfigError(key: "id2label", problem: "class names must be distinct")
        }
        return names
    }

    func validate() throws {
        guard !blockOutChannels.isEmpty, blockOutChannels.allSatisfy({ $0 > 0 && $0 <= 4096 }) else {
            throw ConfigError(key: "block_out_channels", problem: "\(blockOutChannels) must be 1 to 8 positive widths")
        }
        guard downBlockTypes.count == blockOutChannels.count else {
            throw ConfigError(key: "down_block_types", problem: "has \(downBlockTypes.count) blocks but block_out_channels has \(blockOutChannels.count)")
        }
        guard upBlockTypes.count == blockOutChannels.count else {
            throw ConfigError(key: "up_block_types", problem: "has \(upBlockTypes.count) blocks but down_block_types has \(downBlockTypes.count)")
        }
        let factor = 1 << (levels - 1)
        guard sampleSize % factor == 0 else {
            throw ConfigError(key: "sample_size", problem: "\(sampleSize) is not divisible by 2^(levels-1) = \(factor)")
        }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw ConfigError(key: "norm_num_groups", problem: "\(normNumGroups) does not divide block width \(c)")
        }
        if let g = attnNormNumGroups, blockOutChannels.last! % g != 0 {
            throw ConfigError(key: "attn_norm_num_groups", problem: "\(g) does not divide \(blockOutChannels.last!)")
        }
        if let hd = attentionHeadDim {
            for (i, c) in blockOutChannels.enumerated()
            where (downBlockTypes[i].hasAttention || upBlockTypes[levels - 1 - i].hasAttention || (i == levels - 1 && midBlock && addAttention))
                && (hd <= 0 || c % hd != 0) {
                throw ConfigError(key: "attention_head_dim", problem: "\(hd) does not divide attention width \(c)")
            }
        }
        if let n = numClassEmbeds, n < 1 || n > 100_000 {
            throw ConfigError(key: "num_class_embeds", problem: "\(n) must be between 1 and 100000")
        }
        if let t = timeEmbeddingDim, t < 1 || t > 65536 {
            throw ConfigError(key: "time_embedding_dim", problem: "\(t) is out of range")
        }
        if blockOutChannels[0] % 2 != 0 {
            throw ConfigError(key: "block_out_channels", problem: "first width \(blockOutChannels[0]) must be even (sinusoidal embedding)")
        }
        // The sinusoidal embedding divides by width/2 - freq_shift: at zero every timestep embeds as NaN.
        if blockOutChannels[0] / 2 <= freqShift {
            throw ConfigError(key: "freq_shift", problem: "\(freqShift) with a first block width of \(blockOutChannels[0]) leaves the time embedding no frequencies (it divides by width/2 - freq_shift = 0); use a first width of at least \(2 * (freqShift + 1))")
        }
    }

    /// The dictionary diffusers writes for this config (plus id2label when there are class names).
    public func json() -> [String: Any] {
        var d: [String: Any] = [
            "_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", "act_fn": "silu",
            "add_attention": addAttention, "attention_head_dim": attentionHeadDim.map { $0 as Any } ?? NSNull(),
            "attn_norm_num_groups": attnNormNumGroups.map { $0 as Any } ?? NSNull(),
            "block_out_channels": blockOutChannels, "center_input_sample": centerInputSample,
            "class_embed_type": NSNull(), "down_block_types": downBlockTypes.map(\.rawValue),
            "downsample_padding": downsamplePadding, "downsample_type": downsampleType.rawValue, "dropout": 0.0,
            "flip_sin_to_cos": flipSinToCos, "freq_shift": freqShift, "in_channels": inChannels,
            "layers_per_block": layersPerBlock, "mid_block_scale_factor": Double(midBlockScaleFactor),
            "mid_block_type": midBlock ? "UNetMidBlock2D" as Any : NSNull(), "norm_eps": Double(normEps),
            "norm_num_groups": normNumGroups, "num_class_embeds": numClassEmbeds.map { $0 as Any } ?? NSNull(),
            "num_train_timesteps": NSNull(), "out_channels": outChannels,
            "resnet_time_scale_shift": timeConditioning.rawValue, "sample_size": sampleSize,
            "time_embedding_dim": timeEmbeddingDim.map { $0 as Any } ?? NSNull(),
            "time_embedding_type": "positional", "up_block_types": upBlockTypes.map(\.rawValue),
            "upsample_type": upsampleType.rawValue,
        ]
        if let null = nullClassLabel { d["null_class_label"] = null }
        if let names = classNames {
            var m: [String: String] = [:]
            for (i, n) in names.enumerated() { m[String(i)] = n }
            d["id2label"] = m
        }
        return d
    }

    public func jsonString() -> String {
        let data = (try? JSONSerialization.data(withJSONObject: json(), options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

/// Typed access to config values with the key named in every error, reading each value in the forms diffusers
/// accepts (ConfigMixin.extract_init_dict and UNet2DModel.__init__).
struct ConfigReader {
    let d: [String: Any]
    /// Keys listed in `_use_default_values` are dropped: diffusers writes that list for the values it filled in
    /// from `__init__` defaults and, on loading, ignores those keys so the current default applies
    /// (configuration_utils.py extract_init_dict).
    init(_ d: [String: Any]) {
        var d = d
        if let defaults = d["_use_default_values"] as? [Any] {
            for case let k as String in defaults { d[k] = nil }
        }
        d["_use_default_values"] = nil
        self.d = d
    }

    /// diffusers' get_down_block / get_up_block drop a legacy "UNetRes" prefix ("UNetResDownBlock2D").
    static func blockName(_ s: String) -> String { s.hasPrefix("UNetRes") ? String(s.dropFirst(7)) : s }

    /// `sample_size`: an int, or a pair [height, width] (diffusers: `int | tuple[int, int]`); Onestep generates
    /// square images, so a pair must be square.
    func squareSize(_ key: String, range: ClosedRange<Int>) throws -> Int {
        guard let v = present(key) else {
            throw ConfigError(key: key, problem: "is required (the image size; diffusers allows null but its pipelines then cannot pick a size)")
        }
        if let pair = v as? [Any] {
            guard pair.count == 2, let h = JSONValues.integer(pair[0]), let w = JSONValues.integer(pair[1]) else {
                throw ConfigError(key: key, problem: "\(pair) is not an integer or a [height, width] pair of integers")
            }
            guard h == w else { throw ConfigError(key: key, problem: "[\(h), \(w)] is not square; Onestep generates square images only") }
            guard range.contains(h) else {
                throw ConfigError(key: key, problem: "\(h) is outside the supported range \(range.lowerBound)...\(range.upperBound)")
            }
            return h
        }
        return try int(key, default: nil, range: range)
    }

    private func present(_ key: String) -> Any? {
        guard let v = d[key], !(v is NSNull) else { return nil }
        return v
    }

    func int(_ key: String, default def: Int?, range: ClosedRange<Int>) throws -> Int {
        guard let v = present(key) else {
            if let def { return def }
            throw ConfigError(key: key, problem: "is required")
        }
        guard let i = JSONValues.integer(v) else {
            throw ConfigError(key: key, problem: "\(v) is not an integer")
        }
        guard range.contains(i) else {
            throw ConfigError(key: key, problem: "\(i) is outside the supported range \(range.lowerBound)...\(range.upperBound)")
        }
        return i
    }

    func optionalInt(_ key: String, default def: Int?) throws -> Int? {
        guard d.keys.contains(key) else { return def }
        guard present(key) != nil else { return nil }
        return try int(key, default: nil, range: 1...1_000_000)
    }

    func float(_ key: String, default def: Float) throws -> Float {
        guard let v = present(key) else { return def }
        // Checked after the conversion to Float: 1e300 is a finite Double but an infinite Float, 1e-50 a zero one.
        guard let n = JSONValues.number(v), n.floatValue.isFinite, n.floatValue > 0 else {
            throw ConfigError(key: key, problem: "\(v) is not a positive number within Float range (about 1e-45 to 3e38)")
        }
        return n.floatValue
    }

    func bool(_ key: String, default def: Bool) throws -> Bool {
        guard let v = present(key) else { return def }
        guard let b = JSONValues.bool(v) else { throw ConfigError(key: key, problem: "\(v) is not true or false") }
        return b
    }

    func strings(_ key: String, default def: [String]) throws -> [String] {
        guard let v = present(key) else { return def }
        guard let a = v as? [Any], let s = a as? [String], !s.isEmpty, s.count <= 8 else {
            throw ConfigError(key: key, problem: "\(v) is not a list of 1 to 8 strings")
        }
        return s
    }

    func ints(_ key: String, default def: [Int]) throws -> [Int] {
        guard let v = present(key) else { return def }
        guard let a = v as? [Any], !a.isEmpty, a.count <= 8 else {
            throw ConfigError(key: key, problem: "\(v) is not a list of 1 to 8 integers")
        }
        return try a.map { e in
            guard let i = JSONValues.integer(e) else {
                throw ConfigError(key: key, problem: "\(e) is not an integer")
            }
            return i
        }
    }

    func enumValue<E: RawRepresentable>(_ key: String, default def: E) throws -> E where E.RawValue == String {
        guard let v = present(key) else { return def }
        guard let s = v as? String, let e = E(rawValue: s) else {
            throw ConfigError(key: key, problem: "\(v) is not supported")
        }
        return e
    }

    func require(_ key: String, oneOf allowed: [String], default def: String) throws {
        let v = present(key) ?? def
        guard let s = v as? String, allowed.contains(s) else {
            throw ConfigError(key: key, problem: "\(v) is not supported (supported: \(allowed.joined(separator: ", ")))")
        }
    }

    func requireNull(_ key: String) throws {
        if let v = present(key) {
            throw ConfigError(key: key, problem: "\(v) is not supported; only null (class embedding by num_class_embeds) is")
        }
    }
}

// The subset of diffusers' UNet2DConditionModel configuration (config.json) that Onestep runs: the SD 1.x / 2.x
// family (SD-Turbo, SDXS, LCM, TCD / Hyper-SD). Keys and defaults match diffusers unet_2d_condition.py
// UNet2DConditionModel.__init__ (0.42); a key or value outside the subset is refused naming the key.
import Foundation

public enum CrossAttnDownType: String, Sendable, CaseIterable { case crossAttnDown = "CrossAttnDownBlock2D", down = "DownBlock2D" }
public enum CrossAttnUpType: String, Sendable, CaseIterable { case crossAttnUp = "CrossAttnUpBlock2D", up = "UpBlock2D" }

public struct UNet2DConditionConfig: Sendable, Equatable {
    public var inChannels: Int
    public var outChannels: Int
    public var centerInputSample: Bool
    public var flipSinToCos: Bool
    public var freqShift: Int
    public var downBlockTypes: [CrossAttnDownType]
    public var upBlockTypes: [CrossAttnUpType]
    /// UNetMidBlock2DCrossAttn, or no mid block (`mid_block_type: null`, SDXS).
    public var midBlock: Bool
    public var blockOutChannels: [Int]
    /// Resnets per down block (up blocks have one more), per level.
    public var layersPerBlock: [Int]
    public var downsamplePadding: Int
    public var midBlockScaleFactor: Float
    public var normNumGroups: Int
    public var normEps: Float
    /// Text embedding width per level (cross_attention_dim).
    public var crossAttentionDim: [Int]
    public var transformerLayersPerBlock: [Int]
    /// Attention heads per level: num_attention_heads, else attention_head_dim (diffusers' legacy naming: it is
    /// the head count, "num_attention_heads = num_attention_heads or attention_head_dim").
    public var heads: [Int]
    public var onlyCrossAttention: [Bool]
    public var midBlockOnlyCrossAttention: Bool
    public var useLinearProjection: Bool
    /// LCM's guidance embedding width (time_embedding.cond_proj), or nil.
    public var timeCondProjDim: Int?
    public var convInKernel: Int
    public var convOutKernel: Int

    public var levels: Int { blockOutChannels.count }
    public var timeEmbedDim: Int { blockOutChannels[0] * 4 }

    static let knownKeys: Set<String> = [
        "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
        "down_block_types", "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels",
        "layers_per_block", "downsample_padding", "mid_block_scale_factor", "dropout", "act_fn", "norm_num_groups",
        "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
        "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim", "num_attention_heads", "dual_cross_attention",
        "use_linear_projection", "class_embed_type", "addition_embed_type", "addition_time_embed_dim", "num_class_embeds",
        "upcast_attention", "resnet_time_scale_shift", "resnet_skip_time_act", "resnet_out_scale_factor",
        "time_embedding_type", "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim",
        "conv_in_kernel", "conv_out_kernel", "projection_class_embeddings_input_dim", "attention_type",
        "class_embeddings_concat", "mid_block_only_cross_attention", "cross_attention_norm", "addition_embed_type_num_heads",
    ]

    public static func load(path: String) throws -> UNet2DConditionConfig {
        try UNet2DConditionConfig(json: try LatentConfigReading.load(path: path))
    }

    public init(json d: [String: Any]) throws {
        typealias R = LatentConfigReading
        let r = ConfigReader(d)
        try R.checkKeys(d, className: "UNet2DConditionModel", known: Self.knownKeys)
        try R.refuseNulls(d, ["in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift", "down_block_types",
                              "up_block_types", "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
                              "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
                              "transformer_layers_per_block", "attention_head_dim", "use_linear_projection", "conv_in_kernel",
                              "conv_out_kernel", "resnet_time_scale_shift", "time_embedding_type", "attention_type"])
        // Settings whose only supported value is diffusers' default (SD 1.x / 2.x have no other).
        try r.require("act_fn", oneOf: ["silu", "swish"], default: "silu")
        try r.require("time_embedding_type", oneOf: ["positional"], default: "positional")
        try r.require("resnet_time_scale_shift", oneOf: ["default"], default: "default")
        try r.require("attention_type", oneOf: ["default"], default: "default")
        for key in ["encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type", "addition_embed_type", "addition_time_embed_dim",
                    "num_class_embeds", "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act",
                    "projection_class_embeddings_input_dim", "cross_attention_norm", "reverse_transformer_layers_per_block"] {
            try R.requireNull(d, key, why: "not part of the SD 1.x / 2.x UNet")
        }
        for key in ["dual_cross_attention", "resnet_skip_time_act", "class_embeddings_concat"] {
            try R.requireBool(d, key, false, why: "not part of the SD 1.x / 2.x UNet")
        }
        _ = try r.bool("upcast_attention", default: false)   // float32 softmax either way
        _ = try R.number(d, "dropout", default: 0)             // inference: no dropout

        inChannels = try r.int("in_channels", default: 4, range: 1...64)
        outChannels = try r.int("out_channels", default: 4, range: 1...64)
        centerInputSample = try r.bool("center_input_sample", default: false)
        flipSinToCos = try r.bool("flip_sin_to_cos", default: true)
        freqShift = try r.int("freq_shift", default: 0, range: 0...1)
        blockOutChannels = try r.ints("block_out_channels", default: [320, 640, 1280, 1280])
        let levels = blockOutChannels.count
        downBlockTypes = try r.strings("down_block_types", default: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]).map { v in
            guard let t = CrossAttnDownType(rawValue: v) else {
                throw ConfigError(key: "down_block_types", problem: "block type \(v) is not supported (supported: CrossAttnDownBlock2D, DownBlock2D)")
            }
            return t
        }
        upBlockTypes = try r.strings("up_block_types", default: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]).map { v in
            guard let t = CrossAttnUpType(rawValue: v) else {
                throw ConfigError(key: "up_block_types", problem: "block type \(v) is not supported (supported: CrossAttnUpBlock2D, UpBlock2D)")
            }
            return t
        }
        guard downBlockTypes.count == levels else {
            throw ConfigError(key: "down_block_types", problem: "has \(downBlockTypes.count) blocks but block_out_channels has \(levels)")
        }
        guard upBlockTypes.count == levels else {
            throw ConfigError(key: "up_block_types", problem: "has \(upBlockTypes.count) blocks but down_block_types has \(levels)")
        }
        if !d.keys.contains("mid_block_type") { midBlock = true } else if R.isNull(d, "mid_block_type") { midBlock = false } else {
            guard let m = d["mid_block_type"] as? String, m == "UNetMidBlock2DCrossAttn" else {
                throw ConfigError(key: "mid_block_type", problem: "\(d["mid_block_type"]!) is not supported; use UNetMidBlock2DCrossAttn or null")
            }
            midBlock = true
        }
        layersPerBlock = try R.perLevelInts(d, "layers_per_block", default: 2, levels: levels, range: 1...16)
        downsamplePadding = try r.int("downsample_padding", default: 1, range: 0...1)
        midBlockScaleFactor = try r.float("mid_block_scale_factor", default: 1)
        // Read for its type only: diffusers passes it to ResnetDownsample/SimpleCrossAttn blocks, none of which
        // this subset has, so it changes nothing here.
        _ = try r.float("resnet_out_scale_factor", default: 1)
        normNumGroups = try r.int("norm_num_groups", default: 32, range: 1...1024)
        normEps = try r.float("norm_eps", default: 1e-5)
        crossAttentionDim = try R.perLevelInts(d, "cross_attention_dim", default: 1280, levels: levels, range: 1...16384)
        transformerLayersPerBlock = try R.perLevelInts(d, "transformer_layers_per_block", default: 1, levels: levels, range: 1...64)
        if R.isNull(d, "num_attention_heads") {
            heads = try R.perLevelInts(d, "attention_head_dim", default: 8, levels: levels, range: 1...1024)
        } else {
            heads = try R.perLevelInts(d, "num_attention_heads", default: nil, levels: levels, range: 1...1024)
        }
        let headsKey = R.isNull(d, "num_attention_heads") ? "attention_head_dim" : "num_attention_heads"
        for (i, c) in blockOutChannels.enumerated() where c % heads[i] != 0 {
            throw ConfigError(key: headsKey, problem: "\(heads[i]) heads do not divide block width \(c) (in UNet2DConditionModel configs attention_head_dim is the number of heads)")
        }
        onlyCrossAttention = try R.perLevelBools(d, "only_cross_attention", default: false, levels: levels)
        if R.isNull(d, "mid_block_only_cross_attention") {
            // diffusers: a single only_cross_attention bool also sets the mid block's; a list leaves it False.
            let single = d["only_cross_attention"].flatMap { JSONValues.bool($0) }
            midBlockOnlyCrossAttention = single ?? false
        } else {
            midBlockOnlyCrossAttention = try r.bool("mid_block_only_cross_attention", default: false)
        }
        useLinearProjection = try r.bool("use_linear_projection", default: false)
        timeCondProjDim = try r.optionalInt("time_cond_proj_dim", default: nil)
        convInKernel = try r.int("conv_in_kernel", default: 3, range: 1...7)
        convOutKernel = try r.int("conv_out_kernel", default: 3, range: 1...7)
        try validate()
    }

    func validate() throws {
        guard blockOutChannels.allSatisfy({ $0 > 0 && $0 <= 8192 }) else {
            throw ConfigError(key: "block_out_channels", problem: "\(blockOutChannels) must be 1 to 8 widths between 1 and 8192")
        }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw ConfigError(key: "norm_num_groups", problem: "\(normNumGroups) does not divide block width \(c)")
        }
        if convInKernel % 2 == 0 { throw ConfigError(key: "conv_in_kernel", problem: "\(convInKernel) must be odd") }
        if convOutKernel % 2 == 0 { throw ConfigError(key: "conv_out_kernel", problem: "\(convOutKernel) must be odd") }
        if blockOutChannels[0] % 2 != 0 || blockOutChannels[0] / 2 <= freqShift {
            throw ConfigError(key: "block_out_channels", problem: "first width \(blockOutChannels[0]) must be even and above 2 * freq_shift (sinusoidal time embedding)")
        }
        guard Set(crossAttentionDim).count == 1 else {
            throw ConfigError(key: "cross_attention_dim", problem: "\(crossAttentionDim) differ per level, but every block reads the same text embeddings; use one width")
        }
        if let t = timeCondProjDim, t > 65536 { throw ConfigError(key: "time_cond_proj_dim", problem: "\(t) is out of range") }
    }
}

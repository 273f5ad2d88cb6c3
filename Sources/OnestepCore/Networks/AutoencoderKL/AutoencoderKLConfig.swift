// The subset of diffusers' AutoencoderKL configuration (vae/config.json) whose decoder Onestep runs: the
// SD 1.x / 2.x VAE (DownEncoderBlock2D / UpDecoderBlock2D, group norm). Keys and defaults match diffusers
// autoencoders/autoencoder_kl.py AutoencoderKL.__init__; anything else is refused naming the key.
import Foundation

public struct AutoencoderKLConfig: Sendable, Equatable {
    public var latentChannels: Int
    public var outChannels: Int
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var normNumGroups: Int
    public var usePostQuantConv: Bool
    public var midBlockAddAttention: Bool
    /// The pipeline divides latents by it before decoding (the decoder itself does not).
    public var scalingFactor: Float
    /// Pipelines that set it decode latents / scaling_factor + shift_factor (SD 1.x / 2.x VAEs have none: nil).
    public var shiftFactor: Float?

    static let knownKeys: Set<String> = [
        "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
        "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor", "shift_factor", "latents_mean",
        "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
    ]

    public static func load(path: String) throws -> AutoencoderKLConfig {
        try AutoencoderKLConfig(json: try LatentConfigReading.load(path: path))
    }

    public init(json d: [String: Any]) throws {
        typealias R = LatentConfigReading
        let r = ConfigReader(d)
        try R.checkKeys(d, className: "AutoencoderKL", known: Self.knownKeys)
        try R.refuseNulls(d, ["out_channels", "up_block_types", "block_out_channels", "layers_per_block", "act_fn", "latent_channels",
                              "norm_num_groups", "scaling_factor", "use_post_quant_conv", "mid_block_add_attention"])
        try r.require("act_fn", oneOf: ["silu", "swish"], default: "silu")
        try R.requireNull(d, "latents_mean", why: "per-channel latent statistics are not supported")
        try R.requireNull(d, "latents_std", why: "per-channel latent statistics are not supported")
        _ = try r.bool("force_upcast", default: true)      // float32 throughout
        _ = try r.bool("use_quant_conv", default: true)    // encoder side
        _ = try r.int("in_channels", default: 3, range: 1...64)
        blockOutChannels = try r.ints("block_out_channels", default: [64])
        let levels = blockOutChannels.count
        let down = try r.strings("down_block_types", default: ["DownEncoderBlock2D"])
        guard down.allSatisfy({ $0 == "DownEncoderBlock2D" }) else {
            throw ConfigError(key: "down_block_types", problem: "\(down) is not supported; only DownEncoderBlock2D is")
        }
        let up = try r.strings("up_block_types", default: ["UpDecoderBlock2D"])
        guard up.allSatisfy({ $0 == "UpDecoderBlock2D" }) else {
            throw ConfigError(key: "up_block_types", problem: "\(up) is not supported; only UpDecoderBlock2D is")
        }
        guard up.count == levels else {
            throw ConfigError(key: "up_block_types", problem: "has \(up.count) blocks but block_out_channels has \(levels)")
        }
        outChannels = try r.int("out_channels", default: 3, range: 1...64)
        latentChannels = try r.int("latent_channels", default: 4, range: 1...64)
        layersPerBlock = try r.int("layers_per_block", default: 1, range: 1...16)
        normNumGroups = try r.int("norm_num_groups", default: 32, range: 1...1024)
        _ = try R.perLevelInts(d, "sample_size", default: 32, levels: 1, range: 1...65536)
        scalingFactor = try r.float("scaling_factor", default: 0.18215)
        shiftFactor = R.isNull(d, "shift_factor") ? nil : try R.number(d, "shift_factor", default: 0)
        usePostQuantConv = try r.bool("use_post_quant_conv", default: true)
        midBlockAddAttention = try r.bool("mid_block_add_attention", default: true)
        guard blockOutChannels.allSatisfy({ $0 > 0 && $0 <= 8192 }) else {
            throw ConfigError(key: "block_out_channels", problem: "\(blockOutChannels) must be widths between 1 and 8192")
        }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw ConfigError(key: "norm_num_groups", problem: "\(normNumGroups) does not divide block width \(c)")
        }
    }
}

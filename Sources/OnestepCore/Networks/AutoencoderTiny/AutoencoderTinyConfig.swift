// The subset of diffusers' AutoencoderTiny configuration (TAESD, vae/config.json) whose decoder Onestep runs.
// Keys and defaults match diffusers autoencoders/autoencoder_tiny.py AutoencoderTiny.__init__ (which also
// registers block_out_channels = decoder_block_out_channels); anything else is refused naming the key.
import Foundation

public struct AutoencoderTinyConfig: Sendable, Equatable {
    public var latentChannels: Int
    public var outChannels: Int
    public var decoderBlockOutChannels: [Int]
    public var numDecoderBlocks: [Int]
    /// The pipeline divides latents by it (and the AutoencoderTiny has shift_factor 0): TAESD uses 1.0.
    public var scalingFactor: Float
    public var shiftFactor: Float
    /// Used only by AutoencoderTiny.scale_latents / unscale_latents (training helpers), not by decode.
    public var latentMagnitude: Float
    public var latentShift: Float

    static let knownKeys: Set<String> = [
        "in_channels", "out_channels", "encoder_block_out_channels", "decoder_block_out_channels", "act_fn", "upsample_fn",
        "latent_channels", "upsampling_scaling_factor", "num_encoder_blocks", "num_decoder_blocks", "latent_magnitude",
        "latent_shift", "force_upcast", "scaling_factor", "shift_factor", "block_out_channels",
    ]

    public static func load(path: String) throws -> AutoencoderTinyConfig {
        try AutoencoderTinyConfig(json: try LatentConfigReading.load(path: path))
    }

    public init(json d: [String: Any]) throws {
        typealias R = LatentConfigReading
        let r = ConfigReader(d)
        try R.checkKeys(d, className: "AutoencoderTiny", known: Self.knownKeys)
        try R.refuseNulls(d, ["out_channels", "decoder_block_out_channels", "act_fn", "upsample_fn", "latent_channels",
                              "upsampling_scaling_factor", "num_decoder_blocks", "scaling_factor", "shift_factor"])
        try r.require("act_fn", oneOf: ["relu"], default: "relu")
        try r.require("upsample_fn", oneOf: ["nearest"], default: "nearest")
        _ = try r.int("upsampling_scaling_factor", default: 2, range: 2...2)
        _ = try r.bool("force_upcast", default: false)
        _ = try r.int("in_channels", default: 3, range: 1...64)
        _ = try r.ints("encoder_block_out_channels", default: [64, 64, 64, 64])
        _ = try r.ints("num_encoder_blocks", default: [1, 3, 3, 3])
        outChannels = try r.int("out_channels", default: 3, range: 1...64)
        latentChannels = try r.int("latent_channels", default: 4, range: 1...64)
        decoderBlockOutChannels = try r.ints("decoder_block_out_channels", default: [64, 64, 64, 64])
        numDecoderBlocks = try r.ints("num_decoder_blocks", default: [3, 3, 3, 1])
        scalingFactor = try r.float("scaling_factor", default: 1)
        shiftFactor = try R.number(d, "shift_factor", default: 0)
        latentMagnitude = try r.float("latent_magnitude", default: 3)
        latentShift = try R.number(d, "latent_shift", default: 0.5)
        guard numDecoderBlocks.count == decoderBlockOutChannels.count else {
            throw ConfigError(key: "num_decoder_blocks", problem: "has \(numDecoderBlocks.count) entries but decoder_block_out_channels has \(decoderBlockOutChannels.count)")
        }
        guard numDecoderBlocks.allSatisfy({ (0...64).contains($0) }) else {
            throw ConfigError(key: "num_decoder_blocks", problem: "\(numDecoderBlocks) must be block counts between 0 and 64")
        }
        // DecoderTiny's conv after each level keeps that level's width, so the next level's blocks only fit if
        // every level has the same width (diffusers builds other configs but cannot run them).
        guard let w = decoderBlockOutChannels.first, w > 0, w <= 8192, decoderBlockOutChannels.allSatisfy({ $0 == w }) else {
            throw ConfigError(key: "decoder_block_out_channels", problem: "\(decoderBlockOutChannels) must be one width between 1 and 8192 repeated (DecoderTiny keeps each level's width)")
        }
        if let b = d["block_out_channels"], !(b is NSNull) {
            guard try r.ints("block_out_channels", default: []) == decoderBlockOutChannels else {
                throw ConfigError(key: "block_out_channels", problem: "\(b) differs from decoder_block_out_channels (diffusers registers it as a copy)")
            }
        }
    }
}

// The full-size text-to-image pipelines `onestep-serve bench --config sd-turbo|sdxs` measures (issue 13's "Test
// data"), as the config.json files diffusers and transformers save, plus two tiny variants of the same families
// (the golden *_tiny sizes) that check the bench itself in seconds. BenchLatentFolder writes them with random
// weights into a temporary pipeline folder, which the normal loader then reads.
import Foundation

struct LatentBenchConfig {
    var name: String
    var unet: [String: Any]
    var textEncoder: [String: Any]
    var vae: [String: Any]
    var scheduler: [String: Any]
    /// The golden folder whose tokenizer/ (the real CLIP vocabulary) is copied: its pad token is this family's.
    var tokenizerGolden: String
    /// Image side in pixels the bench generates (unet sample_size x 8).
    var imageSide: Int { ((unet["sample_size"] as? Int) ?? 64) * 8 }

    nonisolated(unsafe) static let all: [String: LatentBenchConfig] = [
        "sd-turbo": sdTurbo, "sdxs": sdxs, "sd-turbo-tiny": sdTurboTiny, "sdxs-tiny": sdxsTiny,
    ]
    static var names: [String] { all.keys.sorted() }

    /// stabilityai/sd-turbo: the SD 2.1-base UNet, the OpenCLIP ViT-H text tower without its last layer (23 layers,
    /// width 1024, gelu: SD 2 folders already drop it) and SD's AutoencoderKL (128/256/512/512).
    nonisolated(unsafe) static let sdTurbo = LatentBenchConfig(
        name: "sd-turbo",
        unet: [
            "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": NSNull(),
            "only_cross_attention": false, "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "upcast_attention": false, "use_linear_projection": true,
        ],
        textEncoder: clipText(width: 1024, intermediate: 4096, layers: 23, heads: 16, act: "gelu", projection: 1024),
        vae: [
            "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3,
            "down_block_types": Array(repeating: "DownEncoderBlock2D", count: 4), "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "out_channels": 3, "sample_size": 768, "scaling_factor": 0.18215,
            "up_block_types": Array(repeating: "UpDecoderBlock2D", count: 4),
        ],
        scheduler: eulerTrailing, tokenizerGolden: "sd_turbo_tiny")

    /// IDKiro/sdxs-512-dreamshaper: DownBlock2D + 2 CrossAttnDownBlock2D, one layer per block, no mid block, 8 heads,
    /// the CLIP ViT-L/14 text tower (12 layers, 768, quick_gelu) and the TAESD decoder (madebyollin/taesd).
    nonisolated(unsafe) static let sdxs = LatentBenchConfig(
        name: "sdxs",
        unet: [
            "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 768, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
            "mid_block_type": NSNull(), "in_channels": 4, "out_channels": 4, "norm_num_groups": 32, "sample_size": 64,
            "use_linear_projection": false, "flip_sin_to_cos": true, "freq_shift": 0,
        ],
        textEncoder: clipText(width: 768, intermediate: 3072, layers: 12, heads: 12, act: "quick_gelu", projection: 768),
        vae: taesd, scheduler: eulerTrailing, tokenizerGolden: "sdxs_tiny")

    /// SD-Turbo's layout at the golden sd_turbo_tiny widths (64x64 images).
    nonisolated(unsafe) static let sdTurboTiny = LatentBenchConfig(
        name: "sd-turbo-tiny",
        unet: [
            "_class_name": "UNet2DConditionModel", "attention_head_dim": [2, 4, 4], "block_out_channels": [32, 64, 64],
            "cross_attention_dim": 32, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 2,
            "norm_num_groups": 16, "sample_size": 8, "use_linear_projection": true, "in_channels": 4, "out_channels": 4,
        ],
        textEncoder: clipText(width: 32, intermediate: 64, layers: 2, heads: 4, act: "gelu", projection: 32),
        vae: [
            "_class_name": "AutoencoderKL", "block_out_channels": [32, 32, 64, 64], "latent_channels": 4, "layers_per_block": 1,
            "norm_num_groups": 16, "down_block_types": Array(repeating: "DownEncoderBlock2D", count: 4),
            "up_block_types": Array(repeating: "UpDecoderBlock2D", count: 4), "sample_size": 64, "scaling_factor": 0.18215,
        ],
        scheduler: eulerTrailing, tokenizerGolden: "sd_turbo_tiny")

    /// SDXS's layout at the golden sdxs_tiny widths, with the full TAESD decoder (as sdxs_tiny has).
    nonisolated(unsafe) static let sdxsTiny = LatentBenchConfig(
        name: "sdxs-tiny",
        unet: [
            "_class_name": "UNet2DConditionModel", "attention_head_dim": 4, "block_out_channels": [32, 64, 64],
            "cross_attention_dim": 32, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
            "mid_block_type": NSNull(), "norm_num_groups": 16, "sample_size": 8, "in_channels": 4, "out_channels": 4,
        ],
        textEncoder: clipText(width: 32, intermediate: 64, layers: 2, heads: 4, act: "quick_gelu", projection: 32),
        vae: taesd, scheduler: eulerTrailing, tokenizerGolden: "sdxs_tiny")

    /// transformers CLIPTextConfig as CLIPTextModel.save_pretrained writes it, without the float fields whose
    /// value is whole (JSONSerialization writes 1.0 as 1, which transformers 5's strict config refuses for
    /// initializer_factor); transformers fills their defaults, and our loader ignores them.
    static func clipText(width: Int, intermediate: Int, layers: Int, heads: Int, act: String, projection: Int) -> [String: Any] {
        ["architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 2,
         "hidden_act": act, "hidden_size": width, "initializer_range": 0.02,
         "intermediate_size": intermediate, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
         "model_type": "clip_text_model", "num_attention_heads": heads, "num_hidden_layers": layers, "pad_token_id": 1,
         "projection_dim": projection, "vocab_size": 49408]
    }

    /// madebyollin/taesd's config.json (diffusers AutoencoderTiny).
    nonisolated(unsafe) static let taesd: [String: Any] = [
        "_class_name": "AutoencoderTiny", "act_fn": "relu", "decoder_block_out_channels": [64, 64, 64, 64],
        "encoder_block_out_channels": [64, 64, 64, 64], "force_upcast": false, "in_channels": 3, "latent_channels": 4,
        "latent_magnitude": 3, "latent_shift": 0.5, "num_decoder_blocks": [3, 3, 3, 1], "num_encoder_blocks": [1, 3, 3, 3],
        "out_channels": 3, "scaling_factor": 1.0, "upsampling_scaling_factor": 2,
    ]

    /// sd-turbo's scheduler (EulerDiscreteScheduler, trailing spacing: one step is timestep 999).
    nonisolated(unsafe) static let eulerTrailing: [String: Any] = [
        "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
        "timestep_spacing": "trailing", "use_karras_sigmas": false,
    ]
}

import Foundation
import XCTest
@testable import OnestepCore

/// The latent networks' config types: the golden configs parse to what diffusers builds, and every key or
/// value outside the subset is refused naming the key.
final class LatentConfigTests: XCTestCase {
    func json(_ path: String) throws -> [String: Any] { try LatentConfigReading.load(path: Fixtures.golden + "/" + path) }

    func assertRefused(_ d: [String: Any], key: String, _ make: ([String: Any]) throws -> Any, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try make(d), file: file, line: line) { e in
            XCTAssertEqual((e as? ConfigError)?.key, key, "\(e)", file: file, line: line)
        }
    }

    func testUNetConfigsParse() throws {
        let turbo = try UNet2DConditionConfig(json: try json("sd_turbo_tiny/unet/config.json"))
        XCTAssertEqual(turbo.heads, [2, 4, 4])
        XCTAssertTrue(turbo.useLinearProjection)
        XCTAssertTrue(turbo.midBlock)
        let sdxs = try UNet2DConditionConfig(json: try json("sdxs_tiny/unet/config.json"))
        XCTAssertFalse(sdxs.midBlock)
        XCTAssertEqual(sdxs.heads, [4, 4, 4])
        XCTAssertEqual(try UNet2DConditionConfig(json: try json("lcm_tiny/unet/config.json")).timeCondProjDim, 16)
    }

    func testUNetConfigRefusals() throws {
        let base = try json("sd_turbo_tiny/unet/config.json")
        let make = { (d: [String: Any]) in try UNet2DConditionConfig(json: d) }
        func with(_ key: String, _ v: Any) -> [String: Any] { var d = base; d[key] = v; return d }
        assertRefused(with("addition_embed_type", "text_time"), key: "addition_embed_type", make)   // SDXL
        assertRefused(with("class_embed_type", "timestep"), key: "class_embed_type", make)
        assertRefused(with("down_block_types", ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]), key: "down_block_types", make)
        assertRefused(with("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"), key: "mid_block_type", make)
        assertRefused(with("resnet_time_scale_shift", "scale_shift"), key: "resnet_time_scale_shift", make)
        assertRefused(with("attention_head_dim", [2, 4, 5]), key: "attention_head_dim", make)
        assertRefused(with("attention_head_dim", [2, 4]), key: "attention_head_dim", make)
        assertRefused(with("num_attention_heads", 3), key: "num_attention_heads", make)
        assertRefused(with("cross_attention_dim", [32, 64, 32]), key: "cross_attention_dim", make)
        assertRefused(with("dual_cross_attention", true), key: "dual_cross_attention", make)
        assertRefused(with("some_new_setting", 1), key: "some_new_setting", make)
        assertRefused(with("_class_name", "UNet2DModel"), key: "_class_name", make)
        assertRefused(with("norm_num_groups", 7), key: "norm_num_groups", make)
        assertRefused(with("norm_num_groups", NSNull()), key: "norm_num_groups", make)   // diffusers: no conv_norm_out
        assertRefused(with("attention_head_dim", NSNull()), key: "attention_head_dim", make)
        assertRefused(with("layers_per_block", [2, 2]), key: "layers_per_block", make)
        // num_attention_heads, when given, is the head count (diffusers: num_attention_heads or attention_head_dim).
        XCTAssertEqual(try make(with("num_attention_heads", 8)).heads, [8, 8, 8])
    }

    func testVAEConfigRefusals() throws {
        let kl = try json("sd_turbo_tiny/vae/config.json")
        let makeKL = { (d: [String: Any]) in try AutoencoderKLConfig(json: d) }
        XCTAssertEqual(try makeKL(kl).scalingFactor, 0.18215)
        func with(_ d: [String: Any], _ key: String, _ v: Any) -> [String: Any] { var d = d; d[key] = v; return d }
        assertRefused(with(kl, "latents_mean", [0.1, 0.2, 0.3, 0.4]), key: "latents_mean", makeKL)
        assertRefused(with(kl, "up_block_types", ["UpDecoderBlock2D"]), key: "up_block_types", makeKL)
        assertRefused(with(kl, "act_fn", "gelu"), key: "act_fn", makeKL)
        assertRefused(with(kl, "norm_type", "spatial"), key: "norm_type", makeKL)
        assertRefused(with(kl, "block_out_channels", NSNull()), key: "block_out_channels", makeKL)
        let tiny = try json("sdxs_tiny/vae/config.json")
        let makeTiny = { (d: [String: Any]) in try AutoencoderTinyConfig(json: d) }
        XCTAssertEqual(try makeTiny(tiny).numDecoderBlocks, [3, 3, 3, 1])
        assertRefused(with(tiny, "upsample_fn", "bilinear"), key: "upsample_fn", makeTiny)
        assertRefused(with(tiny, "decoder_block_out_channels", [64, 32, 64, 64]), key: "decoder_block_out_channels", makeTiny)
        assertRefused(with(tiny, "num_decoder_blocks", [3, 3, 3]), key: "num_decoder_blocks", makeTiny)
        assertRefused(with(tiny, "upsampling_scaling_factor", 4), key: "upsampling_scaling_factor", makeTiny)
    }

    /// The plans name exactly the checkpoint's tensors (the decoder side of the VAEs).
    func testPlansNameTheCheckpointKeys() throws {
        for name in ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny"] {
            let unetFile = try SafetensorsFile(path: Fixtures.golden + "/\(name)/unet/diffusion_pytorch_model.safetensors")
            let unetPlan = UNet2DConditionModel.plan(try UNet2DConditionConfig(json: try json("\(name)/unet/config.json")))
            let timeKeys = Set(unetFile.names.filter { $0.hasPrefix("time_embedding.") })
            XCTAssertEqual(Set(unetPlan.parameters.map(\.key)).union(timeKeys), Set(unetFile.names), name)
            for p in unetPlan.parameters { XCTAssertEqual(unetFile.entries[p.key]?.shape, p.shape, p.key) }
        }
    }
}

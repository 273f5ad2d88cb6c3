import Foundation
import XCTest
@testable import OnestepCore

/// The latent networks of the text-to-image pipelines against diffusers' outputs in ../shared/golden/*_tiny
/// (T2I_README.md): unet_out and vae_decoded within relative L2 1e-5 (the tolerance the README states).
final class LatentGoldenTests: XCTestCase {
    static let folders = ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny", "tcd_tiny", "cfg_v_tiny"]
    static let tolerance = 1e-5

    func pipelineFolder(_ name: String) throws -> String {
        let p = Fixtures.golden + "/" + name
        guard FileManager.default.fileExists(atPath: p + "/model_index.json") else {
            XCTFail("golden pipeline \(name) not found at \(p); set ONESTEP_GOLDEN to the shared/golden folder")
            throw CocoaError(.fileNoSuchFile)
        }
        return p
    }

    func testUNetMatchesDiffusers() throws {
        for name in Self.folders {
            let dir = try pipelineFolder(name)
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            let unet = try UNet2DConditionModel.load(directory: dir + "/unet")
            let x = try io.floats("unet_x"), t = try io.floats("unet_t").data, ehs = try io.floats("unet_encoder_hidden_states")
            let cond = io.entries["unet_timestep_cond"] != nil ? try io.floats("unet_timestep_cond") : nil
            XCTAssertEqual(cond != nil, unet.config.timeCondProjDim != nil, "\(name): timestep_cond present iff time_cond_proj_dim")
            let expected = try io.floats("unet_out")
            let pool = BufferPool()
            let y = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, pool: pool)
            XCTAssertEqual(y.shape, expected.shape, name)
            let err = TensorError.relativeL2(y.data, expected.data)
            print("\(name) unet_out relative L2 \(err)")
            XCTAssertLessThanOrEqual(err, Self.tolerance, "\(name) unet_out")
            // Each image alone gives the same bits as in the batch, and two threads the same bits as one.
            let one = try unet.forward(x.slice(first: 1, count: 1), timesteps: [t[1]], encoderHiddenStates: ehs.slice(first: 1, count: 1),
                                       timestepCond: cond?.slice(first: 1, count: 1), pool: pool)
            XCTAssertEqual(one.data, y.slice(first: 1, count: 1).data, "\(name): batch invariance")
            let two = try unet.forward(x, timesteps: t, encoderHiddenStates: ehs, timestepCond: cond, pool: pool, threads: 2)
            XCTAssertEqual(two.data, y.data, "\(name): thread invariance")
        }
    }

    func testVAEDecodersMatchDiffusers() throws {
        for name in Self.folders {
            let dir = try pipelineFolder(name)
            let io = try SafetensorsFile(path: dir + "/io.safetensors")
            let latents = try io.floats("vae_latents"), expected = try io.floats("vae_decoded")
            let cfg = try LatentConfigReading.load(path: dir + "/vae/config.json")
            let pool = BufferPool()
            let decode: (Tensor) throws -> Tensor
            switch cfg["_class_name"] as? String {
            case "AutoencoderKL":
                let vae = try AutoencoderKLDecoder.load(directory: dir + "/vae")
                decode = { try vae.decode($0, pool: pool) }
            case "AutoencoderTiny":
                let vae = try AutoencoderTinyDecoder.load(directory: dir + "/vae")
                decode = { try vae.decode($0, pool: pool) }
            default:
                XCTFail("\(name): unexpected VAE class \(String(describing: cfg["_class_name"]))")
                continue
            }
            let y = try decode(latents)
            XCTAssertEqual(y.shape, expected.shape, name)
            let err = TensorError.relativeL2(y.data, expected.data)
            print("\(name) \(cfg["_class_name"]!) vae_decoded relative L2 \(err)")
            XCTAssertLessThanOrEqual(err, Self.tolerance, "\(name) vae_decoded")
            let one = try decode(latents.slice(first: 1, count: 1))
            XCTAssertEqual(one.data, y.slice(first: 1, count: 1).data, "\(name): batch invariance")
            if let vae = try? AutoencoderKLDecoder.load(directory: dir + "/vae") {
                // The GEMM path that full-size VAEs take for their 512-wide attention head (the tiny ones' 64-wide
                // head takes the C kernel): forced here for every head width.
                var runner = LatentRunner(plan: vae.plan, weights: vae.weights)
                runner.gemmAttentionAboveHeadDim = 0
                let out = runner.run(ChannelMajor.fromNCHW(latents, pool: pool), pool: pool)
                let viaGemm = ChannelMajor.toNCHW(out)
                out.release(to: pool)
                let e = TensorError.relativeL2(viaGemm.data, expected.data)
                print("\(name) vae_decoded with GEMM attention heads: relative L2 \(e)")
                XCTAssertLessThanOrEqual(e, Self.tolerance, "\(name) vae_decoded, GEMM attention")
            }
        }
    }

    /// Latent sizes not divisible by the UNet's overall upsampling factor (diffusers passes upsample_size to
    /// each upsampler) and non-square ones, against Golden/unet_odd_sizes.safetensors
    /// (scripts/golden/make_latent_odd_golden.py).
    func testUNetOddSizesMatchDiffusers() throws {
        let io = try SafetensorsFile(path: Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden/unet_odd_sizes.safetensors")
        let cases = io.names.filter { $0.hasSuffix("_out") }.map { String($0.dropLast(4)) }
        XCTAssertEqual(cases.count, 4)
        for key in cases {
            let folder = String(key[..<key.lastIndex(of: "_")!])
            let unet = try UNet2DConditionModel.load(directory: try pipelineFolder(folder) + "/unet")
            let cond = io.entries[key + "_cond"] != nil ? try io.floats(key + "_cond") : nil
            let y = try unet.forward(try io.floats(key + "_x"), timesteps: try io.floats(key + "_t").data,
                                     encoderHiddenStates: try io.floats(key + "_ehs"), timestepCond: cond, pool: BufferPool())
            let expected = try io.floats(key + "_out")
            XCTAssertEqual(y.shape, expected.shape, key)
            let err = TensorError.relativeL2(y.data, expected.data)
            print("\(key) unet_out relative L2 \(err)")
            XCTAssertLessThanOrEqual(err, Self.tolerance, key)
        }
    }

    /// Wrong shapes are refused with a message naming what the network needs.
    func testBadInputsAreRefused() throws {
        let dir = try pipelineFolder("lcm_tiny")
        let unet = try UNet2DConditionModel.load(directory: dir + "/unet")
        let x = Tensor(zeros: [2, 4, 8, 8]), ehs = Tensor(zeros: [2, 77, 32])
        XCTAssertThrowsError(try unet.forward(Tensor(zeros: [2, 3, 8, 8]), timesteps: [1, 2], encoderHiddenStates: ehs)) { e in
            XCTAssertTrue("\(e)".contains("(N, 4, H, W)"), "\(e)")
        }
        XCTAssertThrowsError(try unet.forward(x, timesteps: [1], encoderHiddenStates: ehs))
        XCTAssertThrowsError(try unet.forward(x, timesteps: [1, 2], encoderHiddenStates: Tensor(zeros: [2, 77, 16]))) { e in
            XCTAssertTrue("\(e)".contains("(2, tokens, 32)"), "\(e)")
        }
        XCTAssertThrowsError(try unet.forward(x, timesteps: [1, 2], encoderHiddenStates: ehs, timestepCond: Tensor(zeros: [2, 8])))
        let vae = try AutoencoderKLDecoder.load(directory: dir + "/vae")
        XCTAssertThrowsError(try vae.decode(Tensor(zeros: [1, 3, 8, 8])))
        // Too many positions for attention over all of them: refused before any allocation.
        XCTAssertThrowsError(try vae.decode(Tensor(zeros: [1, 4, 129, 128]))) { e in XCTAssertTrue("\(e)".contains("129x128"), "\(e)") }
        XCTAssertThrowsError(try unet.forward(Tensor(zeros: [2, 4, 1, 16385]), timesteps: [1, 2], encoderHiddenStates: ehs))
    }
}

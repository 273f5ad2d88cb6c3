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
}

// The server with DDPM-family models over real sockets: the sampler a folder names is the one served, its step
// limits are the request limits, a bare UNet without scheduler config is announced in the load log and /v1/models,
// and a served PNG has the pixels diffusers' DDIMPipeline gives for the same seed.

import Foundation
import PNGCodec
import XCTest
@testable import OnestepCore
@testable import OnestepServer

final class SamplerServingTests: XCTestCase {
    static let golden = Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden"

    func testDDPMFamilyModelsAreServedWithTheirSamplers() throws {
        let dir = Fixtures.tempDir("samplers"), fm = FileManager.default
        let unet = Self.golden + "/ddpm_cifar_tiny/unet"
        try fm.copyItem(atPath: Self.golden + "/ddpm_cifar_tiny", toPath: dir + "/cifar")   // model_index.json: DDPMScheduler
        for name in ["bare", "ddim"] {
            try fm.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: true)
            for f in ["config.json", "diffusion_pytorch_model.safetensors"] { try fm.copyItem(atPath: unet + "/" + f, toPath: dir + "/\(name)/" + f) }
        }
        // The DDIM config diffusers' DDIMPipeline ran for the golden case ddim4_s0.
        let io = try SafetensorsFile(path: Self.golden + "/sampler_golden.safetensors")
        let cases = try XCTUnwrap(try JSONSerialization.jsonObject(with: SchedulerConfig.quotingNonFiniteNumbers(Data(io.metadata["pipeline_cases"]!.utf8))) as? [[String: Any]])
        let ddim4 = try XCTUnwrap(cases.first { $0["name"] as? String == "ddim4_s0" })
        try JSONSerialization.data(withJSONObject: ddim4["scheduler"]!).write(to: URL(fileURLWithPath: dir + "/ddim/scheduler_config.json"))

        var logLines: [String] = []
        let registry = try ModelRegistry.load(directory: dir, preferred: "ddim", log: { logLines.append($0) })
        XCTAssertTrue(logLines.contains { $0.contains("model bare:") && $0.contains("assumed CMStochasticIterativeScheduler") }, "\(logLines)")
        XCTAssertTrue(logLines.contains { $0.contains("model ddim sampler: DDIMScheduler") }, "\(logLines)")
        let server = try RunningServer(models: .success(registry))

        let models = try XCTUnwrap(try server.get("/v1/models").json?["data"] as? [[String: Any]])
        func entry(_ id: String) throws -> [String: Any] { try XCTUnwrap(models.first { $0["id"] as? String == id }) }
        XCTAssertEqual(try entry("cifar")["scheduler"] as? String, "DDPMScheduler")
        XCTAssertEqual(try entry("cifar")["max_steps"] as? Int, 1000)
        XCTAssertEqual(try entry("ddim")["scheduler"] as? String, "DDIMScheduler")
        XCTAssertEqual(try entry("ddim")["default_steps"] as? Int, 50)
        XCTAssertNil(try entry("ddim")["sampler_assumed"])
        XCTAssertEqual(try entry("bare")["scheduler"] as? String, "CMStochasticIterativeScheduler")
        XCTAssertEqual(try entry("bare")["max_steps"] as? Int, 4)
        let note = try XCTUnwrap(try entry("bare")["sampler_assumed"] as? String)
        XCTAssertTrue(note.contains("scheduler_config.json") && note.contains("DDIMScheduler"), note)

        // diffusers' DDIMPipeline, seed 0, 4 steps, eta 0: the served PNG has its uint8 pixels.
        let png = try server.get("/v1/generate?model=ddim&seed=0&steps=4")
        XCTAssertEqual(png.status, 200, png.text)
        let image = try PNG.decode(png.body)
        XCTAssertEqual([image.width, image.height, image.channels], [8, 8, 3])
        XCTAssertEqual(image.pixels.map(Int64.init), try io.integers("uint8_ddim4_s0").values)

        // Step limits are the sampler's.
        let tooMany = try server.get("/v1/generate?model=ddim&seed=0&steps=1001")
        XCTAssertEqual(tooMany.status, 400)
        XCTAssertTrue(tooMany.errorMessage?.contains("1000") ?? false, tooMany.text)
        let bareTooMany = try server.get("/v1/generate?model=bare&seed=0&steps=5")
        XCTAssertEqual(bareTooMany.status, 400, bareTooMany.text)
    }
}

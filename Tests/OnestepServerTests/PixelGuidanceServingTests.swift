// Classifier-free guidance of class-conditional pixel models over real sockets: the diffusers DDPM teacher with a
// null label (models/shapes16-ddpm) takes `guidance_scale`, lists it in /v1/models `fields`, and answers the PNG
// that `ImagePipeline.withClassGuidance` gives (the code `onestep-serve generate --guidance` and the eval run),
// alone and inside a batch; 1 and no field give the same bytes; a consistency student with the same null row, an
// unconditional model and bad values are refused with a 400 that says why.

import Foundation
import XCTest
@testable import OnestepCore
@testable import OnestepServer

final class PixelGuidanceServingTests: XCTestCase {
    func testNullLabelTeacherTakesGuidanceScaleAndOthersRefuseIt() throws {
        let dir = Fixtures.tempDir("pixelguidance"), fm = FileManager.default
        defer { try? fm.removeItem(atPath: dir) }
        let teacher = Fixtures.repoRoot + "/models/shapes16-ddpm"
        try fm.copyItem(atPath: teacher, toPath: dir + "/ddpm")
        // The same UNet bare (no scheduler config): served as a consistency model, the form of a distilled student.
        try fm.copyItem(atPath: teacher + "/unet", toPath: dir + "/student")
        try fm.copyItem(atPath: Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden/ddpm_cifar_tiny", toPath: dir + "/uncond")
        let registry = try ModelRegistry.load(directory: dir, preferred: "ddpm", log: { _ in })
        let server = try RunningServer(models: .success(registry))

        let models = try XCTUnwrap(try server.get("/v1/models").json?["data"] as? [[String: Any]])
        func fields(_ id: String) throws -> [String] { try XCTUnwrap(models.first { $0["id"] as? String == id }?["fields"] as? [String]) }
        XCTAssertTrue(try fields("ddpm").contains("guidance_scale"))
        XCTAssertFalse(try fields("student").contains("guidance_scale"))
        XCTAssertFalse(try fields("uncond").contains("guidance_scale"))
        let ddpm = try XCTUnwrap(models.first { $0["id"] as? String == "ddpm" })
        XCTAssertEqual(ddpm["guidance"] as? String, "classifier_free")
        XCTAssertEqual(ddpm["default_guidance_scale"] as? Double, 1)
        XCTAssertNil(models.first { $0["id"] as? String == "student" }?["default_guidance_scale"])

        // The served PNGs are the guided pipeline's, for a batch of 2 in one request and for each image alone.
        let pipeline = try ImagePipeline.load(path: teacher)
        func expected(_ w: Double?, seeds: [UInt64], label: Int) throws -> [[UInt8]] {
            let p = try w.map { try pipeline.withClassGuidance($0) } ?? pipeline
            return try ImagePipeline.pngs(p.generate(seeds.map { GenerationRequest(seed: $0, label: label) }, steps: 4))
        }
        func served(_ body: String) throws -> [[UInt8]] {
            let r = try server.post("/v1/images/generations", json: body)
            XCTAssertEqual(r.status, 200, r.text)
            return try ((r.json?["data"] as? [[String: Any]]) ?? []).map { Array(try XCTUnwrap(Data(base64Encoded: $0["b64_json"] as? String ?? ""))) }
        }
        let star = try XCTUnwrap(pipeline.classNames?.firstIndex(of: "star"))
        let guided = try served(#"{"model": "ddpm", "label": "star", "seed": 11, "n": 2, "steps": 4, "guidance_scale": 3}"#)
        XCTAssertEqual(guided, try expected(3, seeds: [11, 12], label: star))
        XCTAssertEqual(try served(#"{"model": "ddpm", "label": "star", "seed": 12, "steps": 4, "guidance_scale": "3"}"#), [guided[1]],
                       "an image alone equals itself inside a batch")
        let plain = try served(#"{"model": "ddpm", "label": "star", "seed": 11, "steps": 4}"#)
        XCTAssertEqual(plain, try expected(nil, seeds: [11], label: star))
        XCTAssertEqual(try served(#"{"model": "ddpm", "label": "star", "seed": 11, "steps": 4, "guidance_scale": 1}"#), plain)
        XCTAssertNotEqual(plain[0], guided[0], "guidance 3 must change the image")
        let get = try server.get("/v1/generate?model=ddpm&label=star&seed=11&steps=4&guidance_scale=3")
        XCTAssertEqual(get.status, 200, get.text)
        XCTAssertEqual(get.body, guided[0])

        for (body, part) in [
            (#"{"model": "student", "label": "star", "guidance_scale": 3}"#, "is a distilled student (CMStochasticIterativeScheduler) whose guidance, if any, was distilled into it"),
            (#"{"model": "uncond", "guidance_scale": 3}"#, "model uncond is unconditional, so it has no classifier-free guidance"),
            (#"{"model": "ddpm", "label": "star", "guidance_scale": 51}"#, "guidance_scale must be a number in 0...50"),
            (#"{"model": "ddpm", "label": "star", "guidance_scale": true}"#, "guidance_scale must be a number in 0...50"),
            (#"{"model": "ddpm", "label": "star", "guidance_scale": "lots"}"#, "got \"lots\""),
        ] {
            let r = try server.post("/v1/images/generations", json: body)
            XCTAssertEqual(r.status, 400, body)
            XCTAssertTrue(r.errorMessage?.contains(part) ?? false, "\(body): \(r.text)")
        }
    }
}

// An int8 text-to-image model over real sockets: the golden sdxs_tiny and lcm_tiny pipelines quantized by
// LatentQuantizer (unet, vae and text encoder int8) into a temporary models folder and served. Each prompt's PNG
// is the same alone and in concurrent bursts on 2 workers, and close to diffusers' fp32 image (named PSNR limit).
import Foundation
import OnestepCore
import PNGCodec
import XCTest
@testable import OnestepServer

final class TextInt8ServingTests: XCTestCase {
    static let names = ["lcm_tiny", "sdxs_tiny"]
    /// Lowest PSNR of a served int8 PNG against diffusers' fp32 uint8 image (LatentInt8Tests measured 37.9 to 42.4 dB).
    static let minPSNR = 35.0

    static let models: Result<ModelRegistry, Error> = Result {
        guard FileManager.default.fileExists(atPath: Fixtures.golden + "/sdxs_tiny/model_index.json") else {
            throw TestClientError(description: "golden text pipelines not found at \(Fixtures.golden); set ONESTEP_GOLDEN to the shared/golden folder")
        }
        let dir = Fixtures.tempDir("text-int8")
        for name in names {
            try LatentQuantizer.quantizePipeline(source: Fixtures.golden + "/" + name, destination: dir + "/" + name)
        }
        return try ModelRegistry.load(directory: dir, preferred: "sdxs_tiny", log: { _ in })
    }

    func png(_ r: TestResponse) throws -> [UInt8] {
        let item = try XCTUnwrap((r.json?["data"] as? [[String: Any]])?.first, r.text)
        return Array(try XCTUnwrap(Data(base64Encoded: item["b64_json"] as? String ?? "")))
    }

    func testInt8ModelAnswersTheSameBytesAloneAndInBurstsNearFP32() throws {
        let cases = try Self.names.flatMap { try TextFixtures.cases($0) }
        XCTAssertGreaterThanOrEqual(cases.count, 9)
        var alone: [String: [UInt8]] = [:]
        do {
            let server = try RunningServer(models: Self.models) { $0.maxBatch = 1 }
            for c in cases {
                let r = try server.post("/v1/images/generations", json: c.body)
                XCTAssertEqual(r.status, 200, "\(c.key): \(r.text)")
                let bytes = try png(r)
                let image = try PNG.decode(bytes)
                XCTAssertEqual(image.pixels.count, c.uint8.count, c.key)
                let d = ImageDifference(image.pixels, c.uint8.map { UInt8($0) })
                print(String(format: "%@ %@ over HTTP, int8: PSNR %.2f dB vs diffusers fp32, mean |diff| %.3f", c.model, c.key, d.psnr, d.meanAbs))
                XCTAssertGreaterThanOrEqual(d.psnr, Self.minPSNR, "\(c.model) \(c.key)")
                XCTAssertGreaterThan(d.maxAbs, 0, "\(c.model) \(c.key): equal to fp32, so the int8 layers did not run")
                alone[c.model + c.key] = bytes
            }
        }
        let server = try RunningServer(models: Self.models) { o in
            o.maxBatch = 16
            o.maxDelayMs = 500
            o.workers = 2
        }
        let port = server.port
        let burst = cases + cases
        let responses = concurrently(burst.count) { i -> TestResponse? in
            guard let c = try? HTTPTestClient(port: port, timeout: 120) else { return nil }
            return c.post("/v1/images/generations", json: burst[i].body)
        }
        var batched = 0
        for (i, r) in responses.enumerated() {
            let c = burst[i], r = try XCTUnwrap(r, "no response for \(c.key)")
            XCTAssertEqual(r.status, 200, "\(c.key): \(r.text)")
            XCTAssertEqual(try png(r), alone[c.model + c.key], "\(c.model) \(c.key): int8 bytes differ alone vs in a batch of \(r.headers["x-batch-images"] ?? "?")")
            if Int(r.headers["x-batch-images"] ?? "") ?? 0 > 1 { batched += 1 }
        }
        XCTAssertGreaterThan(batched, 0, "no request of the burst shared a batch, so batch invariance was not exercised")
    }
}

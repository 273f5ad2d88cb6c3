// Text-to-image request fields without a text model loaded: the size rule and parser, BatchKey grouping in the
// real BatchQueue, /v1/models `fields` on the pixel golden models, and the new fields on pixel models over HTTP.
import Foundation
import OnestepCore
import XCTest
@testable import OnestepServer

final class TextRequestTests: XCTestCase {
    func testSizeParsingAndRule() {
        XCTAssertEqual(RawGenerationFields.parseSize("512x768"), ImageSize(width: 512, height: 768))
        XCTAssertEqual(RawGenerationFields.parseSize(" 512 X 256 "), ImageSize(width: 512, height: 256))
        for bad in ["512", "512x", "x512", "512x512x3", "-8x8", "0x64", "ax b", ""] {
            XCTAssertNil(RawGenerationFields.parseSize(bad), bad)
        }
        let rule = SizeRule.stableDiffusion(ownSide: 64)
        for ok in [64, 256, 264, 512, 760, 768] { XCTAssertTrue(rule.allows(ok), "\(ok)") }
        for bad in [8, 63, 248, 257, 500, 776, 1024] { XCTAssertFalse(rule.allows(bad), "\(bad)") }
        XCTAssertEqual(rule.describe, "multiples of 8 in 256...768 or 64")

        // Both bad sides named in one problem, with what to send.
        let p = RawGenerationFields.sizeProblems("500x1024", rule: rule, model: "sd")
        XCTAssertEqual(p.count, 1)
        XCTAssertTrue(p[0].contains("width 500 and height 1024"), p[0])
        XCTAssertTrue(p[0].contains("multiples of 8 in 256...768"), p[0])
        XCTAssertTrue(RawGenerationFields.sizeProblems("512x512", rule: rule, model: "sd").isEmpty)
        XCTAssertTrue(RawGenerationFields.sizeProblems(512, rule: rule, model: "sd")[0].contains("\"WIDTHxHEIGHT\""))
    }

    /// Jobs batch together only when model, steps, size and guidance scale all match; prompts may differ.
    func testBatchKeySeparatesSizeAndGuidance() {
        let q = BatchQueue(maxBatch: 64, maxDelay: .seconds(3600), maxQueuedImages: 64)
        let far = ContinuousClock.now + .seconds(3600)
        func job(_ size: ImageSize?, _ g: Double, _ prompt: String, steps: Int = 1) -> GenerationJob {
            GenerationJob(id: 0, model: "m", steps: steps, images: [.init(seed: 1)],
                          text: [TextGenerationRequest(prompt: prompt, seed: 1, guidanceScale: g)], size: size, guidanceScale: g,
                          deadline: far) { _ in }
        }
        let s512 = ImageSize(width: 512, height: 512), s768 = ImageSize(width: 512, height: 768)
        let jobs = [job(s512, 0, "a"), job(s512, 0, "b"), job(s768, 0, "a"), job(s512, 7.5, "a"),
                    job(s512, 7.5, "c"), job(s512, 7.500000001, "a"), job(s512, 0, "a", steps: 2)]
        for j in jobs { XCTAssertEqual(q.submit(j), .accepted) }
        q.beginDrain()  // hand out what is queued without waiting for the delay
        var batches: [[ObjectIdentifier]] = []
        var seen: [(ImageSize?, Double, Int)] = []
        while case let (batch?, _) = q.nextBatch() {
            batches.append(batch.jobs.map { ObjectIdentifier($0) })
            seen.append((batch.size, batch.guidanceScale, batch.steps))
            for j in batch.jobs {
                XCTAssertEqual(j.size, batch.size)
                XCTAssertEqual(j.guidanceScale.bitPattern, batch.guidanceScale.bitPattern)
                XCTAssertEqual(j.steps, batch.steps)
            }
            q.finished(model: batch.model, images: batch.imageCount, elapsed: .zero)
        }
        let id = jobs.map { ObjectIdentifier($0) }
        XCTAssertEqual(batches.count, 5, "\(seen)")
        XCTAssertEqual(Set(batches.map { Set($0) }),
                       [Set([id[0], id[1]]), [id[2]], Set([id[3], id[4]]), [id[5]], [id[6]]])
    }

    /// /v1/models says which fields each pixel model takes; a class model's prompt still names a class.
    func testModelsListFieldsForPixelModels() throws {
        let server = try RunningServer()
        let r = try server.get("/v1/models")
        XCTAssertEqual(r.status, 200)
        let list = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])?["data"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: list.map { ($0["id"] as! String, $0) })
        let cd = try XCTUnwrap(byID["cd_tiny"]), ddpm = try XCTUnwrap(byID["ddpm_gray"])  // ddpm_gray: unconditional
        XCTAssertEqual(cd["fields"] as? [String], ["label", "seed", "steps", "n"])
        XCTAssertEqual(cd["prompt_selects"] as? String, "class")
        XCTAssertEqual(cd["kind"] as? String, "pixel")
        XCTAssertEqual(ddpm["fields"] as? [String], ["seed", "steps", "n"])
        XCTAssertNil(ddpm["prompt_selects"])
        // The A1111 side reads the same lists.
        let a = try server.post("/sdapi/v1/txt2img", json: #"{"prompt": "3", "seed": 4, "steps": 1}"#)
        XCTAssertEqual(a.status, 200, a.text)
        let g = try server.post("/v1/images/generations", json: #"{"model": "cd_tiny", "prompt": "3", "seed": 4, "steps": 1}"#)
        XCTAssertEqual(g.status, 200, g.text)
        XCTAssertTrue(g.text.contains(#""label":3"#), g.text)
    }

    /// On pixel models without a null label: guidance_scale is refused (with every other problem, in one error); negative_prompt is
    /// accepted and ignored as before.
    func testPixelModelsRefuseGuidanceAndReportEveryProblem() throws {
        let server = try RunningServer()
        let r = try server.post("/v1/images/generations", json: #"{"model": "cd_tiny", "guidance_scale": 7.5, "size": "512x512", "steps": 99, "sead": 1}"#)
        XCTAssertEqual(r.status, 400)
        let message = r.errorMessage ?? ""
        for part in ["4 problems", "unknown field 'sead'", "size must be \"16x16\"", "steps must be an integer in 1...",
                     "guidance_scale: model cd_tiny has no null label", "so it has no classifier-free guidance"] {
            XCTAssertTrue(message.contains(part), "\(part) in \(message)")
        }
        let ok = try server.post("/v1/images/generations", json: #"{"model": "cd_tiny", "negative_prompt": "blurry", "seed": 2}"#)
        XCTAssertEqual(ok.status, 200, ok.text)
        let q = try server.get("/v1/generate?model=cd_tiny&seed=2&guidance_scale=3")
        XCTAssertEqual(q.status, 400)
        XCTAssertTrue(q.text.contains("guidance_scale"), q.text)
    }

    func testEmbeddingCacheFlag() throws {
        XCTAssertEqual(try ServerOptions.parse(["--text-embedding-cache", "0"], environment: [:]).0.textEmbeddingCacheEntries, 0)
        XCTAssertEqual(try ServerOptions.parse([], environment: ["ONESTEP_TEXT_EMBEDDING_CACHE": "9"]).0.textEmbeddingCacheEntries, 9)
        XCTAssertEqual(ServerOptions().textEmbeddingCacheEntries, 256)
    }
}

// Prompts over HTTP on the golden text-to-image pipelines: the PNG a prompt gets equals diffusers' uint8 image,
// alone (batch 1) and inside concurrent bursts of mixed prompts; the embedding cache counts hits and misses in
// /metrics; /v1/models lists the fields; bad requests get every problem in one 400.
import Foundation
import XCTest
@testable import OnestepServer

final class TextServingTests: XCTestCase {
    func allCases() throws -> [TextFixtures.Case] { try TextFixtures.names.flatMap { try TextFixtures.cases($0) } }

    func testModelsListTheirFields() throws {
        let server = try RunningServer(models: TextFixtures.models)
        let r = try server.get("/v1/models")
        let list = try XCTUnwrap(r.json?["data"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: list.map { ($0["id"] as! String, $0) })
        for name in TextFixtures.names {
            let m = try XCTUnwrap(byID[name], name)
            XCTAssertEqual(m["kind"] as? String, "text-to-image")
            XCTAssertEqual(m["default_size"] as? String, "64x64")
            if name == "lcm_tiny" {  // guidance-scale embedding: no negative prompt, w defaults to 8.5
                XCTAssertEqual(m["fields"] as? [String], ["prompt", "guidance_scale", "size", "seed", "steps", "n"])
                XCTAssertEqual(m["guidance"] as? String, "embedding")
                XCTAssertEqual(m["default_guidance_scale"] as? Double, 8.5)
            } else {
                XCTAssertEqual(m["fields"] as? [String], ["prompt", "negative_prompt", "guidance_scale", "size", "seed", "steps", "n"])
                XCTAssertEqual(m["guidance"] as? String, "classifier_free")
            }
        }
    }

    /// Every golden case over HTTP: first each alone (max batch 1), then all of them twice in one concurrent burst
    /// (max batch 16, 300 ms to fill): same bytes both ways, equal to diffusers, and the burst really batched.
    func testPromptsGiveDiffusersBytesAloneAndInConcurrentBursts() throws {
        let cases = try allCases()
        XCTAssertGreaterThanOrEqual(cases.count, 20)
        var alone: [String: [UInt8]] = [:]
        do {
            let server = try RunningServer(models: TextFixtures.models) { $0.maxBatch = 1 }
            for c in cases {
                let r = try server.post("/v1/images/generations", json: c.body)
                XCTAssertEqual(r.status, 200, "\(c.key): \(r.text)")
                let item = try XCTUnwrap((r.json?["data"] as? [[String: Any]])?.first)
                let png = Array(try XCTUnwrap(Data(base64Encoded: item["b64_json"] as? String ?? "")))
                XCTAssertEqual(item["seed"] as? Int, c.seed)
                XCTAssertEqual(item["revised_prompt"] as? String, c.prompt)
                XCTAssertEqual(r.headers["x-batch-images"], "1")
                if let m = TextFixtures.mismatch(png, c) { XCTFail(m) }
                alone[c.model + c.key] = png
            }
        }
        let server = try RunningServer(models: TextFixtures.models) { o in
            o.maxBatch = 16
            o.maxDelayMs = 500
            o.workers = 2
        }
        let port = server.port
        let burst = cases + cases
        let responses = concurrently(burst.count) { i -> TestResponse? in
            // /v1/generate answers the PNG itself; half the burst uses it, the other half the OpenAI route.
            guard let c = try? HTTPTestClient(port: port, timeout: 120) else { return nil }
            return c.post(i % 2 == 0 ? "/v1/images/generations" : "/v1/generate", json: burst[i].body)
        }
        var batched = 0
        for (i, r) in responses.enumerated() {
            let c = burst[i]
            let r = try XCTUnwrap(r, "no response for \(c.key)")
            XCTAssertEqual(r.status, 200, "\(c.key): \(r.text)")
            let png: [UInt8]
            if i % 2 == 0 {
                let item = try XCTUnwrap((r.json?["data"] as? [[String: Any]])?.first)
                png = Array(try XCTUnwrap(Data(base64Encoded: item["b64_json"] as? String ?? "")))
            } else {
                XCTAssertEqual(r.headers["content-type"], "image/png")
                XCTAssertEqual(r.headers["x-size"], "64x64")
                png = r.body
            }
            XCTAssertEqual(png, alone[c.model + c.key], "\(c.model) \(c.key): bytes differ alone vs in a batch of \(r.headers["x-batch-images"] ?? "?")")
            if Int(r.headers["x-batch-images"] ?? "") ?? 0 > 1 { batched += 1 }
        }
        XCTAssertGreaterThan(batched, burst.count / 2, "most of the burst shared batches")

        // Each distinct (model, prompt) ran the text encoder once at most per worker race; the rest were hits.
        let m = try server.metrics()
        var hits = 0.0, misses = 0.0
        for name in TextFixtures.names {
            hits += m[#"onestep_text_embedding_cache_hits_total{model="\#(name)"}"#] ?? -1
            misses += m[#"onestep_text_embedding_cache_misses_total{model="\#(name)"}"#] ?? -1
        }
        // Classifier-free guidance (scale > 1, not LCM's embedding) also looks up the negative prompt.
        func cfg(_ c: TextFixtures.Case) -> Bool { c.guidance > 1 && c.model != "lcm_tiny" }
        let distinct = Set(burst.flatMap { c in [c.model + "\u{0}" + c.prompt] + (cfg(c) ? [c.model + "\u{0}" + c.negativePrompt] : []) }).count
        let lookups = burst.reduce(0) { $0 + (cfg($1) ? 2 : 1) }
        XCTAssertEqual(hits + misses, Double(lookups), "one lookup per prompt and per negative prompt under CFG")
        XCTAssertGreaterThanOrEqual(misses, Double(distinct))
        XCTAssertLessThanOrEqual(misses, Double(distinct * 2), "two workers may both miss one prompt at once, no more")
        XCTAssertEqual(m["onestep_text_embedding_cache_entries"], Double(distinct))
    }

    /// A cache of 0 entries still answers the same bytes (every prompt encoded, every lookup a miss).
    func testCacheDisabledGivesTheSameBytes() throws {
        let c = try XCTUnwrap(try TextFixtures.cases("sdxs_tiny").first)
        let server = try RunningServer(models: TextFixtures.models) { $0.textEmbeddingCacheEntries = 0 }
        for _ in 0..<2 {
            let r = try server.post("/v1/generate", json: c.body)
            XCTAssertEqual(r.status, 200, r.text)
            if let m = TextFixtures.mismatch(r.body, c) { XCTFail(m) }
        }
        // The comparison can fail: another seed's image is not this case's.
        var other = c
        other.seed += 1
        let r = try server.post("/v1/generate", json: other.body)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertNotNil(TextFixtures.mismatch(r.body, c))
        let m = try server.metrics()
        XCTAssertEqual(m[#"onestep_text_embedding_cache_hits_total{model="sdxs_tiny"}"#], 0)
        XCTAssertEqual(m[#"onestep_text_embedding_cache_misses_total{model="sdxs_tiny"}"#], 3)
    }

    /// --text-embedding-cache bounds the cache: with 2 entries, a third prompt evicts the least recently used one,
    /// which is then encoded again (a miss), while the recently used one is still a hit.
    func testCacheIsBoundedLeastRecentlyUsedOverHTTP() throws {
        let server = try RunningServer(models: TextFixtures.models) { $0.textEmbeddingCacheEntries = 2 }
        func ask(_ prompt: String) throws {
            let r = try server.post("/v1/generate", json: #"{"model": "sdxs_tiny", "prompt": "\#(prompt)", "seed": 3, "steps": 1}"#)
            XCTAssertEqual(r.status, 200, r.text)
        }
        func counts() throws -> (hits: Double?, misses: Double?, entries: Double?) {
            let m = try server.metrics()
            return (m[#"onestep_text_embedding_cache_hits_total{model="sdxs_tiny"}"#],
                    m[#"onestep_text_embedding_cache_misses_total{model="sdxs_tiny"}"#], m["onestep_text_embedding_cache_entries"])
        }
        for p in ["a", "b", "a", "c"] { try ask(p) }  // a miss, b miss, a hit, c miss evicts b
        var c = try counts()
        XCTAssertEqual(c.hits, 1)
        XCTAssertEqual(c.misses, 3)
        XCTAssertEqual(c.entries, 2)
        try ask("a")  // still held
        try ask("b")  // evicted: encoded again
        c = try counts()
        XCTAssertEqual(c.hits, 2)
        XCTAssertEqual(c.misses, 4)
        XCTAssertEqual(c.entries, 2)
    }

    func testBadTextRequestsReportEveryProblemAtOnce() throws {
        let server = try RunningServer(models: TextFixtures.models)
        let r = try server.post("/v1/images/generations", json: #"{"model": "sdxs_tiny", "size": "500x1024", "guidance_scale": "lots", "label": 2, "steps": 0, "negative_prompt": "blurry"}"#)
        XCTAssertEqual(r.status, 400)
        let msg = r.errorMessage ?? ""
        for part in ["prompt is required", "width 500 and height 1024 not allowed", "multiples of 8 in 256...768 or 64",
                     "guidance_scale must be a number in 0...30", "label is for class models", "steps must be an integer in 1...",
                     "negative_prompt takes effect only under classifier-free guidance"] {
            XCTAssertTrue(msg.contains(part), "'\(part)' in \(msg)")
        }
        XCTAssertTrue(msg.hasPrefix("6 problems") || msg.hasPrefix("7 problems"), msg)
        let q = try server.get("/v1/generate?model=cfg_v_tiny&prompt=a%20cat&size=64x63")
        XCTAssertEqual(q.status, 400)
        XCTAssertTrue((q.errorMessage ?? "").contains("height 63"), q.text)
        let ok = try server.get("/v1/generate?model=cfg_v_tiny&prompt=a%20cat&size=64x64&seed=1&steps=2")
        XCTAssertEqual(ok.status, 200, ok.text)
    }

    /// The A1111 route on a text model: prompt, negative prompt, cfg_scale and width/height go through as fields.
    func testA1111Txt2ImgOnATextModel() throws {
        let c = try XCTUnwrap(try TextFixtures.cases("cfg_v_tiny").first { $0.guidance > 1 })
        let server = try RunningServer(models: TextFixtures.models)
        let body = #"{"prompt": "\#(c.prompt)", "negative_prompt": "\#(c.negativePrompt)", "cfg_scale": \#(c.guidance), "seed": \#(c.seed), "steps": \#(c.steps), "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "cfg_v_tiny"}}"#
        let r = try server.post("/sdapi/v1/txt2img", json: body)
        XCTAssertEqual(r.status, 200, r.text)
        let images = try XCTUnwrap(r.json?["images"] as? [String])
        let png = Array(try XCTUnwrap(Data(base64Encoded: images[0])))
        if let m = TextFixtures.mismatch(png, c) { XCTFail(m) }
        // The guidance the model ran with is the one reported.
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(((r.json?["info"] as? String) ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(info["cfg_scale"] as? Double, c.guidance)
    }
}

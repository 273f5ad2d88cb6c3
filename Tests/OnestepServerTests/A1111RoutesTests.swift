// The AUTOMATIC1111-compatible routes and the playground page over real sockets: txt2img images, seeds in info,
// the same bytes as the native route, adjustments written in info.notes, every refusal in words, the model
// chosen with POST /sdapi/v1/options, the connect-time listings, 405s, metrics route labels.

import Foundation
import OnestepCore
import XCTest
@testable import OnestepServer

final class A1111RoutesTests: XCTestCase {
    /// The three pixel models of the golden folder by name (the folder also holds text-to-image pipelines,
    /// which are not what these tests are about): cd_tiny (default, 16x16 RGB, 10 classes), ddpm_gray (8x8 gray),
    /// ddpm_tiny.
    static let pixelModels: Result<ModelRegistry, Error> = Result {
        try ModelRegistry(pipelines: ["cd_tiny", "ddpm_gray", "ddpm_tiny"].map { try ImagePipeline.load(path: Fixtures.golden + "/" + $0) },
                          preferred: "cd_tiny")
    }

    /// `info` is a JSON document inside a string, as A1111 sends it.
    func info(_ r: TestResponse) throws -> [String: Any] {
        let text = try XCTUnwrap(r.json?["info"] as? String, r.text)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func images(_ r: TestResponse) throws -> [[UInt8]] {
        let list = try XCTUnwrap(r.json?["images"] as? [String], r.text)
        return try list.map { try XCTUnwrap(Data(base64Encoded: $0)).map { $0 } }
    }

    func testTxt2ImgGivesTheNativeRoutesImagesWithTheirSeeds() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let c = try server.client()
        let r = try XCTUnwrap(c.post("/sdapi/v1/txt2img", json: #"{"prompt": "square", "negative_prompt": "", "seed": 7, "batch_size": 2, "n_iter": 2, "steps": 1}"#))
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertNotNil(r.headers["x-compute-ms"])
        let pngs = try images(r)
        XCTAssertEqual(pngs.count, 4)
        for png in pngs { assertPNG(png, size: 16, channels: 3) }
        let i = try info(r)
        XCTAssertEqual(i["all_seeds"] as? [Int], [7, 8, 9, 10])
        XCTAssertEqual(i["seed"] as? Int, 7)
        XCTAssertEqual(i["all_labels"] as? [String], Array(repeating: "square", count: 4))
        XCTAssertEqual(i["width"] as? Int, 16)
        XCTAssertEqual(i["steps"] as? Int, 1)
        XCTAssertEqual(i["sd_model_name"] as? String, "shapes")
        XCTAssertEqual((i["infotexts"] as? [String])?.first, "square\nSteps: 1, Sampler: Consistency, CFG scale: 1.0, Seed: 7, Size: 16x16, Model: shapes")
        XCTAssertEqual(i["notes"] as? [String], [])
        XCTAssertEqual((r.json?["parameters"] as? [String: Any])?["batch_size"] as? Int, 2)
        // Image 2 of the request is seed 9: the same PNG bytes as the native route gives for seed 9 alone.
        let native = try XCTUnwrap(c.get("/v1/generate?seed=9&label=square"))
        XCTAssertEqual(native.status, 200, native.text)
        XCTAssertEqual(pngs[2], native.body)
    }

    func testClientDefaultsTheModelCannotHonourAreAdjustedAndSaid() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let r = try server.post("/sdapi/v1/txt2img", json: #"{"prompt": "", "seed": -1, "steps": 20, "cfg_scale": 7, "width": 512, "height": 512, "sampler_name": "Euler a", "negative_prompt": "blurry", "enable_hr": false, "alwayson_scripts": {}, "script_name": null}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let i = try info(r)
        XCTAssertEqual(i["steps"] as? Int, 4)
        XCTAssertEqual(i["width"] as? Int, 16)
        XCTAssertEqual(i["sampler_name"] as? String, "Consistency")
        // The ignored cfg_scale 7 is not reported as used: the images were made without guidance.
        XCTAssertEqual(i["cfg_scale"] as? Double, 1)
        XCTAssertTrue((i["infotexts"] as? [String])?.first?.contains("CFG scale: 1.0,") ?? false, "\(i["infotexts"] ?? "")")
        let notes = try XCTUnwrap(i["notes"] as? [String])
        XCTAssertEqual(notes.count, 5, "\(notes)")
        for fragment in ["steps 20 lowered to 4", "cfg_scale 7.0 ignored", "16x16 only; width x height 512x512",
                         "sampler 'Euler a' not used", "negative_prompt ignored"] {
            XCTAssertTrue(notes.contains { $0.contains(fragment) }, "no note with '\(fragment)' in \(notes)")
        }
        // seed -1: drawn, and the drawn seed reproduces the image.
        let seed = try XCTUnwrap(i["seed"] as? Int)
        let again = try server.post("/sdapi/v1/txt2img", json: #"{"seed": \#(seed), "steps": 4}"#)
        XCTAssertEqual(try images(again), try images(r))
    }

    func testRefusalsSayWhatWasWrong() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let cases: [(String, Int, String)] = [
            (#"{"prompt": "dog"}"#, 400, "it must contain one of: circle, square"),
            (#"{"enable_hr": true}"#, 400, "enable_hr (hires fix) is not supported"),
            (#"{"script_name": "x/y/z plot"}"#, 400, "scripts are not supported"),
            (#"{"alwayson_scripts": {"ControlNet": {"args": []}}}"#, 400, "extensions are not supported"),
            (#"{"batch_size": 0}"#, 400, "batch_size must be an integer in 1...16"),
            (#"{"batch_size": 8, "n_iter": 4}"#, 400, "batch_size x n_iter = 32 images; at most 16"),
            (#"{"seed": -2}"#, 400, "seed must be an integer in -1..."),
            (#"{"steps": 0}"#, 400, "steps must be an integer in 1..."),
            (#"{"cfg_scale": "high"}"#, 400, "cfg_scale must be a number"),
            (#"{"prompt": 5}"#, 400, "prompt must be a string"),
            (#"{"override_settings": {"sd_model_checkpoint": "v1-5-pruned.safetensors [6ce0161689]"}}"#, 404, "available: shapes"),
            (#"[1, 2]"#, 400, "body must be a JSON object"),
            (#"{"prompt": "#, 400, "body is not valid JSON"),
        ]
        let c = try server.client()
        for (body, status, fragment) in cases {
            let r = try XCTUnwrap(c.post("/sdapi/v1/txt2img", json: body), body)
            XCTAssertEqual(r.status, status, "\(body): \(r.text)")
            let detail = r.json?["detail"] as? String ?? ""
            XCTAssertTrue(detail.contains(fragment), "\(body): '\(detail)' lacks '\(fragment)'")
            XCTAssertEqual(r.errorMessage, detail, "the project's error envelope carries the same message")
        }
        let get = try XCTUnwrap(c.get("/sdapi/v1/txt2img"))
        XCTAssertEqual(get.status, 405)
        XCTAssertEqual(get.headers["allow"], "POST")
    }

    func testOptionsChooseTheModelOfLaterRequests() throws {
        let server = try RunningServer(models: Self.pixelModels)
        let c = try server.client()
        let models = try XCTUnwrap(c.get("/sdapi/v1/sd-models"))
        XCTAssertEqual((models.jsonArray as? [[String: Any]])?.compactMap { $0["title"] as? String }, ["cd_tiny", "ddpm_gray", "ddpm_tiny"])
        XCTAssertEqual(try XCTUnwrap(c.get("/sdapi/v1/options")).json?["sd_model_checkpoint"] as? String, "cd_tiny")

        let set = try XCTUnwrap(c.post("/sdapi/v1/options", json: #"{"sd_model_checkpoint": "ddpm_gray.safetensors [0123abcd]", "CLIP_stop_at_last_layers": 2}"#))
        XCTAssertEqual(set.status, 200, set.text)
        XCTAssertEqual(set.text, "null")
        XCTAssertEqual(set.headers["x-onestep-ignored-options"], "CLIP_stop_at_last_layers")
        XCTAssertEqual(try XCTUnwrap(c.get("/sdapi/v1/options")).json?["sd_model_checkpoint"] as? String, "ddpm_gray")

        let gray = try XCTUnwrap(c.post("/sdapi/v1/txt2img", json: #"{"seed": 3, "steps": 1}"#))
        XCTAssertEqual(gray.status, 200, gray.text)
        assertPNG(try images(gray)[0], size: 8, channels: 1)
        XCTAssertEqual(try info(gray)["sd_model_name"] as? String, "ddpm_gray")
        // override_settings wins for one request and does not change the model in force.
        let cd = try XCTUnwrap(c.post("/sdapi/v1/txt2img", json: #"{"seed": 3, "steps": 1, "override_settings": {"sd_model_checkpoint": "cd_tiny"}}"#))
        XCTAssertEqual(cd.status, 200, cd.text)
        assertPNG(try images(cd)[0], size: 16, channels: 3)
        XCTAssertEqual(try XCTUnwrap(c.get("/sdapi/v1/options")).json?["sd_model_checkpoint"] as? String, "ddpm_gray")

        let unknown = try XCTUnwrap(c.post("/sdapi/v1/options", json: #"{"sd_model_checkpoint": "sdxl"}"#))
        XCTAssertEqual(unknown.status, 404)
        XCTAssertTrue(unknown.text.contains("available: cd_tiny, ddpm_gray, ddpm_tiny"), unknown.text)
        let bad = try XCTUnwrap(c.post("/sdapi/v1/options", json: "[]"))
        XCTAssertEqual(bad.status, 400)
    }

    func testConnectTimeListings() throws {
        let server = try RunningServer(models: Self.pixelModels)
        let c = try server.client()
        let samplers = try XCTUnwrap(c.get("/sdapi/v1/samplers")?.jsonArray as? [[String: Any]])
        let names = samplers.compactMap { $0["name"] as? String }
        XCTAssertTrue(names.contains("Consistency"), "\(names)")
        XCTAssertEqual(Set(names).count, names.count, "each sampler once")
        XCTAssertEqual((try XCTUnwrap(c.get("/sdapi/v1/schedulers")?.jsonArray as? [[String: Any]])).first?["name"] as? String, "automatic")
        XCTAssertEqual(try XCTUnwrap(c.get("/sdapi/v1/scripts")).json?["txt2img"] as? [String], [])
        XCTAssertNotNil(try XCTUnwrap(c.get("/sdapi/v1/progress")).json?["state"] as? [String: Any])
        for empty in ["sd-vae", "sd-modules", "upscalers", "latent-upscale-modes", "loras"] {
            let r = try XCTUnwrap(c.get("/sdapi/v1/" + empty))
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.text, "[]")
        }
        let m = try server.metrics()
        XCTAssertEqual(m[#"onestep_http_requests_total{route="/sdapi/v1/samplers",status="200"}"#], 1)
    }

    /// For a model whose /v1/models entry lists prompt, negative_prompt, guidance_scale and size in `fields` (the
    /// text-to-image models to come), the A1111 fields become the native request's fields instead of notes.
    func testTranslationForAModelThatTakesPromptsGuidanceAndSizes() throws {
        let models = try Fixtures.namedModels.get()
        let body = Array(#"{"prompt": "a red circle", "negative_prompt": "blurry", "cfg_scale": 2.5, "width": 512, "height": 768, "steps": 2, "seed": 11, "batch_size": 3}"#.utf8)
        let takesText = try A1111Txt2Img(body: body, models: models, model: "shapes",
                                         fields: { _ in ["prompt", "negative_prompt", "guidance_scale", "size", "seed", "steps", "n"] },
                                         maxImages: 16)
        let gen = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(takesText.generationBody)) as? [String: Any])
        XCTAssertEqual(gen["prompt"] as? String, "a red circle")
        XCTAssertEqual(gen["negative_prompt"] as? String, "blurry")
        XCTAssertEqual(gen["guidance_scale"] as? Double, 2.5)
        XCTAssertEqual(gen["size"] as? String, "512x768")
        XCTAssertEqual(gen["n"] as? Int, 3)
        XCTAssertEqual(gen["seed"] as? Int, 11)
        XCTAssertEqual(gen["steps"] as? Int, 2)
        XCTAssertEqual(gen["model"] as? String, "shapes")
        XCTAssertEqual([takesText.width, takesText.height], [512, 768])
        XCTAssertEqual(takesText.notes.filter { !$0.hasPrefix("sampler") }, [])
        // The same body for a class model (no `fields`): only what it can use goes through, the rest is noted.
        let classModel = try A1111Txt2Img(body: body, models: models, model: "shapes", fields: { _ in nil }, maxImages: 16)
        let plain = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(classModel.generationBody)) as? [String: Any])
        XCTAssertEqual(Set(plain.keys), ["model", "prompt", "n", "seed", "steps"])
        XCTAssertEqual(classModel.notes.count, 3, "\(classModel.notes)")  // negative_prompt, cfg_scale, size
        XCTAssertEqual([classModel.width, classModel.height], [16, 16])
    }

    func testPlaygroundPage() throws {
        let server = try RunningServer(models: Self.pixelModels)
        let c = try server.client()
        let page = try XCTUnwrap(c.get("/"))
        XCTAssertEqual(page.status, 200)
        XCTAssertEqual(page.headers["content-type"], "text/html; charset=utf-8")
        XCTAssertTrue(page.headers["content-security-policy"]?.hasPrefix("default-src 'none'") == true)
        XCTAssertTrue(page.text.contains(#"<button id="generate" type="submit">Generate</button>"#))
        XCTAssertTrue(page.text.contains("image-rendering: pixelated"))
        XCTAssertTrue(page.text.contains(#"fetch("v1/models")"#))
        XCTAssertFalse(page.text.contains("http://") || page.text.contains("https://"), "the page must reference nothing external")
        let head = try XCTUnwrap(c.roundTrip("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", isHead: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], String(page.body.count))
        XCTAssertTrue(head.body.isEmpty)
        XCTAssertEqual(try XCTUnwrap(c.post("/", json: "{}")).status, 405)
        // The query string does not change the route.
        XCTAssertEqual(try XCTUnwrap(c.get("/?model=cd_tiny")).status, 200)
    }
}

extension TestResponse {
    /// The body as a JSON array (nil if it is not one).
    var jsonArray: [Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [Any] }
}

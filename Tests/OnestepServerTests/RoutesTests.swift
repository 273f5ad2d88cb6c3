// Every route over real sockets: health, readiness, metrics, models, both generation routes, HEAD, 404, 405,
// the OpenAI response shape, classes by name, drawn seeds.

import Foundation
import XCTest
@testable import OnestepServer

final class RoutesTests: XCTestCase {
    func testAllRoutesOnOneKeepAliveConnection() throws {
        let server = try RunningServer()
        let c = try server.client()

        let health = try XCTUnwrap(c.get("/healthz"))
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json?["status"] as? String, "ok")

        let ready = try XCTUnwrap(c.get("/readyz"))
        XCTAssertEqual(ready.status, 200)
        XCTAssertEqual(ready.json?["status"] as? String, "ready")
        XCTAssertEqual(ready.json?["models"] as? Int, 3)

        let models = try XCTUnwrap(c.get("/v1/models"))
        XCTAssertEqual(models.status, 200)
        let list = try XCTUnwrap(models.json?["data"] as? [[String: Any]])
        XCTAssertEqual(list.compactMap { $0["id"] as? String }, ["cd_tiny", "ddpm_gray", "ddpm_tiny"])
        let cd = try XCTUnwrap(list.first { $0["id"] as? String == "cd_tiny" })
        XCTAssertEqual(cd["image_size"] as? Int, 16)
        XCTAssertEqual(cd["channels"] as? Int, 3)
        XCTAssertEqual(cd["default"] as? Bool, true)
        XCTAssertEqual((cd["classes"] as? [String])?.count, 10)

        // GET /v1/generate: one PNG, the seed and class in headers.
        let png = try XCTUnwrap(c.get("/v1/generate?seed=7&label=2"))
        XCTAssertEqual(png.status, 200, png.text)
        XCTAssertEqual(png.headers["content-type"], "image/png")
        XCTAssertEqual(png.headers["x-seed"], "7")
        XCTAssertEqual(png.headers["x-label"], "2")
        XCTAssertNotNil(png.headers["x-queue-ms"])
        XCTAssertNotNil(png.headers["x-compute-ms"])
        XCTAssertEqual(png.headers["x-batch-images"], "1")
        assertPNG(png.body, size: 16, channels: 3)

        // POST /v1/generate with a JSON body gives the same image for the same seed and class.
        let posted = try XCTUnwrap(c.post("/v1/generate", json: #"{"seed": 7, "label": 2}"#))
        XCTAssertEqual(posted.status, 200, posted.text)
        XCTAssertEqual(posted.body, png.body)

        // Another model by name: 8x8 gray, unconditional (no X-Label).
        let gray = try XCTUnwrap(c.get("/v1/generate?model=ddpm_gray&seed=1"))
        XCTAssertEqual(gray.status, 200, gray.text)
        XCTAssertNil(gray.headers["x-label"])
        assertPNG(gray.body, size: 8, channels: 1)

        // Two steps is a different image from one step.
        let twoSteps = try XCTUnwrap(c.get("/v1/generate?seed=7&label=2&steps=2"))
        XCTAssertEqual(twoSteps.status, 200, twoSteps.text)
        XCTAssertNotEqual(twoSteps.body, png.body)

        let openAI = try XCTUnwrap(c.post("/v1/images/generations", json: #"{"model": "cd_tiny", "n": 2, "seed": 5, "size": "16x16", "response_format": "b64_json"}"#))
        XCTAssertEqual(openAI.status, 200, openAI.text)

        let metrics = try XCTUnwrap(c.get("/metrics"))
        XCTAssertEqual(metrics.status, 200)
        XCTAssertTrue(metrics.headers["content-type"]?.hasPrefix("text/plain") ?? false)
        let m = parseMetrics(metrics.text)
        XCTAssertEqual(m[#"onestep_images_generated_total{model="cd_tiny"}"#], 5)
        XCTAssertEqual(m[#"onestep_images_generated_total{model="ddpm_gray"}"#], 1)
        XCTAssertEqual(m[#"onestep_http_requests_total{route="/healthz",status="200"}"#], 1)
        XCTAssertEqual(m["onestep_queue_depth_images"], 0)
        XCTAssertEqual(m["onestep_open_connections"], 1)
        for name in ["onestep_batch_size_images_count", "onestep_queue_wait_seconds_count", "onestep_running_batches",
                     "onestep_pending_responses", #"onestep_compute_seconds_count{model="cd_tiny"}"#] {
            XCTAssertNotNil(m[name], "\(name) missing from /metrics")
        }
    }

    func testHeadNotFoundAndMethodNotAllowed() throws {
        let server = try RunningServer()
        let c = try server.client()

        // HEAD: the GET's headers, Content-Length included, and no body (the next response parses cleanly).
        let head = try XCTUnwrap(c.roundTrip("HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", isHead: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], "15")
        XCTAssertTrue(head.body.isEmpty)
        let headModels = try XCTUnwrap(c.roundTrip("HEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\n", isHead: true))
        XCTAssertEqual(headModels.status, 200)

        let missing = try XCTUnwrap(c.get("/v2/nothing"))
        XCTAssertEqual(missing.status, 404)
        XCTAssertEqual(missing.errorType, "not_found_error")
        XCTAssertTrue(missing.errorMessage?.contains("/v1/generate") ?? false, missing.text)

        let delete = try XCTUnwrap(c.roundTrip("DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n"))
        XCTAssertEqual(delete.status, 405)
        XCTAssertEqual(delete.headers["allow"], "GET, HEAD")

        let getOpenAI = try XCTUnwrap(c.get("/v1/images/generations"))
        XCTAssertEqual(getOpenAI.status, 405)
        XCTAssertEqual(getOpenAI.headers["allow"], "POST")

        let putGenerate = try XCTUnwrap(c.roundTrip("PUT /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"))
        XCTAssertEqual(putGenerate.status, 405)
        XCTAssertEqual(putGenerate.headers["allow"], "GET, POST, HEAD")

        // Still serving on the same connection.
        XCTAssertEqual(c.get("/healthz")?.status, 200)
        let m = try server.metrics()
        XCTAssertEqual(m[#"onestep_http_requests_total{route="other",status="404"}"#], 1)
    }

    func testOpenAIResponseShape() throws {
        let server = try RunningServer()
        let r = try server.post("/v1/images/generations", json: #"{"n": 3, "seed": 100}"#)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(r.headers["content-type"], "application/json")
        let json = try XCTUnwrap(r.json)
        let created = try XCTUnwrap(json["created"] as? Int)
        XCTAssertEqual(Double(created), Date().timeIntervalSince1970, accuracy: 60)
        let data = try XCTUnwrap(json["data"] as? [[String: Any]])
        XCTAssertEqual(data.count, 3)
        var images: [[UInt8]] = []
        for (i, item) in data.enumerated() {
            XCTAssertEqual(item["seed"] as? Int, 100 + i, "image i uses seed + i")
            let b64 = try XCTUnwrap(item["b64_json"] as? String)
            let png = try XCTUnwrap(Data(base64Encoded: b64))
            assertPNG(Array(png), size: 16, channels: 3)
            images.append(Array(png))
        }
        XCTAssertEqual(Set(images).count, 3, "different seeds give different images")
        // The second image is what seed 101 alone gives (label follows the seed when none is asked for).
        let alone = try server.get("/v1/generate?seed=101")
        XCTAssertEqual(alone.body, images[1])

        // An unconditional model ignores prompt, so OpenAI clients that always send one still work.
        let gray = try server.post("/v1/images/generations", json: #"{"model": "ddpm_gray", "prompt": "a cat"}"#)
        XCTAssertEqual(gray.status, 200, gray.text)
    }

    func testClassByNameThroughLabelAndPrompt() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let models = try server.get("/v1/models")
        let first = try XCTUnwrap((models.json?["data"] as? [[String: Any]])?.first)
        XCTAssertEqual(first["classes"] as? [String], Fixtures.classNames)

        let byIndex = try server.get("/v1/generate?seed=3&label=2")
        XCTAssertEqual(byIndex.status, 200, byIndex.text)
        let byName = try server.get("/v1/generate?seed=3&label=triangle")
        XCTAssertEqual(byName.status, 200, byName.text)
        XCTAssertEqual(byName.headers["x-label"], "2")
        XCTAssertEqual(byName.body, byIndex.body)
        let caseInsensitive = try server.post("/v1/generate", json: #"{"seed": 3, "label": "Triangle"}"#)
        XCTAssertEqual(caseInsensitive.body, byIndex.body)

        // OpenAI clients name the class in prompt.
        let prompt = try server.post("/v1/images/generations", json: #"{"prompt": " triangle ", "seed": 3}"#)
        XCTAssertEqual(prompt.status, 200, prompt.text)
        let item = try XCTUnwrap((prompt.json?["data"] as? [[String: Any]])?.first)
        XCTAssertEqual(item["label"] as? Int, 2)
        XCTAssertEqual(Data(base64Encoded: item["b64_json"] as? String ?? "").map(Array.init), byIndex.body)
    }

    func testBadGenerationRequestsAre400WithTheReason() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let unknown = try server.get("/v1/generate?label=hexagon")
        XCTAssertEqual(unknown.status, 400)
        let message = try XCTUnwrap(unknown.errorMessage)
        XCTAssertTrue(message.contains("hexagon"), message)
        for name in Fixtures.classNames { XCTAssertTrue(message.contains(name), "\(name) not listed in: \(message)") }
        XCTAssertEqual(try server.post("/v1/images/generations", json: #"{"prompt": "hexagon"}"#).status, 400)

        let cases: [(String, TestResponse, String)] = [
            ("label out of range", try server.get("/v1/generate?label=10"), "out of range"),
            ("unknown parameter", try server.get("/v1/generate?colour=red"), "unknown field 'colour'"),
            ("bad seed", try server.get("/v1/generate?seed=-1"), "seed"),
            ("too many steps", try server.get("/v1/generate?steps=99"), "steps"),
            ("n on /v1/generate", try server.get("/v1/generate?n=2"), "n is not supported"),
            ("n above the cap", try server.post("/v1/images/generations", json: #"{"n": 17}"#), "n must be"),
            ("not JSON", try server.post("/v1/images/generations", json: "{seed"), "not valid JSON"),
            ("not an object", try server.post("/v1/images/generations", json: "[1]"), "JSON object"),
            ("wrong size", try server.post("/v1/images/generations", json: #"{"size": "512x512"}"#), "16x16"),
            ("url format", try server.post("/v1/images/generations", json: #"{"response_format": "url"}"#), "b64_json"),
            ("bad deadline", try server.get("/v1/generate?deadline_ms=0"), "deadline_ms"),
        ]
        for (what, r, fragment) in cases {
            XCTAssertEqual(r.status, 400, "\(what): \(r.text)")
            XCTAssertEqual(r.errorType, "invalid_request_error", what)
            XCTAssertTrue(r.errorMessage?.contains(fragment) ?? false, "\(what): \(r.text)")
        }
        let noModel = try server.get("/v1/generate?model=nope")
        XCTAssertEqual(noModel.status, 404)
        XCTAssertTrue(noModel.errorMessage?.contains("shapes") ?? false, noModel.text)
        XCTAssertEqual(try server.get("/v1/generate?seed=1").status, 200)
    }

    func testMissingSeedIsDrawnReturnedAndReproducible() throws {
        let server = try RunningServer()
        let a = try server.get("/v1/generate")
        let b = try server.get("/v1/generate")
        XCTAssertEqual(a.status, 200, a.text)
        let seedA = try XCTUnwrap(a.headers["x-seed"].flatMap { UInt64($0) })
        let seedB = try XCTUnwrap(b.headers["x-seed"].flatMap { UInt64($0) })
        XCTAssertNotEqual(seedA, seedB, "seeds are drawn at random")
        // Asking again with the returned seed gives the same image.
        let again = try server.get("/v1/generate?seed=\(seedA)")
        XCTAssertEqual(again.body, a.body)
        XCTAssertEqual(again.headers["x-label"], a.headers["x-label"])

        let openAI = try server.post("/v1/images/generations", json: #"{"n": 2}"#)
        let data = try XCTUnwrap(openAI.json?["data"] as? [[String: Any]])
        let s0 = try XCTUnwrap(data[0]["seed"] as? Int), s1 = try XCTUnwrap(data[1]["seed"] as? Int)
        XCTAssertEqual(s1, s0 + 1)
        let replay = try server.get("/v1/generate?seed=\(s1)")
        XCTAssertEqual(Data(base64Encoded: data[1]["b64_json"] as? String ?? "").map(Array.init), replay.body)
    }
}

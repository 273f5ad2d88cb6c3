// The dynamic batcher seen from outside: concurrent clients are batched, batching does not change an image,
// a full queue refuses with 429, an expired deadline answers 503, and a client that leaves takes its work along.
//
// Timing-independent by construction: where a request must stay queued, the server runs with a batch far larger
// than the queue and a 10 s batching delay, so nothing is computed until the test lets it (by draining).

import Foundation
import XCTest
@testable import OnestepServer

final class BatchingTests: XCTestCase {
    func testSixtyFourConcurrentClientsAllGetValidPNGsInBatches() throws {
        let server = try RunningServer { o in
            o.maxBatch = 16
            o.maxDelayMs = 20
        }
        let port = server.port
        let responses = concurrently(64) { i -> Result<TestResponse, TestClientError> in
            guard let c = try? HTTPTestClient(port: port, timeout: 30) else { return .failure(TestClientError(description: "connect \(i)")) }
            guard let r = c.get("/v1/generate?seed=\(1000 + i)") else { return .failure(TestClientError(description: "no response \(i)")) }
            return .success(r)
        }
        var batchSizes: [Int] = []
        for (i, result) in responses.enumerated() {
            let r = try result.get()
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(r.headers["content-type"], "image/png")
            XCTAssertEqual(r.headers["x-seed"], String(1000 + i))
            assertPNG(r.body, size: 16, channels: 3)
            batchSizes.append(Int(r.headers["x-batch-images"] ?? "") ?? 0)
        }
        XCTAssertEqual(Set(responses.compactMap { try? $0.get().body }).count, 64, "64 seeds, 64 different images")
        XCTAssertTrue(batchSizes.allSatisfy { (1...16).contains($0) }, "\(batchSizes)")

        let m = try server.metrics()
        let batches = try XCTUnwrap(m["onestep_batch_size_images_count"])
        let singles = try XCTUnwrap(m[#"onestep_batch_size_images_bucket{le="1"}"#])
        XCTAssertEqual(m["onestep_batch_size_images_sum"], 64)
        XCTAssertEqual(m[#"onestep_images_generated_total{model="cd_tiny"}"#], 64)
        XCTAssertLessThan(batches, 64, "some batches held more than one image")
        XCTAssertLessThan(singles, batches, "batch sizes above 1 are observed in /metrics")
        XCTAssertEqual(m[#"onestep_http_requests_total{route="/v1/generate",status="200"}"#], 64)
        XCTAssertEqual(m["onestep_queue_depth_images"], 0)
    }

    func testSameSeedGivesIdenticalBytesAloneAndInsideABatch() throws {
        let server = try RunningServer { o in
            o.maxBatch = 8
            o.maxDelayMs = 50
        }
        let alone = try server.get("/v1/generate?seed=42")
        XCTAssertEqual(alone.status, 200, alone.text)
        XCTAssertEqual(alone.headers["x-batch-images"], "1")

        // Eight requests on eight connections, sent together, reach the batcher within the 50 ms delay and fill
        // one batch of 8. (Pipelined requests on one connection are served one at a time since issue 17, so
        // they no longer batch together.)
        let clients = try (0..<8).map { _ in try server.client() }
        for (client, seed) in zip(clients, 40..<48) { client.send(HTTPTestClient.get("/v1/generate?seed=\(seed)")) }
        let batched = try clients.map { try XCTUnwrap($0.readResponse()) }
        XCTAssertEqual(batched.map(\.status), Array(repeating: 200, count: 8))
        XCTAssertEqual(batched.map { $0.headers["x-seed"] }, (40..<48).map { String($0) })
        // One batch of 8 in practice; the property under test only needs the batch to hold more than this request.
        XCTAssertGreaterThan(Int(batched[2].headers["x-batch-images"] ?? "") ?? 0, 1)
        XCTAssertEqual(batched[2].body, alone.body, "seed 42 alone and inside a batch are the same bytes")

        // Inside one multi-image request, as the third of four (seeds 40...43).
        let openAI = try server.post("/v1/images/generations", json: #"{"seed": 40, "n": 4}"#)
        XCTAssertEqual(openAI.status, 200, openAI.text)
        let third = try XCTUnwrap((openAI.json?["data"] as? [[String: Any]])?[2]["b64_json"] as? String)
        XCTAssertEqual(Data(base64Encoded: third).map(Array.init), alone.body)

        // With an explicit class and two steps as well.
        let aloneTwoSteps = try server.get("/v1/generate?seed=42&label=7&steps=2")
        for (client, seed) in zip(clients, 40..<48) {
            client.send(HTTPTestClient.get("/v1/generate?seed=\(seed)&label=7&steps=2"))
        }
        let batchedTwoSteps = try clients.map { try XCTUnwrap($0.readResponse()) }
        XCTAssertGreaterThan(Int(batchedTwoSteps[2].headers["x-batch-images"] ?? "") ?? 0, 1)
        XCTAssertEqual(batchedTwoSteps[2].body, aloneTwoSteps.body)
    }

    func testFullQueueAnswers429WithRetryAfter() throws {
        let server = try RunningServer { o in
            o.maxQueuedImages = 4
            o.maxBatch = 16     // never reached: nothing runs until the drain
            o.maxDelayMs = 10_000
        }
        // Four images wait: one request of three and one of one.
        let a = try server.client(), b = try server.client()
        a.send(HTTPTestClient.post("/v1/images/generations", json: #"{"seed": 1, "n": 3}"#))
        b.send(HTTPTestClient.get("/v1/generate?seed=9"))
        try server.waitForMetrics { $0["onestep_queue_depth_images"] == 4 }

        let full = try server.get("/v1/generate?seed=10")
        XCTAssertEqual(full.status, 429, full.text)
        XCTAssertEqual(full.errorType, "queue_full")
        let retryAfter = try XCTUnwrap(full.headers["retry-after"].flatMap { Int($0) }, "Retry-After in whole seconds")
        XCTAssertGreaterThanOrEqual(retryAfter, 1)
        XCTAssertEqual(try server.post("/v1/images/generations", json: #"{"n": 2}"#).status, 429)

        let m = try server.metrics()
        XCTAssertEqual(m[#"onestep_rejected_total{reason="queue_full"}"#], 2)
        XCTAssertEqual(m[#"onestep_http_requests_total{route="/v1/generate",status="429"}"#], 1)
        XCTAssertEqual(m["onestep_queue_depth_images"], 4, "refused work is not queued")

        // The queued work is still answered: draining runs it at once.
        XCTAssertTrue(server.server.drainAndStop())
        let ra = try XCTUnwrap(a.readResponse()), rb = try XCTUnwrap(b.readResponse())
        XCTAssertEqual(ra.status, 200, ra.text)
        XCTAssertEqual((ra.json?["data"] as? [[String: Any]])?.count, 3)
        XCTAssertEqual(rb.status, 200, rb.text)
        XCTAssertEqual(rb.headers["x-batch-images"], "4", "both requests ran in one batch")
    }

    func testExpiredDeadlineAnswers503() throws {
        let server = try RunningServer { o in
            o.maxBatch = 16
            o.maxDelayMs = 10_000
            o.defaultDeadlineMs = 300
            o.maxDeadlineMs = 400
        }
        let start = Date()
        let own = try server.get("/v1/generate?seed=1&deadline_ms=150")
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(own.status, 503, own.text)
        XCTAssertEqual(own.errorType, "deadline_exceeded")
        XCTAssertEqual(own.headers["retry-after"], "1")
        XCTAssertTrue(own.errorMessage?.contains("150 ms") ?? false, own.text)
        XCTAssertGreaterThanOrEqual(elapsed, 0.14)
        XCTAssertLessThan(elapsed, 5, "the reaper answers soon after the deadline")

        // No deadline_ms: the server's default applies; a larger one is capped by the maximum.
        let byDefault = try server.get("/v1/generate?seed=2")
        XCTAssertEqual(byDefault.status, 503)
        XCTAssertTrue(byDefault.errorMessage?.contains("300 ms") ?? false, byDefault.text)
        let capped = try server.post("/v1/images/generations", json: #"{"seed": 3, "n": 2, "deadline_ms": 60000}"#)
        XCTAssertEqual(capped.status, 503)
        XCTAssertTrue(capped.errorMessage?.contains("400 ms") ?? false, capped.text)

        let m = try server.metrics()
        XCTAssertEqual(m[#"onestep_rejected_total{reason="deadline"}"#], 3)
        XCTAssertEqual(m["onestep_queue_depth_images"], 0)
        XCTAssertNil(m[#"onestep_images_generated_total{model="cd_tiny"}"#], "expired work is never computed")
    }

    func testClientDisconnectWhileQueuedRemovesTheWork() throws {
        let server = try RunningServer { o in
            o.maxBatch = 16
            o.maxDelayMs = 10_000
        }
        let leaving = try server.client(), staying = try server.client()
        leaving.send(HTTPTestClient.post("/v1/images/generations", json: #"{"seed": 1, "n": 3}"#))
        staying.send(HTTPTestClient.get("/v1/generate?seed=2"))
        // pending_responses counts the /metrics request that reads it, too.
        try server.waitForMetrics { $0["onestep_queue_depth_images"] == 4 && $0["onestep_pending_responses"] == 3 }

        leaving.close()
        let m = try server.waitForMetrics {
            $0["onestep_queue_depth_images"] == 1 && $0[#"onestep_rejected_total{reason="client_gone"}"#] == 1
        }
        XCTAssertEqual(m["onestep_pending_responses"], 2)

        staying.close()
        try server.waitForMetrics {
            $0["onestep_queue_depth_images"] == 0 && $0[#"onestep_rejected_total{reason="client_gone"}"#] == 2
                && $0["onestep_pending_responses"] == 1
        }
        XCTAssertTrue(server.server.drainAndStop())
        XCTAssertEqual(server.server.metrics.value("onestep_images_generated_total", [("model", "cd_tiny")]), 0,
                       "work of clients that left is never computed")
    }
}

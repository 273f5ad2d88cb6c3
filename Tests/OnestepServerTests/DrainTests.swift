// Shutdown: readiness turns 503 while draining, new work is refused, queued work is answered; and the real
// binary, sent SIGTERM with requests queued, answers all of them and exits 0.

import Foundation
import OnestepCore
import HTTP1
import XCTest
@testable import OnestepServer

final class DrainTests: XCTestCase {
    func testReadyzIs503AndNewWorkRefusedWhileDraining() throws {
        let server = try RunningServer { o in o.maxDelayMs = 1 }
        // A job that holds the only compute worker until the test opens the gate, so the drain lasts exactly as
        // long as the test needs (its isCancelled check runs on the worker just before compute).
        let gate = DispatchSemaphore(value: 0), started = DispatchSemaphore(value: 0)
        let blocker = GenerationJob(id: 0, model: "cd_tiny", steps: 1, images: [GenerationRequest(seed: 1, label: 1)],
                                    deadline: .now + .seconds(60),
                                    isCancelled: { started.signal(); gate.wait(); return false }, complete: { _ in })
        XCTAssertEqual(server.server.queue.submit(blocker), .accepted)
        XCTAssertEqual(started.wait(timeout: .now() + 10), .success)

        let queued = try server.client()
        queued.send(HTTPTestClient.get("/v1/generate?seed=3"))
        try server.waitForMetrics { $0["onestep_queue_depth_images"] == 1 }
        XCTAssertEqual(try server.get("/readyz").status, 200)

        let drained = Locked<Bool?>(nil)
        let onestep = server.server
        let drainer = Thread {
            let clean = onestep.drainAndStop()
            drained.withLock { $0 = clean }
        }
        drainer.start()
        let deadline = Date().addingTimeInterval(10)
        var ready = try server.get("/readyz")
        while ready.status == 200, Date() < deadline {
            usleep(2_000)
            ready = try server.get("/readyz")
        }
        XCTAssertEqual(ready.status, 503, ready.text)
        XCTAssertEqual(ready.errorType, "draining")
        XCTAssertEqual(try server.get("/healthz").status, 200, "liveness stays up while draining")
        let refused = try server.get("/v1/generate?seed=4")
        XCTAssertEqual(refused.status, 503)
        XCTAssertEqual(refused.errorType, "draining")
        XCTAssertNil(drained.withLock { $0 }, "the drain waits for queued work")

        gate.signal()
        let answer = try XCTUnwrap(queued.readResponse())
        XCTAssertEqual(answer.status, 200, "queued work is answered during the drain")
        assertPNG(answer.body, size: 16, channels: 3)
        XCTAssertEqual(answer.headers["connection"], "close")
        let stopDeadline = Date().addingTimeInterval(15)
        while drained.withLock({ $0 }) == nil, Date() < stopDeadline { usleep(5_000) }
        XCTAssertEqual(drained.withLock { $0 }, true, "drain finished in time")
        XCTAssertThrowsError(try server.get("/healthz"), "the listener is closed after the drain")
        XCTAssertEqual(server.server.metrics.value("onestep_rejected_total", [("reason", "draining")]), 1)
    }

    func testSIGTERMWithRequestsQueuedAnswersThemAllAndExitsZero() throws {
        let binary = try Self.serveBinary()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        // A 10 s batching delay and a batch of 64 keep every request queued until the signal.
        process.arguments = ["--models", try Fixtures.pixelModels.get(), "--port", "0", "--workers", "1", "--threads", "1",
                             "--max-batch", "64", "--max-delay-ms", "10000", "--drain-timeout-ms", "20000"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = Locked<String>("")
        let reader = Thread {
            while true {
                let data = out.fileHandleForReading.availableData
                if data.isEmpty { return }
                output.withLock { $0 += String(decoding: data, as: UTF8.self) }
            }
        }
        reader.start()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        // The port is in the "listening on http://127.0.0.1:PORT" line.
        var port: Int?
        let startDeadline = Date().addingTimeInterval(20)
        while port == nil, process.isRunning, Date() < startDeadline {
            port = output.withLock { Self.listeningPort(in: $0) }
            if port == nil { usleep(10_000) }
        }
        let p = try XCTUnwrap(port, "no listening line; output:\n\(output.withLock { $0 })")

        var clients: [HTTPTestClient] = []
        for seed in 0..<8 {
            let c = try HTTPTestClient(port: p, timeout: 30)
            c.send(HTTPTestClient.get("/v1/generate?seed=\(seed)"))
            clients.append(c)
        }
        let multi = try HTTPTestClient(port: p, timeout: 30)
        multi.send(HTTPTestClient.post("/v1/images/generations", json: #"{"seed": 100, "n": 4}"#))
        // Wait until all 12 images are queued.
        let queueDeadline = Date().addingTimeInterval(10)
        var depth = 0.0
        while depth != 12, Date() < queueDeadline {
            if let m = try HTTPTestClient(port: p).get("/metrics") { depth = parseMetrics(m.text)["onestep_queue_depth_images"] ?? 0 }
            if depth != 12 { usleep(10_000) }
        }
        XCTAssertEqual(depth, 12, "requests queued before the signal")

        XCTAssertEqual(kill(process.processIdentifier, SIGTERM), 0)
        for (seed, c) in clients.enumerated() {
            let r = try XCTUnwrap(c.readResponse(), "seed \(seed) answered")
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(r.headers["x-seed"], String(seed))
            assertPNG(r.body, size: 16, channels: 3)
        }
        let r = try XCTUnwrap(multi.readResponse())
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual((r.json?["data"] as? [[String: Any]])?.count, 4)

        let exitDeadline = Date().addingTimeInterval(20)
        while process.isRunning, Date() < exitDeadline { usleep(10_000) }
        XCTAssertFalse(process.isRunning, "exited after the drain")
        guard !process.isRunning else { return }
        process.waitUntilExit()
        reader.cancel()
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0)
        let log = output.withLock { $0 }
        XCTAssertTrue(log.contains("signal received: draining (12 images queued"), log)
        XCTAssertTrue(log.contains("drained; exiting"), log)
    }

    static func listeningPort(in text: String) -> Int? {
        guard let range = text.range(of: "listening on http://127.0.0.1:") else { return nil }
        return Int(text[range.upperBound...].prefix { $0.isNumber })
    }

    /// The onestep-serve built beside the test bundle (`swift test` builds every product of the package).
    static func serveBinary() throws -> String {
        var dirs = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
        dirs.append(Bundle.main.bundleURL)
        dirs.append(Bundle.main.bundleURL.deletingLastPathComponent())
        for d in dirs {
            let candidate = d.appendingPathComponent("onestep-serve").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw TestClientError(description: "onestep-serve not found beside the test bundle in \(dirs.map(\.path)); build it with swift build --product onestep-serve")
    }
}

import Foundation
import HTTP1
import XCTest
@testable import OnestepServer

/// A stopped server lets go of everything it built: no reference cycle keeps the server, its HTTP loop, queue,
/// workers, router or metrics alive. (LeakSanitizer, scripts/sanitize address, found such a cycle: the metrics'
/// gauges held the HTTP server, whose callbacks held the metrics.) Embedders that start and stop servers, and the
/// test suite itself, would otherwise keep every model's buffers forever.
final class ReleaseTests: XCTestCase {
    func testStoppedServerIsFreed() throws {
        weak var server: OnestepServer?, http: HTTPServer?, queue: BatchQueue?, workers: ComputeWorkers?
        weak var router: Router?, metrics: Metrics?
        try {
            let running = try RunningServer()
            XCTAssertEqual(try running.get("/healthz").status, 200)
            XCTAssertEqual(try running.get("/v1/generate?model=cd_tiny&seed=3").status, 200)
            XCTAssertEqual(try running.get("/metrics").status, 200)
            server = running.server
            http = running.server.http
            queue = running.server.queue
            workers = running.server.workers
            router = running.server.router
            metrics = running.server.metrics
        }()  // RunningServer's deinit drains and stops the server here
        // Threads that were stopped may still be returning; give them a moment, then nothing may be left.
        let deadline = Date().addingTimeInterval(10)
        while server != nil || http != nil || workers != nil, Date() < deadline { usleep(10_000) }
        XCTAssertNil(server, "OnestepServer")
        XCTAssertNil(http, "HTTPServer")
        XCTAssertNil(queue, "BatchQueue")
        XCTAssertNil(workers, "ComputeWorkers")
        XCTAssertNil(router, "Router")
        XCTAssertNil(metrics, "Metrics")
    }
}

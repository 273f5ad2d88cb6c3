// Each class of bad request gets its own status over a real socket, the connection is closed where the stream
// cannot be trusted any more, and the server keeps serving afterwards.

import Foundation
import XCTest
@testable import OnestepServer

final class MalformedRequestTests: XCTestCase {
    func testEachMalformedRequestClassGetsItsStatusAndTheServerKeepsServing() throws {
        let server = try RunningServer { o in
            o.maxBodyBytes = 1024
            o.headerTimeoutMs = 300
            o.bodyTimeoutMs = 300
        }
        let padding = String(repeating: "x", count: 1000)
        let cases: [(what: String, request: String, status: Int)] = [
            ("garbage request line", "HELLO\r\n\r\n", 400),
            ("header without colon", "GET /healthz HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", 400),
            ("HTTP/1.1 without Host", "GET /healthz HTTP/1.1\r\n\r\n", 400),
            ("Content-Length and Transfer-Encoding", "POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400),
            ("invalid Content-Length", "POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n", 400),
            ("body too large", "POST /v1/images/generations HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n", 413),
            ("request line too long", "GET /v1/generate?seed=" + String(repeating: "1", count: 9000) + " HTTP/1.1\r\nHost: t\r\n\r\n", 414),
            ("headers too large", "GET /healthz HTTP/1.1\r\nHost: t\r\n" + (0..<20).map { "X-Pad-\($0): \(padding)\r\n" }.joined() + "\r\n", 431),
            ("gzip body", "POST /v1/generate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 501),
            ("HTTP/2.0 request line", "GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ]
        for (what, request, status) in cases {
            let c = try server.client(timeout: 5)
            let r = try XCTUnwrap(c.roundTrip(request), what)
            XCTAssertEqual(r.status, status, "\(what): \(r.text)")
            XCTAssertNotNil(r.errorMessage, "\(what): JSON error body")
            XCTAssertEqual(r.headers["connection"], "close", what)
            XCTAssertTrue(c.isClosedByServer(), "\(what): connection closed")
            XCTAssertEqual(try server.get("/healthz").status, 200, "still serving after \(what)")
        }

        // 408: a head that never ends, and a body that stops short, with 300 ms timeouts.
        for (what, partial) in [("slow head", "GET /healthz HTTP/1.1\r\nHost: t\r\n"),
                                ("slow body", "POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n{\"se")] {
            let c = try server.client(timeout: 5)
            let start = Date()
            let r = try XCTUnwrap(c.roundTrip(partial), what)
            XCTAssertEqual(r.status, 408, "\(what): \(r.text)")
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.25, what)
            XCTAssertTrue(c.isClosedByServer(), "\(what): connection closed")
        }

        // A bad request that parses (400 from validation) keeps the connection open.
        let keep = try server.client()
        XCTAssertEqual(keep.get("/v1/generate?seed=x")?.status, 400)
        XCTAssertEqual(keep.get("/nowhere")?.status, 404)
        let methodNotAllowed = try XCTUnwrap(keep.roundTrip("PATCH /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))
        XCTAssertEqual(methodNotAllowed.status, 405)
        XCTAssertEqual(methodNotAllowed.headers["allow"], "GET, HEAD")
        let head = try XCTUnwrap(keep.roundTrip("HEAD /readyz HTTP/1.1\r\nHost: t\r\n\r\n", isHead: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertTrue(head.body.isEmpty)
        let png = try XCTUnwrap(keep.get("/v1/generate?seed=5"))
        XCTAssertEqual(png.status, 200, png.text)
        assertPNG(png.body, size: 16, channels: 3)

        let m = try server.metrics()
        for (status, count) in [(400, 5.0), (413, 1), (414, 1), (431, 1), (501, 1), (505, 1), (408, 2)] {
            XCTAssertEqual(m["onestep_http_requests_total{route=\"unparsed\",status=\"\(status)\"}"], count, "\(status) counted")
        }
    }
}

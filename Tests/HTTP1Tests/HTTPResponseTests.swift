// Serialization: framing headers, HEAD, bodiless statuses, Connection, and the JSON error shape.

import Dispatch
import Synchronization
import XCTest
@testable import HTTP1

final class HTTPResponseTests: XCTestCase {
    private func wire(_ response: HTTPResponse, head: Bool = false, keepAlive: Bool = true,
                      version: HTTPVersion = .http1_1) -> String {
        let bytes = response.serialized(
            framing: ResponseFraming(isHeadRequest: head, keepAlive: keepAlive, requestVersion: version),
            date: "Sun, 06 Nov 1994 08:49:37 GMT")
        return String(decoding: bytes, as: UTF8.self)
    }

    func testFramingHeadersAreTheServers() {
        var response = HTTPResponse.text("hi")
        response.headers["Content-Length"] = "999"
        response.headers["Connection"] = "keep-alive"
        XCTAssertEqual(wire(response), "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       + "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nhi")
    }

    func testHeadKeepsContentLengthButNoBody() {
        XCTAssertTrue(wire(.text("hello"), head: true).hasSuffix("Content-Length: 5\r\n\r\n"))
    }

    func testNoContentHasNoLength() {
        XCTAssertFalse(wire(HTTPResponse(status: .noContent)).contains("Content-Length"))
    }

    func testConnectionHeader() {
        XCTAssertTrue(wire(.text(""), keepAlive: false).contains("Connection: close\r\n"))
        XCTAssertTrue(wire(.text(""), version: .http1_0).contains("Connection: keep-alive\r\n"))
        XCTAssertFalse(wire(.text("")).contains("Connection:"))
    }

    func testHeaderInjectionIsDropped() {
        var response = HTTPResponse.text("")
        response.headers["X-Evil"] = "a\r\nSet-Cookie: b"
        XCTAssertFalse(wire(response).contains("Set-Cookie"))
    }

    func testJSONErrorShape() {
        let response = HTTPResponse.error(.badRequest, message: "bad \"prompt\"\n", type: "invalid_request_error")
        XCTAssertEqual(response.status.code, 400)
        XCTAssertEqual(response.headers["content-type"], "application/json")
        XCTAssertEqual(String(decoding: response.body, as: UTF8.self),
                       #"{"error":{"message":"bad \"prompt\"\n","type":"invalid_request_error"}}"#)
        XCTAssertEqual(jsonStringLiteral("\u{01}"), #""\u0001""#)
    }

    func testDateFormat() {
        XCTAssertEqual(HTTPDate.format(secondsSinceEpoch: 784111777), "Sun, 06 Nov 1994 08:49:37 GMT")
    }
}

final class HTTPResponderTests: XCTestCase {
    func testConcurrentRespondersAcceptExactlyOne() {
        // A mailbox with no loop behind it: posts are queued, wake-ups write to an invalid descriptor (ignored).
        let mailbox = LoopMailbox(wakeFD: -1)
        let responder = HTTPResponder(connectionID: 7, sequence: 0, mailbox: mailbox)
        let accepted = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 16) { index in
            if responder.respond(.text("\(index)")) { accepted.add(1, ordering: .relaxed) }
        }
        XCTAssertEqual(accepted.load(ordering: .relaxed), 1)
        XCTAssertEqual(mailbox.takeAll().count, 1)
        XCTAssertFalse(responder.cancel(), "an answered request cannot be cancelled")
        XCTAssertFalse(responder.isCancelled)
    }

    func testCancelRunsCallbacksOnceAndBlocksResponses() {
        let mailbox = LoopMailbox(wakeFD: -1)
        let responder = HTTPResponder(connectionID: 1, sequence: 0, mailbox: mailbox)
        let calls = Atomic<Int>(0)
        responder.onCancel { calls.add(1, ordering: .relaxed) }
        XCTAssertTrue(responder.cancel())
        XCTAssertFalse(responder.cancel())
        XCTAssertFalse(responder.respond(.text("late")))
        XCTAssertEqual(calls.load(ordering: .relaxed), 1)
        XCTAssertTrue(mailbox.takeAll().isEmpty)
    }
}

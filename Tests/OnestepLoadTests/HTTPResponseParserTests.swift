// The built-in client's response framing (HTTPResponseParser), fed in every split, and its URL reading; the
// engine itself is run against TestServer and raw sockets in EngineTests.swift.
import XCTest
@testable import OnestepLoad

final class HTTPResponseParserTests: XCTestCase {
    /// Feeds `text` to a fresh parser in pieces of `piece` bytes; the result of the last call, and the body.
    private func parse(_ text: String, piece: Int, head: Bool = false) -> (HTTPParseResult, HTTPResponseParser, [UInt8], Int) {
        var p = HTTPResponseParser()
        p.reset(headRequest: head)
        var body: [UInt8] = []
        let bytes = Array(text.utf8)
        var result = HTTPParseResult.needMore
        var offset = 0
        while offset < bytes.count {
            let n = Swift.min(piece, bytes.count - offset)
            result = bytes[offset..<(offset + n)].withUnsafeBytes { p.feed($0) { body.append(contentsOf: $0) } }
            if case .complete(let used) = result { return (result, p, body, offset + used) }
            if case .malformed = result { return (result, p, body, offset) }
            offset += n
        }
        return (result, p, body, offset)
    }

    /// Every framing, whole and split into pieces of 1, 2, 3, 7 bytes: the same status, body and end.
    func testFramingsInAnySplit() {
        let cases: [(String, Int, String, Bool)] = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", 200, "ok\n", true),
            ("HTTP/1.1 404 Not Found\r\ncontent-length:0\r\n\r\n", 404, "", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1a;x=y\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n0\r\nT: 1\r\n\r\n",
             200, "abcABCDEFGHIJKLMNOPQRSTUVWXYZ", true),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", 200, "hi", false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200, "hi", false),
            ("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nhi", 200, "hi", true),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", 201, "x", true),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204, "", true),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", 304, "", true),
            ("HTTP/1.1 200 OK\nContent-Length: 1\n\nz", 200, "z", true),  // bare LF line ends
        ]
        for (text, status, body, keep) in cases {
            for piece in [text.utf8.count, 1, 2, 3, 7] {
                let (r, p, got, used) = parse(text, piece: piece)
                guard case .complete = r else { XCTFail("\(piece): \(text) -> \(r)"); continue }
                XCTAssertEqual(used, text.utf8.count, "consumed all of \(text.debugDescription) in pieces of \(piece)")
                XCTAssertEqual(p.status, status, text)
                XCTAssertEqual(String(decoding: got, as: UTF8.self), body, text)
                XCTAssertEqual(p.bodyBytes, body.utf8.count, text)
                XCTAssertEqual(p.keepAlive, keep, text)
            }
        }
    }

    /// A response ends where its framing says, not at the end of the bytes (what follows is not its body).
    func testStopsAtTheEndOfTheResponse() {
        let (r, _, body, used) = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", piece: 100)
        XCTAssertEqual(r, .complete(consumed: 40))
        XCTAssertEqual(used, 40)
        XCTAssertEqual(body, Array("hi".utf8))
    }

    /// HEAD answers carry Content-Length but no body.
    func testHeadResponseHasNoBody() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        let (r, p, body, used) = parse(text, piece: 5, head: true)
        guard case .complete = r else { return XCTFail("\(r)") }
        XCTAssertEqual(used, text.utf8.count)
        XCTAssertEqual(p.status, 200)
        XCTAssertEqual(body, [])
    }

    /// Without length or chunking the body runs to the close: complete at end of stream, not before.
    func testBodyUntilClose() {
        let (r, p, body, _) = parse("HTTP/1.1 200 OK\r\n\r\nstream", piece: 4)
        XCTAssertEqual(r, .needMore)
        XCTAssertEqual(body, Array("stream".utf8))
        XCTAssertFalse(p.keepAlive)
        XCTAssertEqual(p.endOfStream(), .complete)
    }

    /// What a close means at each stage: nothing yet, cut-off head, cut-off body.
    func testEndOfStreamStages() {
        var fresh = HTTPResponseParser()
        fresh.reset(headRequest: false)
        XCTAssertEqual(fresh.endOfStream(), .nothing)
        XCTAssertEqual(parse("HTTP/1.1 200 OK\r\nConte", piece: 100).1.endOfStream(), .partial)
        XCTAssertEqual(parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", piece: 100).1.endOfStream(), .partial)
        XCTAssertEqual(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", piece: 100).1.endOfStream(), .partial)
    }

    /// Each way a response can be malformed is refused with a reason.
    func testMalformed() {
        let bad = [
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
        ]
        for text in bad {
            for piece in [100, 1] {
                guard case .malformed(let why) = parse(text, piece: piece).0 else {
                    XCTFail("accepted \(text.debugDescription) in pieces of \(piece)"); continue
                }
                XCTAssertFalse(why.isEmpty)
            }
        }
        // A head that never ends is cut off at the limit instead of growing without bound.
        let endless = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Pad: 0123456789\r\n", count: 4000)
        guard case .malformed = parse(endless, piece: 4096).0 else { return XCTFail("endless head accepted") }
    }

    func testChunkSizeLines() {
        XCTAssertEqual(HTTPResponseParser.chunkSize(Array("0".utf8)), 0)
        XCTAssertEqual(HTTPResponseParser.chunkSize(Array("fF".utf8)), 255)
        XCTAssertEqual(HTTPResponseParser.chunkSize(Array("10;name=value".utf8)), 16)
        XCTAssertNil(HTTPResponseParser.chunkSize(Array("".utf8)))
        XCTAssertNil(HTTPResponseParser.chunkSize(Array("g".utf8)))
        XCTAssertNil(HTTPResponseParser.chunkSize(Array("1234567890abcdef0".utf8)), "overflow")
    }

    func testURLParts() {
        let a = HTTPURLParts("http://127.0.0.1:8080/v1/generate?seed={{seed}}#frag")
        XCTAssertEqual(a?.host, "127.0.0.1")
        XCTAssertEqual(a?.port, 8080)
        XCTAssertEqual(a?.authority, "127.0.0.1:8080")
        XCTAssertEqual(a?.target, "/v1/generate?seed={{seed}}")
        XCTAssertEqual(HTTPURLParts("HTTP://example.com")?.target, "/")
        XCTAssertEqual(HTTPURLParts("http://example.com?q=1")?.target, "/?q=1")
        XCTAssertEqual(HTTPURLParts("http://example.com")?.port, 80)
        XCTAssertEqual(HTTPURLParts("http://[::1]:9/x")?.host, "::1")
        XCTAssertEqual(HTTPURLParts("http://[::1]:9/x")?.port, 9)
        for unsupported in ["https://h/x", "http://user:pw@h/x", "http://h:0/", "http://h:70000/", "http://:80/",
                            "http://{{seed}}.h/", "http://[::1/x", "ftp://h/"] {
            XCTAssertNil(HTTPURLParts(unsupported), unsupported)
        }
    }
}

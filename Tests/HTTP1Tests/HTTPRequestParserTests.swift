// The parser fed raw request strings: valid shapes, pipelining, every split point, and each refusal's status.

import XCTest
@testable import HTTP1

final class HTTPRequestParserTests: XCTestCase {
    private func parseAll(_ text: String, limits: HTTPRequestParser.Limits = .init()) throws -> [HTTPRequest] {
        var parser = HTTPRequestParser(limits: limits)
        parser.append(Array(text.utf8))
        var requests: [HTTPRequest] = []
        while let request = try parser.nextRequest() { requests.append(request) }
        return requests
    }

    /// The status the parser refuses `text` with, or nil if it accepts it.
    private func refusal(_ text: String, limits: HTTPRequestParser.Limits = .init()) -> Int? {
        do {
            _ = try parseAll(text, limits: limits)
            return nil
        } catch let error as HTTPParseError {
            return error.status.code
        } catch {
            return -1
        }
    }

    func testSimpleGet() throws {
        let requests = try parseAll("GET /v1/models?limit=2&name=a%20b+c HTTP/1.1\r\nHost: x\r\nX-Thing:  spaced \r\n\r\n")
        XCTAssertEqual(requests.count, 1)
        let request = try XCTUnwrap(requests.first)
        XCTAssertEqual(request.method, .GET)
        XCTAssertEqual(request.target, "/v1/models?limit=2&name=a%20b+c")
        XCTAssertEqual(request.path, "/v1/models")
        XCTAssertEqual(request.query["limit"], "2")
        XCTAssertEqual(request.query["name"], "a b c")
        XCTAssertEqual(request.version, .http1_1)
        XCTAssertEqual(request.headers["x-thing"], "spaced")
        XCTAssertEqual(request.headers["HOST"], "x")
        XCTAssertTrue(request.keepAlive)
        XCTAssertTrue(request.body.isEmpty)
    }

    func testPostWithBodyAndHead() throws {
        let requests = try parseAll(
            "POST /gen HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
                + "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(requests.map(\.method), [.POST, .HEAD])
        XCTAssertEqual(String(decoding: requests[0].body, as: UTF8.self), "hello world")
    }

    func testPipelinedRequestsComeOutInOrder() throws {
        let text = (0..<5).map { "GET /\($0) HTTP/1.1\r\nHost: x\r\n\r\n" }.joined()
        XCTAssertEqual(try parseAll(text).map(\.target), ["/0", "/1", "/2", "/3", "/4"])
    }

    func testEverySplitPointGivesTheSameRequests() throws {
        let text = "POST /a?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"
            + "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        let bytes = Array(text.utf8)
        for split in 0...bytes.count {
            var parser = HTTPRequestParser()
            var requests: [HTTPRequest] = []
            parser.append(bytes[0..<split])
            while let request = try parser.nextRequest() { requests.append(request) }
            parser.append(bytes[split...])
            while let request = try parser.nextRequest() { requests.append(request) }
            XCTAssertEqual(requests.map(\.target), ["/a?x=1", "/b"], "split at \(split)")
            XCTAssertEqual(requests.first.map { Array($0.body) }, Array("abcde".utf8), "split at \(split)")
            XCTAssertEqual(requests.last?.keepAlive, true, "split at \(split)")
        }
    }

    func testByteAtATime() throws {
        var parser = HTTPRequestParser()
        var requests: [HTTPRequest] = []
        for byte in "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\nHost: x\n\n".utf8 {
            parser.append([byte])
            while let request = try parser.nextRequest() { requests.append(request) }
        }
        XCTAssertEqual(requests.map(\.target), ["/", "/2"])
    }

    func testKeepAliveRules() throws {
        XCTAssertEqual(try parseAll("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").first?.keepAlive, false)
        XCTAssertEqual(try parseAll("GET / HTTP/1.0\r\n\r\n").first?.keepAlive, false)
        XCTAssertEqual(try parseAll("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").first?.keepAlive, true)
        XCTAssertEqual(try parseAll("GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, close\r\n\r\n").first?.keepAlive, false)
    }

    func testAbsoluteFormAndLeadingEmptyLines() throws {
        let requests = try parseAll("\r\nGET http://example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        XCTAssertEqual(requests.first?.target, "/p?q=1")
        XCTAssertEqual(try parseAll("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").first?.target, "*")
    }

    func testIdenticalContentLengthsAreAccepted() throws {
        let requests = try parseAll("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc")
        XCTAssertEqual(requests.first?.body, Array("abc".utf8))
    }

    func testExpectContinue() throws {
        var parser = HTTPRequestParser()
        parser.append(Array("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".utf8))
        XCTAssertNil(try parser.nextRequest())
        XCTAssertTrue(parser.expectsContinue)
        parser.acknowledgeContinue()
        XCTAssertFalse(parser.expectsContinue)
        parser.append(Array("ok".utf8))
        XCTAssertEqual(try parser.nextRequest()?.body, Array("ok".utf8))
    }

    func testMalformedRequestsAre400() {
        let malformed = [
            "GET /\r\nHost: x\r\n\r\n",                                 // missing version
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",                       // double space
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",                        // bad method token
            "GET nopath HTTP/1.1\r\nHost: x\r\n\r\n",                   // target not a path
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",                     // space in target
            "GET / HTTX/1.1\r\nHost: x\r\n\r\n",                        // bad version
            "GET / HTTP/1.1\r\n\r\n",                                   // no Host
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",             // two Hosts
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",         // space in name
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",                       // space before colon (RFC 9112 §5.1)
            "GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n  folded\r\n\r\n",    // obs-fold
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        ]
        for text in malformed {
            XCTAssertEqual(refusal(text), 400, text.debugDescription)
        }
    }

    func testLimitsAndUnsupportedFeaturesHaveTheirStatuses() {
        let limits = HTTPRequestParser.Limits(maxRequestLineBytes: 64, maxHeaderBytes: 128, maxHeaderCount: 5,
                                              maxBodyBytes: 10)
        let longPath = "/" + String(repeating: "a", count: 100)
        XCTAssertEqual(refusal("GET \(longPath) HTTP/1.1\r\nHost: x\r\n\r\n", limits: limits), 414)
        XCTAssertEqual(refusal("GET \(longPath)", limits: limits), 414, "refused before the line ends")
        let bigHeader = "X-Big: " + String(repeating: "b", count: 200)
        XCTAssertEqual(refusal("GET / HTTP/1.1\r\nHost: x\r\n\(bigHeader)\r\n\r\n", limits: limits), 431)
        XCTAssertEqual(refusal("GET / HTTP/1.1\r\nHost: x\r\n\(bigHeader)", limits: limits), 431,
                       "refused before the head ends")
        let manyHeaders = (0..<6).map { "H\($0): v\r\n" }.joined()
        XCTAssertEqual(refusal("GET / HTTP/1.1\r\nHost: x\r\n\(manyHeaders)\r\n", limits: limits), 431)
        XCTAssertEqual(refusal("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", limits: limits), 413)
        XCTAssertNil(refusal("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", limits: limits))
        XCTAssertEqual(refusal("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"), 501)
        XCTAssertEqual(refusal("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505)
        XCTAssertEqual(refusal("GET / HTTP/0.9\r\n\r\n"), 505)
    }

    /// Feeds `bytes` in two reads cut at `split`, as a connection does: the targets parsed, or the error.
    private func parseInTwoReads(_ bytes: [UInt8], split: Int, limits: HTTPRequestParser.Limits)
        -> Result<[String], HTTPParseError> {
        var parser = HTTPRequestParser(limits: limits)
        var targets: [String] = []
        do {
            for part in [bytes[0..<split], bytes[split...]] {
                parser.append(part)
                while let request = try parser.nextRequest() { targets.append(request.target) }
            }
            return .success(targets)
        } catch {
            return .failure(error)
        }
    }

    /// Found by fuzz/ (http_parser): a request line of exactly the limit was refused with 414 when its CR arrived
    /// in one read and its LF in the next, but parsed when both came together. The verdict must not depend on
    /// how the bytes were split.
    func testRequestLineOfExactlyTheLimitGetsTheSameVerdictWhateverTheSplit() {
        let limits = HTTPRequestParser.Limits(maxRequestLineBytes: 40, maxHeaderBytes: 96, maxHeaderCount: 4,
                                              maxBodyBytes: 64)
        // The fuzzer's input (fuzz/corpus/http_parser/regression-request-line-cr-lf-split without its control
        // byte): a 40-byte request line with a garbage version is a 400, never a 414.
        let crashing: [UInt8] = Array("EGT =1 HTTP/1.1|||||".utf8) + [1, 0, 0, 0]
            + Array("||||||||||||||||\r\n\r\n\r\n".utf8)
        for split in 0...crashing.count {
            XCTAssertEqual(parseInTwoReads(crashing, split: split, limits: limits),
                           .failure(.malformed("invalid HTTP version")), "split at \(split)")
        }
        // A valid request line of exactly 40 bytes is accepted at every split.
        let path = "/" + String(repeating: "a", count: 26)
        let valid = Array("GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        XCTAssertEqual(valid.firstIndex(of: 13), 40)
        for split in 0...valid.count {
            XCTAssertEqual(parseInTwoReads(valid, split: split, limits: limits), .success([path]), "split at \(split)")
        }
        XCTAssertEqual(refusal("GET \(path)a HTTP/1.1\r", limits: limits), 414,
                       "one byte over the limit is still refused before the line ends")
    }

    func testFailureIsSticky() {
        var parser = HTTPRequestParser()
        parser.append(Array("BROKEN\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertThrowsError(try parser.nextRequest())
        XCTAssertThrowsError(try parser.nextRequest())
    }

    func testQueryDecoding() {
        let query = HTTPQuery(parsing: "a=1&b=%E2%9C%93&c&d=x%2By&bad=%G1&a=2")
        XCTAssertEqual(query["a"], "1")
        XCTAssertEqual(query.values(for: "a"), ["1", "2"])
        XCTAssertEqual(query["b"], "✓")
        XCTAssertEqual(query["c"], "")
        XCTAssertEqual(query["d"], "x+y")
        XCTAssertEqual(query["bad"], "%G1")
        XCTAssertNil(query["zzz"])
    }

    // MARK: - Chunked bodies (RFC 9112 §7.1)

    private let chunked = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

    func testChunkedBodyWithExtensionsAndTrailersAtEverySplitPoint() throws {
        let text = chunked + "5;name=value\r\nhello\r\n1\r\n \r\nA ; quoted=\"a;b\"\r\n0123456789\r\n0\r\n"
            + "X-Trailer: ignored\r\n\r\n" + "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        let bytes = Array(text.utf8)
        for split in 0...bytes.count {
            var parser = HTTPRequestParser()
            var requests: [HTTPRequest] = []
            parser.append(Array(bytes[0..<split]))
            while let request = try parser.nextRequest() { requests.append(request) }
            parser.append(Array(bytes[split...]))
            while let request = try parser.nextRequest() { requests.append(request) }
            XCTAssertEqual(requests.map(\.target), ["/c", "/next"], "split \(split)")
            XCTAssertEqual(String(decoding: requests[0].body, as: UTF8.self), "hello 0123456789", "split \(split)")
            XCTAssertNil(requests[0].headers["X-Trailer"], "trailers are not merged into the headers")
        }
        // Byte by byte, and with bare LF line ends.
        var parser = HTTPRequestParser()
        var bodies: [[UInt8]] = []
        for byte in Array((chunked + "3\nabc\n0\n\n").utf8) {
            parser.append([byte])
            while let request = try parser.nextRequest() { bodies.append(request.body) }
        }
        XCTAssertEqual(bodies, [Array("abc".utf8)])
    }

    func testChunkedBodyLimitsAndMalformedFraming() {
        let limits = HTTPRequestParser.Limits(maxHeaderBytes: 128, maxBodyBytes: 10)
        // The same body limit as Content-Length: 10 bytes pass, 11 (in one chunk or across chunks) get 413.
        XCTAssertNil(refusal(chunked + "a\r\n0123456789\r\n0\r\n\r\n", limits: limits))
        XCTAssertEqual(refusal(chunked + "b\r\n", limits: limits), 413, "refused before the data arrives")
        XCTAssertEqual(refusal(chunked + "6\r\n012345\r\n5\r\n", limits: limits), 413)
        XCTAssertEqual(refusal(chunked + "7fffffffffffffff\r\n", limits: limits), 413)
        let cases: [(String, Int)] = [
            (chunked + "ffffffffffffffffff\r\n", 400),             // overflows 64 bits
            (chunked + "-1\r\n", 400),
            (chunked + "0x5\r\n", 400),
            (chunked + "\r\n", 400),                                // empty size
            (chunked + "5 junk\r\n", 400),
            (chunked + "5;ext\u{01}\r\nhello\r\n0\r\n\r\n", 400),  // control character in an extension
            (chunked + "3\r\nabcdef\r\n0\r\n\r\n", 400),          // data longer than its size
            (chunked + String(repeating: "0", count: 5000) + "\r\n", 400),  // size line over 4 KiB
            (chunked + "0\r\n" + String(repeating: "T: v\r\n", count: 40) + "\r\n", 431),  // trailers too big
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        ]
        for (text, status) in cases {
            XCTAssertEqual(refusal(text, limits: limits), status, text.debugDescription)
        }
    }

    func testChunkedBodyWithExpectContinue() throws {
        var parser = HTTPRequestParser()
        parser.append(Array("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".utf8))
        XCTAssertNil(try parser.nextRequest())
        XCTAssertTrue(parser.expectsContinue)
        parser.acknowledgeContinue()
        parser.append(Array("2\r\nok\r\n0\r\n\r\n".utf8))
        XCTAssertEqual(try parser.nextRequest()?.body, Array("ok".utf8))
    }
}

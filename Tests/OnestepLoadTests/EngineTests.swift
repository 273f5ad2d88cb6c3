// The two HTTP clients of onestep-load (--engine builtin / curl) against TestServer on loopback: the same counts,
// statuses, bytes and error kinds from both, keep-alive reuse, the retry of a request whose kept-alive connection
// the server had closed, and the request bytes the built-in client sends. Counts only, no speed bounds (the speed
// comparison is loadtest/bench-vs-wrk).
import Foundation
import XCTest
@testable import OnestepLoad

final class EngineTests: XCTestCase {
    private func run(_ args: [String]) throws -> (LoadConfig, RunResults) {
        guard case .run(let c) = try Arguments.parse(args + ["--quiet"]) else { throw UsageError("help") }
        return (c, LoadDriver(config: c).run())
    }

    private let engines = ["builtin", "curl"]

    func testAutoPicksBuiltinForPlainHTTP() throws {
        guard case .run(let plain) = try Arguments.parse(["--rate", "1", "http://127.0.0.1:9/x?seed={{seed}}"]),
              case .run(let tls) = try Arguments.parse(["--rate", "1", "https://127.0.0.1:9/x"]),
              case .run(let pooled) = try Arguments.parse(["--concurrency", "4", "--connections", "2", "http://127.0.0.1:9/x"])
        else { return XCTFail("not a run") }
        if (ProcessInfo.processInfo.environment["http_proxy"] ?? "").isEmpty
            && (ProcessInfo.processInfo.environment["ALL_PROXY"] ?? "").isEmpty
            && (ProcessInfo.processInfo.environment["all_proxy"] ?? "").isEmpty {
            XCTAssertEqual(plain.effectiveEngine, .builtin)
        }
        XCTAssertEqual(tls.effectiveEngine, .curl)
        XCTAssertEqual(pooled.effectiveEngine, .curl, "fewer connections than requests in flight need libcurl's pool")
        XCTAssertThrowsError(try Arguments.parse(["--rate", "1", "--engine", "builtin", "https://h/x"]))
        XCTAssertThrowsError(try Arguments.parse(["--concurrency", "4", "--connections", "2", "--engine", "builtin", "http://h/x"]))
        XCTAssertThrowsError(try Arguments.parse(["--rate", "1", "--engine", "fast", "http://h/x"]))
    }

    /// Same run on both engines: every request answered, the same status counts and body bytes, and the
    /// connections kept alive (one per slot).
    func testBothEnginesCountAlikeAndKeepAlive() throws {
        for engine in engines {
            let server = try TestServer(.init(body: Array(repeating: 65, count: 5000)))
            defer { server.stop() }
            let (c, r) = try run(["--concurrency", "3", "--requests", "60", "--threads", "1", "--engine", engine,
                                  server.url + "/x"])
            XCTAssertEqual(c.effectiveEngine.rawValue, engine)
            XCTAssertEqual(r.measured.ok, 60, engine)
            XCTAssertEqual(r.measured.statusCounts, [200: 60], engine)
            XCTAssertEqual(r.measured.bytes, 60 * 5000, engine)
            XCTAssertEqual(r.measured.corrected.totalCount, 60, engine)
            XCTAssertEqual(server.connectionCount, 3, "\(engine): keep-alive, one connection per slot")
        }
    }

    /// A server that closes every connection right after answering although it promised keep-alive: no request
    /// fails on either engine (the client notices the close, or retries once on a new connection when the close
    /// raced its send: libcurl's own retry misses a close landing after the send, so the curl engine adds one).
    func testServerClosingKeptAliveConnectionsCostsNoRequest() throws {
        for engine in engines {
            let server = try TestServer(.init(closeAfterResponse: true))
            defer { server.stop() }
            let (_, r) = try run(["--concurrency", "2", "--requests", "40", "--threads", "1", "--engine", engine,
                                  server.url + "/x"])
            XCTAssertEqual(r.measured.ok, 40, "\(engine): \(r.measured.errorKindCounts)")
            XCTAssertEqual(r.measured.errors, 0, engine)
            XCTAssertEqual(server.requestCount, 40, engine)
        }
    }

    /// Response framings and broken responses from a server sending fixed bytes: both engines see the same bodies
    /// and name the same error kinds.
    func testFramingsAndBrokenResponsesAlike() throws {
        // The server closes the connection after each raw response, so the complete ones say "Connection: close":
        // without it a client reuses the connection and its next send races the close (a reset, seen under load).
        let cases: [(String, Int, [String: Int], Int)] = [  // response, ok, error kinds, body bytes per ok
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n", 3, [:], 7),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the close", 3, [:], 15),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", 3, [:], 2),
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, ["short_body": 3], 0),
            ("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 0, ["http_503": 3], 0),
            ("NOT HTTP AT ALL\r\n\r\n", 0, ["malformed": 3], 0),
        ]
        for (response, ok, kinds, bytes) in cases {
            for engine in engines {
                let server = try TestServer(.init(rawResponse: Array(response.utf8)))
                defer { server.stop() }
                let (_, r) = try run(["--concurrency", "1", "--requests", "3", "--engine", engine, "--timeout", "2s",
                                      "--error-budget", "off", server.url + "/x"])
                let what = "\(engine): \(response.debugDescription)"
                XCTAssertEqual(r.measured.ok, ok, what)
                XCTAssertEqual(r.measured.errorKindCounts, kinds, what)
                if ok > 0 { XCTAssertEqual(r.measured.bytes, ok * bytes, what) }
            }
        }
    }

    /// The built-in client's request: method, target, Host, libcurl's default headers, user headers replacing or
    /// removing defaults, and the body with its length.
    func testBuiltinRequestBytes() throws {
        let server = try TestServer()
        defer { server.stop() }
        _ = try run(["--concurrency", "1", "--requests", "1", "--engine", "builtin", "-H", "X-Test: 1", "-H", "Accept:",
                     "-H", "User-Agent: probe/2", "-d", "seed={{seed}}", "--seed-start", "7", server.url + "/gen?i={{index}}#f"])
        let sent = server.lastRequest
        let lines = sent.components(separatedBy: "\r\n")
        XCTAssertEqual(lines.first, "POST /gen?i=0 HTTP/1.1")
        XCTAssertTrue(lines.contains("Host: 127.0.0.1:\(server.port)"), sent)
        XCTAssertTrue(lines.contains("User-Agent: probe/2"), sent)
        XCTAssertFalse(lines.contains("User-Agent: onestep-load"), sent)
        XCTAssertFalse(lines.contains { $0.lowercased().hasPrefix("accept:") }, "'Accept:' removes the default: \(sent)")
        XCTAssertTrue(lines.contains("X-Test: 1"), sent)
        XCTAssertTrue(lines.contains("Content-Length: 6"), sent)
        XCTAssertTrue(sent.hasSuffix("\r\n\r\nseed=7"), sent)
    }

    /// A server that refuses a large body with 413 before reading it, closing gently (shut down writing, then
    /// discard the rest) or at once (a reset, which fails the client's send with the answer already received):
    /// the 413 is reported either way, and the connection, left mid-request, is not reused.
    func testEarlyAnswerToLargeBodyIsReported() throws {
        let file = NSTemporaryDirectory() + "big-\(UUID().uuidString.prefix(8)).bin"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(count: 8 << 20)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        for abrupt in [false, true] {
            for engine in engines {
                let server = try TestServer(.init(status: 413, answerBeforeBody: true, closeAbruptly: abrupt))
                defer { server.stop() }
                let (_, r) = try run(["--concurrency", "1", "--requests", "3", "--engine", engine, "--timeout", "5s",
                                      "--error-budget", "off", "-d", "@" + file, server.url + "/upload"])
                XCTAssertEqual(r.measured.errorKindCounts, ["http_413": 3], "\(engine), abrupt close: \(abrupt)")
                XCTAssertEqual(server.connectionCount, 3, "\(engine), abrupt close: \(abrupt)")
            }
        }
    }

    /// A name that does not resolve is a "dns" connect error on both engines.
    func testUnresolvableHostIsDNS() throws {
        for engine in engines {
            let (_, r) = try run(["--concurrency", "1", "--requests", "2", "--engine", engine, "--timeout", "5s",
                                  "http://no-such-host.invalid:81/x"])
            XCTAssertEqual(r.measured.errorKindCounts, ["dns": 2], engine)
            XCTAssertEqual(r.measured.errorCounts[.connect], 2, engine)
        }
    }
}

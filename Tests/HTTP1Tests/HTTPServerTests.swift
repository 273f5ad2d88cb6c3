// The real server on 127.0.0.1, port 0, driven over real sockets by TestClient.

import Foundation
import Synchronization
import XCTest
@testable import HTTP1

final class HTTPServerTests: XCTestCase {
    private var servers: [HTTPServer] = []

    override func tearDown() {
        for server in servers {
            server.stop()
            XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(5)), "server loop did not exit")
        }
        servers = []
        super.tearDown()
    }

    private func startServer(
        configure: (inout HTTPServer.Configuration) -> Void = { _ in },
        onResponseWritten: HTTPServer.ResponseWrittenHook? = nil,
        handler: @escaping HTTPServer.Handler = echo
    ) throws -> HTTPServer {
        var configuration = HTTPServer.Configuration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let server = HTTPServer(configuration: configuration, onResponseWritten: onResponseWritten, handler: handler)
        try server.start()
        servers.append(server)
        XCTAssertGreaterThan(server.port, 0)
        return server
    }

    /// Answers at once with what it received.
    private static let echo: HTTPServer.Handler = { request, responder in
        responder.respond(.text("echo \(request.method) \(request.target) \(request.body.count)"))
    }

    /// Polls `condition` for up to two seconds (for gauges updated by the loop thread).
    private func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        return condition()
    }

    func testKeepAliveServesSeveralRequestsOnOneConnection() throws {
        let server = try startServer()
        let client = try TestClient(port: server.port)
        for index in 0..<5 {
            let response = try XCTUnwrap(client.roundTrip(get("/r\(index)")))
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(response.text, "echo GET /r\(index) 0")
            XCTAssertNil(response.headers["connection"])
            XCTAssertNotNil(response.headers["date"])
        }
        let post = try XCTUnwrap(client.roundTrip("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"))
        XCTAssertEqual(post.text, "echo POST /p 4")
        XCTAssertEqual(server.openConnections, 1)
    }

    func testPipelinedRequestsAreAnsweredInOrderWhenCompletedOutOfOrder() throws {
        let server = try startServer(handler: { request, responder in
            let delay = UInt32.random(in: 0...30_000)
            Thread.detachNewThread {
                usleep(delay)
                responder.respond(.text(String(request.target)))
            }
        })
        let client = try TestClient(port: server.port)
        let paths = (0..<12).map { "/item/\($0)" }
        client.send(paths.map { get($0) }.joined())
        for path in paths {
            XCTAssertEqual(client.readResponse()?.text, path)
        }
    }

    func testConnectionCloseAndHTTP10AreHonoured() throws {
        let server = try startServer()
        let closing = try TestClient(port: server.port)
        let response = try XCTUnwrap(closing.roundTrip(get("/", extraHeaders: "Connection: close\r\n")))
        XCTAssertEqual(response.headers["connection"], "close")
        XCTAssertTrue(closing.isClosedByServer())

        let old = try TestClient(port: server.port)
        XCTAssertEqual(old.roundTrip("GET /old HTTP/1.0\r\n\r\n")?.headers["connection"], "close")
        XCTAssertTrue(old.isClosedByServer())

        let oldKeepAlive = try TestClient(port: server.port)
        let first = oldKeepAlive.roundTrip("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(first?.headers["connection"], "keep-alive")
        XCTAssertEqual(oldKeepAlive.roundTrip("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?.text, "echo GET /b 0")
    }

    func testHeadHasContentLengthButNoBody() throws {
        let server = try startServer()
        let client = try TestClient(port: server.port)
        let head = try XCTUnwrap(client.roundTrip("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n", isHead: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], "\("echo HEAD /x 0".utf8.count)")
        // Had a body been sent, it would be read as the start of this response.
        XCTAssertEqual(client.roundTrip(get("/after"))?.text, "echo GET /after 0")
    }

    func testRefusedRequestsGetTheirStatusAndTheServerKeepsServing() throws {
        let server = try startServer(configure: { configuration in
            configuration.limits = .init(maxRequestLineBytes: 100, maxHeaderBytes: 200, maxBodyBytes: 50)
        })
        let cases: [(String, Int)] = [
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 51\r\n\r\n" + String(repeating: "z", count: 51), 413),
            ("GET /\(String(repeating: "a", count: 200)) HTTP/1.1\r\nHost: x\r\n\r\n", 414),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: \(String(repeating: "b", count: 300))\r\n\r\n", 431),
            ("GARBAGE\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 501),
            ("GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        ]
        for (request, status) in cases {
            let client = try TestClient(port: server.port)
            let response = try XCTUnwrap(client.roundTrip(request), "no response for \(status)")
            XCTAssertEqual(response.status, status)
            XCTAssertEqual(response.headers["connection"], "close")
            XCTAssertEqual(response.headers["content-type"], "application/json")
            XCTAssertTrue(response.text.hasPrefix(#"{"error":{"message":"#), response.text)
            XCTAssertTrue(client.isClosedByServer())
        }
        // A good request after a refused one on the same pipeline still gets its earlier answer first.
        let client = try TestClient(port: server.port)
        client.send(get("/ok") + "BAD REQUEST LINE\r\n\r\n")
        XCTAssertEqual(client.readResponse()?.status, 200)
        XCTAssertEqual(client.readResponse()?.status, 400)
        XCTAssertEqual(try TestClient(port: server.port).roundTrip(get("/still"))?.status, 200)
    }

    func testSlowClientGets408AndIdleConnectionIsClosedQuietly() throws {
        let server = try startServer(configure: { configuration in
            configuration.headerReadTimeout = .milliseconds(200)
            configuration.bodyReadTimeout = .milliseconds(200)
            configuration.idleTimeout = .milliseconds(300)
        })
        let slowHead = try TestClient(port: server.port)
        slowHead.send("GET / HTTP/1.1\r\nHost: x\r\n")
        XCTAssertEqual(slowHead.readResponse()?.status, 408)
        XCTAssertTrue(slowHead.isClosedByServer())
        slowHead.close()

        let slowBody = try TestClient(port: server.port)
        slowBody.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        XCTAssertEqual(slowBody.readResponse()?.status, 408)
        slowBody.close()

        let idle = try TestClient(port: server.port)
        XCTAssertEqual(idle.roundTrip(get("/"))?.status, 200)
        let started = ContinuousClock.now
        XCTAssertTrue(idle.isClosedByServer(), "idle keep-alive connection should be closed without a response")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(2))
        XCTAssertTrue(eventually { server.openConnections == 0 })
    }

    func testDisconnectWhilePendingCancelsTheRequest() throws {
        let cancelled = expectation(description: "onCancel called")
        let captured = Locked<HTTPResponder?>(nil)
        let server = try startServer(handler: { _, responder in
            captured.withLock { $0 = responder }
            responder.onCancel { cancelled.fulfill() }
        })
        do {
            let client = try TestClient(port: server.port)
            client.send(get("/slow"))
            XCTAssertTrue(eventually { server.pendingResponses == 1 })
        }  // client closed here
        wait(for: [cancelled], timeout: 2)
        let responder = try XCTUnwrap(captured.withLock { $0 })
        XCTAssertTrue(responder.isCancelled)
        XCTAssertFalse(responder.respond(.text("too late")), "responding after disconnect is a no-op")
        XCTAssertEqual(server.cancelledRequests, 1)
        XCTAssertEqual(server.pendingResponses, 0)
        let late = expectation(description: "late onCancel runs at once")
        responder.onCancel { late.fulfill() }
        wait(for: [late], timeout: 1)
    }

    func testRespondingTwiceSendsOneResponse() throws {
        let server = try startServer(handler: { request, responder in
            XCTAssertTrue(responder.respond(.text("first")))
            XCTAssertFalse(responder.respond(.text("second")))
        })
        let client = try TestClient(port: server.port)
        XCTAssertEqual(client.roundTrip(get("/"))?.text, "first")
        XCTAssertEqual(client.roundTrip(get("/"))?.text, "first")
    }

    /// Both slots busy (their requests unanswered, so neither can be evicted): a third connection is a reserve
    /// one, and a path outside `reservedPaths` is told 503 and closed.
    func testConnectionsAboveTheLimitGet503() throws {
        let server = try startServer(configure: { $0.maxConnections = 2 }, handler: { request, responder in
            if request.path != "/hold" { responder.respond(.text("ok")) }
        })
        let first = try TestClient(port: server.port)
        let second = try TestClient(port: server.port)
        XCTAssertEqual(first.roundTrip(get("/"))?.status, 200)
        first.send(get("/hold"))
        second.send(get("/hold"))
        XCTAssertTrue(eventually { server.pendingResponses == 2 })
        let third = try TestClient(port: server.port)
        let refused = try XCTUnwrap(third.roundTrip(get("/")))
        XCTAssertEqual(refused.status, 503)
        XCTAssertEqual(refused.headers["connection"], "close")
        XCTAssertTrue(third.isClosedByServer())
        XCTAssertEqual(server.openConnections, 2)
        withExtendedLifetime((first, second)) {}  // -O ends a local's life at its last use: keep them open
    }

    func testDrainFinishesInFlightRequestsThenStops() throws {
        let server = try startServer(handler: { request, responder in
            Thread.detachNewThread {
                usleep(300_000)
                responder.respond(.text("done \(request.target)"))
            }
        })
        let busy = try TestClient(port: server.port)
        busy.send(get("/work"))
        let idle = try TestClient(port: server.port)
        XCTAssertTrue(eventually { server.openConnections == 2 && server.pendingResponses == 1 })

        server.beginDrain()
        XCTAssertTrue(idle.isClosedByServer(), "idle connection closed by drain")
        XCTAssertThrowsError(try TestClient(port: server.port), "listening socket closed")
        let response = try XCTUnwrap(busy.readResponse())
        XCTAssertEqual(response.text, "done /work")
        XCTAssertEqual(response.headers["connection"], "close")
        busy.close()  // otherwise the server lingers (up to lingerTimeout) waiting for our FIN
        XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(1)))
        XCTAssertFalse(server.isRunning)
    }

    func testStopCancelsPendingRequests() throws {
        let cancelled = expectation(description: "cancelled by stop")
        let server = try startServer(handler: { _, responder in responder.onCancel { cancelled.fulfill() } })
        let client = try TestClient(port: server.port)
        client.send(get("/"))
        XCTAssertTrue(eventually { server.pendingResponses == 1 })
        server.stop()
        wait(for: [cancelled], timeout: 2)
        XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(2)))
        XCTAssertTrue(client.isClosedByServer())
    }

    func testResponseWrittenHookReportsStatusAndBytes() throws {
        let records = Locked<[HTTPExchangeRecord]>([])
        let server = try startServer(onResponseWritten: { record in records.withLock { $0.append(record) } })
        let client = try TestClient(port: server.port)
        XCTAssertEqual(client.roundTrip(get("/hook"))?.status, 200)
        XCTAssertEqual(client.roundTrip("BAD\r\n\r\n")?.status, 400)
        XCTAssertTrue(eventually { records.withLock { $0.count } == 2 })
        let (ok, bad) = records.withLock { ($0[0], $0[1]) }
        XCTAssertEqual(ok.method, .GET)
        XCTAssertEqual(ok.target, "/hook")
        XCTAssertEqual(ok.status.code, 200)
        XCTAssertGreaterThan(ok.bytesWritten, "echo GET /hook 0".utf8.count)
        XCTAssertLessThanOrEqual(ok.headReceivedAt, ok.writtenAt)
        XCTAssertTrue(ok.remoteAddress.hasPrefix("127.0.0.1:"))
        XCTAssertNil(bad.method)
        XCTAssertEqual(bad.status.code, 400)
    }

    func testExpectContinueGetsInterimResponse() throws {
        let server = try startServer()
        let client = try TestClient(port: server.port)
        client.send("POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        var interim = [UInt8](repeating: 0, count: 25)
        XCTAssertEqual(recv(client.fd, &interim, 25, Int32(MSG_WAITALL)), 25)
        XCTAssertEqual(String(decoding: interim, as: UTF8.self), "HTTP/1.1 100 Continue\r\n\r\n")
        client.send("abc")
        XCTAssertEqual(client.readResponse()?.text, "echo POST /up 3")
    }

    /// 64 client threads × 20 keep-alive requests, half answered from other threads; every answer must match.
    func testSixtyFourConcurrentClients() throws {
        let server = try startServer(handler: { request, responder in
            let response = HTTPResponse.text("r:\(request.target)")
            if request.target.hasSuffix("0") || request.target.hasSuffix("5") {
                Thread.detachNewThread { responder.respond(response) }
            } else {
                responder.respond(response)
            }
        })
        let failures = Atomic<Int>(0)
        let successes = Atomic<Int>(0)
        let group = DispatchGroup()
        let port = server.port
        for clientIndex in 0..<64 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                guard let client = try? TestClient(port: port) else {
                    failures.add(20, ordering: .relaxed)
                    return
                }
                for requestIndex in 0..<20 {
                    let target = "/c\(clientIndex)/\(requestIndex)"
                    if client.roundTrip(get(target))?.text == "r:\(target)" {
                        successes.add(1, ordering: .relaxed)
                    } else {
                        failures.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(failures.load(ordering: .relaxed), 0)
        XCTAssertEqual(successes.load(ordering: .relaxed), 64 * 20)
    }
}

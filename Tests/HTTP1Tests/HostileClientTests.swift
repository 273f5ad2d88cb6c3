// Clients that try to make the server hold memory or slots for them (issue 17): pipeliners that never read,
// silent sockets at the connection limit, one address taking every slot, slow but steady readers.

import Foundation
import Synchronization
import XCTest
@testable import HTTP1

final class HostileClientTests: XCTestCase {
    private var servers: [HTTPServer] = []

    override func tearDown() {
        for server in servers {
            server.stop()
            XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(5)), "server loop did not exit")
        }
        servers = []
        super.tearDown()
    }

    private func startServer(configure: (inout HTTPServer.Configuration) -> Void = { _ in },
                             handler: @escaping HTTPServer.Handler) throws -> HTTPServer {
        var configuration = HTTPServer.Configuration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let server = HTTPServer(configuration: configuration, handler: handler)
        try server.start()
        servers.append(server)
        return server
    }

    private func eventually(within: Duration = .seconds(2), _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + within
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        return condition()
    }

    /// 200 pipelined requests whose answers are 256 KiB each, from a client that reads nothing: the handler is
    /// called only for the answers the socket buffers can take (before the fix: all 200, 50 MB buffered), and
    /// once the client reads, every answer arrives, in order.
    func testPipelinerThatDoesNotReadIsNotServedAhead() throws {
        let calls = Atomic<Int>(0)
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 256 * 1024)
        let server = try startServer(handler: { request, responder in
            calls.add(1, ordering: .relaxed)
            var response = HTTPResponse.text(String(request.target.dropFirst()))
            response.body += body
            responder.respond(response)
        })
        let client = try TestClient(port: server.port, receiveBuffer: 4096)
        client.send((0..<200).map { get("/\($0)") }.joined())
        usleep(500_000)
        let served = calls.load(ordering: .relaxed)
        // Loopback send buffers grow to a few MB: at most ~16 answers of 256 KiB fit; 60 leaves margin.
        XCTAssertLessThan(served, 60, "answers produced for a client that reads nothing")
        for index in 0..<200 {
            let response = try XCTUnwrap(client.readResponse(), "answer \(index)")
            XCTAssertTrue(response.text.hasPrefix("\(index)x"), "answer \(index) out of order")
        }
        XCTAssertEqual(calls.load(ordering: .relaxed), 200)
    }

    /// Pipelined POSTs are handled one at a time (RFC 9112 §9.3.2 allows parallel handling only for safe
    /// methods), and answered in order.
    func testPipelinedPostsNeverRunInParallel() throws {
        let running = Atomic<Int>(0), most = Atomic<Int>(0)
        let server = try startServer(handler: { request, responder in
            let now = running.add(1, ordering: .relaxed).newValue
            if now > most.load(ordering: .relaxed) { most.store(now, ordering: .relaxed) }
            Thread.detachNewThread {
                usleep(30_000)
                running.subtract(1, ordering: .relaxed)
                responder.respond(.text(request.target))
            }
        })
        let client = try TestClient(port: server.port)
        client.send((0..<5).map { "POST /p\($0) HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" }.joined())
        for index in 0..<5 { XCTAssertEqual(client.readResponse()?.text, "/p\(index)") }
        XCTAssertEqual(most.load(ordering: .relaxed), 1)
    }

    /// nginx's keepalive_requests: the last allowed answer says close, and the connection closes.
    func testConnectionClosesAfterMaxRequests() throws {
        let server = try startServer(configure: { $0.maxRequestsPerConnection = 3 },
                                     handler: { _, responder in responder.respond(.text("ok")) })
        let client = try TestClient(port: server.port)
        XCTAssertNil(client.roundTrip(get("/1"))?.headers["connection"])
        XCTAssertNil(client.roundTrip(get("/2"))?.headers["connection"])
        XCTAssertEqual(client.roundTrip(get("/3"))?.headers["connection"], "close")
        XCTAssertTrue(client.isClosedByServer())
    }

    /// The header timeout runs from the accept: a socket that says nothing is closed quietly then (not after
    /// the 60 s idle timeout), and trickling the first head does not buy more time.
    func testSilentAndTricklingConnectionsAreTimedFromTheAccept() throws {
        let server = try startServer(configure: {
            $0.headerReadTimeout = .milliseconds(300)
            $0.idleTimeout = .seconds(60)
        }, handler: { _, responder in responder.respond(.text("ok")) })
        let silent = try TestClient(port: server.port)
        let started = ContinuousClock.now
        XCTAssertTrue(silent.isClosedByServer())
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(1))
        XCTAssertTrue(eventually { server.silentConnectionsClosed == 1 })

        let trickle = try TestClient(port: server.port)
        let trickleStart = ContinuousClock.now
        for byte in "GET / HTT" {
            trickle.send(String(byte))
            usleep(50_000)
        }
        XCTAssertEqual(trickle.readResponse()?.status, 408)
        XCTAssertLessThan(ContinuousClock.now - trickleStart, .milliseconds(800))
    }

    /// At the limit, a new connection takes the slot of the longest-idle one instead of being refused, so
    /// silent sockets cannot lock clients out.
    func testSilentConnectionsAreEvictedAtTheLimit() throws {
        let server = try startServer(configure: { $0.maxConnections = 2 },
                                     handler: { _, responder in responder.respond(.text("ok")) })
        let silent = try TestClient(port: server.port)
        let kept = try TestClient(port: server.port)
        XCTAssertEqual(kept.roundTrip(get("/"))?.status, 200)
        XCTAssertTrue(eventually { server.openConnections == 2 })
        let newcomer = try TestClient(port: server.port)
        XCTAssertEqual(newcomer.roundTrip(get("/"))?.status, 200)
        XCTAssertTrue(silent.isClosedByServer(), "the silent connection (idle longest) makes room")
        XCTAssertEqual(server.evictedConnections, 1)
        XCTAssertEqual(kept.roundTrip(get("/"))?.status, 200, "the other one is untouched")
    }

    /// With every slot busy: a reserve connection may ask for a reserved path (health) and is answered; other
    /// paths get 503; past the reserve, 503 at once without waiting for a request.
    func testBusyServerStillAnswersHealthAndSays503() throws {
        let server = try startServer(configure: {
            $0.maxConnections = 2
            $0.reserveConnections = 2
            $0.reservedPaths = ["/healthz"]
        }, handler: { request, responder in
            if request.path == "/healthz" { responder.respond(.text("healthy")) }  // /busy: never answered
        })
        let busy = try (0..<2).map { _ in try TestClient(port: server.port) }
        for client in busy { client.send(get("/busy")) }
        XCTAssertTrue(eventually { server.pendingResponses == 2 })

        let health = try TestClient(port: server.port)
        let healthy = try XCTUnwrap(health.roundTrip(get("/healthz")))
        XCTAssertEqual(healthy.text, "healthy")
        XCTAssertEqual(healthy.headers["connection"], "close")
        let other = try XCTUnwrap(TestClient(port: server.port).roundTrip(get("/busy")))
        XCTAssertEqual(other.status, 503)
        XCTAssertEqual(other.headers["connection"], "close")

        let holders = try (0..<2).map { _ in try TestClient(port: server.port) }  // fill the reserve
        usleep(100_000)
        let beyond = try TestClient(port: server.port)
        XCTAssertEqual(beyond.readResponse()?.status, 503, "told 503 at once, before sending anything")
        XCTAssertTrue(beyond.isClosedByServer())
        withExtendedLifetime((busy, holders)) {}  // -O ends a local's life at its last use: keep them open
    }

    func testPerAddressCap() throws {
        let server = try startServer(configure: { $0.maxConnectionsPerAddress = 2 },
                                     handler: { _, responder in responder.respond(.text("ok")) })
        let first = try TestClient(port: server.port), second = try TestClient(port: server.port)
        XCTAssertEqual(first.roundTrip(get("/"))?.status, 200)
        XCTAssertEqual(second.roundTrip(get("/"))?.status, 200)
        let third = try TestClient(port: server.port)
        let refused = try XCTUnwrap(third.readResponse())
        XCTAssertEqual(refused.status, 503)
        XCTAssertTrue(refused.text.contains("your address"), refused.text)
        first.close()
        XCTAssertTrue(eventually { server.openConnections == 1 })
        XCTAssertEqual(try TestClient(port: server.port).roundTrip(get("/"))?.status, 200)
    }

    /// The write timeout is time without progress: a client reading 16 KiB every 100 ms keeps its connection
    /// for three times the timeout; once it stops reading, it is dropped after about one timeout.
    func testSteadySlowReaderIsNotCutButAStalledOneIs() throws {
        let body = [UInt8](repeating: 1, count: 16 * 1024 * 1024)
        let server = try startServer(configure: { $0.writeTimeout = .milliseconds(300) },
                                     handler: { _, responder in responder.respond(HTTPResponse(contentType: "application/octet-stream", body: body)) })
        let client = try TestClient(port: server.port, receiveBuffer: 16 * 1024)
        client.send(get("/big"))
        usleep(200_000)
        let steadyUntil = ContinuousClock.now + .milliseconds(900)
        var received = 0
        while ContinuousClock.now < steadyUntil {
            let count = client.readRaw(upTo: 16 * 1024)
            XCTAssertGreaterThan(count, 0, "connection cut while the client was reading")
            if count <= 0 { return }
            received += count
            usleep(100_000)
        }
        XCTAssertEqual(server.openConnections, 1)
        XCTAssertTrue(eventually(within: .seconds(3)) { server.openConnections == 0 }, "stalled reader not dropped")
        XCTAssertLessThan(received, body.count)
    }

    /// A stop with an answer stuck in a non-reading client's socket reports what it dropped.
    func testStopReportsDroppedAnswers() throws {
        let body = [UInt8](repeating: 2, count: 8 * 1024 * 1024)
        let server = try startServer(handler: { _, responder in
            responder.respond(HTTPResponse(contentType: "application/octet-stream", body: body))
        })
        let client = try TestClient(port: server.port, receiveBuffer: 4096)
        client.send(get("/big"))
        XCTAssertTrue(eventually { server.pendingResponses == 0 && server.openConnections == 1 })
        usleep(100_000)
        let dropped = server.shutdown(gracePeriod: .milliseconds(200))
        XCTAssertEqual(dropped.connections, 1)
        XCTAssertEqual(dropped.responses, 1)
        XCTAssertGreaterThan(dropped.bytes, 0)
        XCTAssertLessThan(dropped.bytes, body.count + 1024)
    }
}

// Connections caught by the start of a drain (regression tests for what loadtest/faults/sigterm found: a few
// requests per SIGTERM under load were reset instead of answered). Real server on 127.0.0.1, real sockets; every
// wait is for an event, with a generous deadline, never a timing bound.

import Foundation
import XCTest
@testable import HTTP1

final class DrainRaceTests: XCTestCase {
    private func startServer(_ handler: @escaping HTTPServer.Handler) throws -> HTTPServer {
        let server = HTTPServer(configuration: HTTPServer.Configuration(host: "127.0.0.1", port: 0), handler: handler)
        try server.start()
        addTeardownBlock {
            server.stop()
            XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(5)), "server loop did not exit")
        }
        return server
    }

    /// Waits (up to 5 s) until the listener is closed, i.e. the loop has begun draining.
    private func waitUntilRefusing(_ port: Int) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if (try? TestClient(port: port)) == nil { return true }
            usleep(2_000)
        }
        return false
    }

    /// A connection the kernel accepted (handshake done, request sent) while the event loop was busy sits in the
    /// accept queue when the drain begins. Closing the listener would reset it; it must be accepted and answered.
    func testConnectionInTheAcceptQueueWhenTheDrainBeginsIsAnswered() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let server = try startServer { request, responder in
            if request.target == "/block" {
                entered.signal()
                release.wait()  // holds the event-loop thread: nothing is accepted meanwhile
            }
            responder.respond(.text("answered \(request.target)"))
        }
        let blocker = try TestClient(port: server.port)
        blocker.send(get("/block"))
        XCTAssertEqual(entered.wait(timeout: .now() + 5), .success, "handler reached")

        let queued = try TestClient(port: server.port)  // completes in the kernel, waits in the accept queue
        queued.send(get("/queued"))
        server.beginDrain()
        release.signal()

        let response = try XCTUnwrap(queued.readResponse(), "a connection the kernel accepted before the drain is answered, not reset")
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.text, "answered /queued")
        XCTAssertEqual(response.headers["connection"], "close")
        XCTAssertEqual(blocker.readResponse()?.text, "answered /block")
        blocker.close()
        queued.close()
        XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(5)))
    }

    /// A fresh connection (accepted, no request yet) is not closed under its client when the drain begins: the
    /// request it sends next is answered, with `Connection: close`. A kept-alive idle connection is closed at once.
    func testFreshConnectionStillGetsItsFirstRequestAnsweredDuringTheDrain() throws {
        let server = try startServer { request, responder in responder.respond(.text("echo \(request.target)")) }
        let keptAlive = try TestClient(port: server.port)
        XCTAssertEqual(keptAlive.roundTrip(get("/first"))?.text, "echo /first")
        let fresh = try TestClient(port: server.port)
        let deadline = ContinuousClock.now + .seconds(5)
        while server.openConnections < 2, ContinuousClock.now < deadline { usleep(2_000) }
        XCTAssertEqual(server.openConnections, 2, "both connections accepted before the drain")

        server.beginDrain()
        XCTAssertTrue(waitUntilRefusing(server.port), "the drain closed the listener")
        XCTAssertTrue(keptAlive.isClosedByServer(), "an idle kept-alive connection is closed by the drain")

        let response = try XCTUnwrap(fresh.roundTrip(get("/late")), "the fresh connection's first request is answered")
        XCTAssertEqual(response.text, "echo /late")
        XCTAssertEqual(response.headers["connection"], "close")
        fresh.close()
        XCTAssertTrue(server.waitUntilStopped(timeout: .seconds(5)))
    }
}

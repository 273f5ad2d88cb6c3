// The fault-test features of onestep-load against TestServer on loopback: latency per status, error kinds,
// deliberate disconnects (--abort-after), idle connections and slowloris clients. Counts only, no speed bounds.
import Foundation
import XCTest
@testable import OnestepLoad

final class FaultInjectionTests: XCTestCase {
    private func run(_ args: [String]) throws -> (RunResults, LoadDriver) {
        guard case .run(let c) = try Arguments.parse(args + ["--quiet"]) else { throw UsageError("help") }
        let d = LoadDriver(config: c)
        return (d.run(), d)
    }

    /// Two servers, one accepting and one refusing with 429, used round-robin: each status gets its own histogram,
    /// a status-filtered threshold reads only that one, and the JSON lists both.
    func testLatencyIsKeptPerStatus() throws {
        let ok = try TestServer(.init(delay: 0.030))
        let full = try TestServer(.init(status: 429))
        defer { ok.stop(); full.stop() }
        let args = ["--rate", "100", "--requests", "40", "--connections", "8", ok.url + "/a", full.url + "/b"]
        let (r, _) = try run(args)
        let m = r.measured
        XCTAssertEqual(m.latencyByStatus[200]?.totalCount, 20)
        XCTAssertEqual(m.latencyByStatus[429]?.totalCount, 20)
        XCTAssertEqual(m.latency(ofStatuses: [200, 429]).totalCount, 40)
        XCTAssertEqual(m.errorKindCounts, ["http_429": 20])

        let rejections = try Threshold(parsing: "p99[429,503]>20ms")
        XCTAssertEqual(rejections.statuses, [429, 503])
        XCTAssertEqual(rejections.measured(in: r), Double(m.latencyByStatus[429]!.value(atPercentile: 99)) / 1e6)
        let json = try JSONSerialization.jsonObject(with: JSONReport(config: try config(args), results: r, thresholds: []).encoded())
        let measured = (json as? [String: Any])?["measured"] as? [String: Any]
        XCTAssertEqual(((measured?["latency_by_status"] as? [String: Any])?.keys).map(Set.init), ["200", "429"])
        XCTAssertEqual(measured?["errors_by_kind"] as? [String: Int], ["http_429": 20])
    }

    /// A closed port is "refused"; a server that closes without answering is an "empty_reply".
    func testErrorKindsTellRefusedFromClosed() throws {
        let gone = try TestServer()
        let port = gone.port
        gone.stop()
        let (refused, _) = try run(["--rate", "50", "--requests", "5", "http://127.0.0.1:\(port)/x"])
        XCTAssertEqual(refused.measured.errorKindCounts, ["refused": 5])

        let rude = try TestServer(.init(closeWithoutResponse: true))
        defer { rude.stop() }
        let (closed, _) = try run(["--rate", "50", "--requests", "5", "--connections", "1", rude.url + "/x"])
        XCTAssertEqual(closed.measured.errorKindCounts, ["empty_reply": 5])
        XCTAssertEqual(closed.measured.errorCounts[.read], 5)
    }

    /// Requests chosen by --abort-after are abandoned (the server sees the connection close) and counted apart:
    /// neither ok nor errors, and out of the latency histograms. The choice is the plan's, request by request.
    func testAbortAfterDisconnectsChosenRequests() throws {
        let slow = try TestServer(.init(delay: 0.4))
        defer { slow.stop() }
        let (all, _) = try run(["--rate", "50", "--requests", "10", "--abort-after", "50ms", slow.url + "/x"])
        XCTAssertEqual(all.measured.abortedCounts, [.beforeResponse: 10])
        XCTAssertEqual(all.measured.errors, 0)
        XCTAssertEqual(all.measured.ok, 0)
        XCTAssertEqual(all.measured.corrected.totalCount, 0)
        XCTAssertEqual(all.errorRate, 0)

        let plan = AbortPlan(earliest: 0.05, latest: 0.1, fraction: 0.5)
        let chosen = (0..<20).filter { plan.abortMilliseconds(forIndex: $0) != nil }.count
        let (half, _) = try run(["--rate", "50", "--requests", "20", "--connections", "20", "--abort-after", "50ms-100ms",
                                 "--abort-fraction", "50%", slow.url + "/x"])
        XCTAssertEqual(half.measured.aborted, chosen)
        XCTAssertEqual(half.measured.ok, 20 - chosen)
        XCTAssertEqual(half.measured.errors, 0)
    }

    func testAbortPlanIsDeterministicAndWithinItsWindow() {
        let plan = AbortPlan(earliest: 0.005, latest: 0.3, fraction: 0.3)
        let times = (0..<10_000).map { plan.abortMilliseconds(forIndex: $0) }
        XCTAssertEqual(times, (0..<10_000).map { plan.abortMilliseconds(forIndex: $0) })
        let chosen = times.compactMap { $0 }
        XCTAssertEqual(Double(chosen.count) / 10_000, 0.3, accuracy: 0.02)
        XCTAssertTrue(chosen.allSatisfy { (5...300).contains($0) })
        XCTAssertLessThan(chosen.min()!, 20)
        XCTAssertGreaterThan(chosen.max()!, 280)
        XCTAssertTrue((0..<100).allSatisfy { AbortPlan(earliest: 0.02, latest: 0.02).abortMilliseconds(forIndex: $0) == 20 })
        XCTAssertTrue(AbortPlan.parseWindow("5ms-300ms")! == (0.005, 0.3))
        XCTAssertTrue(AbortPlan.parseWindow("20")! == (0.02, 0.02))
        XCTAssertNil(AbortPlan.parseWindow("300ms-5ms"))
        XCTAssertNil(AbortPlan.parseWindow("0ms"))
        XCTAssertNil(AbortPlan.parseWindow("soon"))
    }

    /// Idle connections are opened and used once before the traffic, held through it, and all still open at the end
    /// against a server that never closes idle connections.
    func testIdleConnectionsAreHeldThroughTheRun() throws {
        let server = try TestServer()
        defer { server.stop() }
        let (r, driver) = try run(["--rate", "50", "--requests", "10", "--idle-connections", "20",
                                   "--idle-path", "/healthz", server.url + "/x"])
        XCTAssertEqual(r.measured.ok, 10)
        let b = try XCTUnwrap(driver.backgroundReport)
        XCTAssertEqual(b.idle_opened, 20)
        XCTAssertEqual(b.idle_answered, 20)
        XCTAssertEqual(b.idle_closed_by_server, 0)
        XCTAssertEqual(b.idle_still_open, 20)
        XCTAssertEqual(server.requestCount, 30)
    }

    /// Slowloris clients against a server with a head timeout are answered 408 and reconnect; against one without,
    /// they are all still open at the end.
    func testSlowlorisClientsAreCutOffOrReportedOpen() throws {
        let strict = try TestServer(.init(headTimeout: 0.2))
        defer { strict.stop() }
        let (_, cut) = try run(["--rate", "10", "--duration", "1.5s", "--slowloris", "3", "--slowloris-interval", "20ms",
                                strict.url + "/x"])
        let b = try XCTUnwrap(cut.backgroundReport)
        XCTAssertGreaterThanOrEqual(b.slowloris_cut_off_by["408"] ?? 0, 3, "\(b)")
        XCTAssertEqual(b.slowloris_cut_off_by.keys.sorted(), ["408"])
        XCTAssertGreaterThan(b.slowloris_connections, 3, "cut-off clients reconnect")
        XCTAssertNotNil(b.slowloris_cut_off_after_s["max"])

        let lax = try TestServer()
        defer { lax.stop() }
        let (_, open) = try run(["--rate", "10", "--duration", "0.5s", "--slowloris", "3", "--slowloris-interval", "20ms",
                                 lax.url + "/x"])
        let o = try XCTUnwrap(open.backgroundReport)
        XCTAssertEqual(o.slowlorisCutOff, 0)
        XCTAssertEqual(o.slowloris_still_open, 3)
        XCTAssertGreaterThan(o.slowloris_bytes_sent, 3)
    }

    func testSlowlorisHeadNeverEnds() {
        let bytes = (0..<2000).map { BackgroundClients.slowHeadByte($0, host: "h") }
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("GET / HTTP/1.1\r\nHost: h\r\nX-Slowloris: 1\r\n"))
        XCTAssertFalse(text.contains("\r\n\r\n"))
    }

    func testFaultFlagsAndTheirMistakes() throws {
        let c = try config(["--rate", "10", "--abort-after", "5ms-300ms", "--abort-fraction", "0.25", "--min-sleep", "1ms",
                            "--idle-connections", "1000", "--idle-path", "/healthz", "--slowloris", "50",
                            "--slowloris-interval", "2s", "http://127.0.0.1:8123/v1/generate?seed={{seed}}"])
        XCTAssertEqual(c.abort, AbortPlan(earliest: 0.005, latest: 0.3, fraction: 0.25))
        XCTAssertEqual(c.minSleep, 0.001)
        var plan = BackgroundPlan(host: "127.0.0.1", port: 8123)
        plan.idleConnections = 1000
        plan.idlePath = "/healthz"
        plan.slowloris = 50
        plan.slowlorisInterval = 2
        XCTAssertEqual(c.background, plan)
        XCTAssertEqual(try config(["--rate", "1", "--slowloris", "1", "http://[::1]/x"]).background?.port, 80)
        XCTAssertNil(try config(["--rate", "1", "http://h/x"]).background)

        func usage(_ extra: [String], _ text: String, line: UInt = #line) {
            XCTAssertThrowsError(try Arguments.parse(["--rate", "1"] + extra + ["http://h:1/x"]), line: line) { e in
                XCTAssertTrue("\(e)".contains(text), "'\(e)' does not mention '\(text)'", line: line)
            }
            var out = ""
            XCTAssertEqual(LoadTool.main(arguments: ["--rate", "1", "--quiet"] + extra + ["http://h:1/x"], output: { out += $0 }),
                           ExitCode.usage, line: line)
        }
        usage(["--abort-after", "soon"], "--abort-after must be")
        usage(["--abort-after", "300ms-5ms"], "--abort-after must be")
        usage(["--abort-after", "20s"], "beyond --timeout")
        usage(["--abort-fraction", "0.5"], "--abort-fraction needs --abort-after")
        usage(["--abort-after", "5ms", "--abort-fraction", "2"], "--abort-fraction must be")
        usage(["--idle-connections", "-1"], "--idle-connections must be")
        usage(["--idle-path", "/x"], "--idle-path needs --idle-connections")
        usage(["--idle-connections", "2", "--idle-path", "x"], "--idle-path must start with /")
        usage(["--slowloris", "many"], "--slowloris must be")
        usage(["--slowloris-interval", "1s"], "--slowloris-interval needs --slowloris")
        usage(["--min-sleep", "1s"], "--min-sleep must be at most")
        XCTAssertThrowsError(try Arguments.parse(["--rate", "1", "--slowloris", "2", "https://h/x"])) { e in
            XCTAssertTrue("\(e)".contains("plain http://"), "\(e)")
        }
        XCTAssertThrowsError(try Threshold(parsing: "error_rate[429]>1%"))
        XCTAssertThrowsError(try Threshold(parsing: "p99[abc]>1ms"))
    }

    private func config(_ args: [String]) throws -> LoadConfig {
        guard case .run(let c) = try Arguments.parse(args) else { throw UsageError("help") }
        return c
    }
}

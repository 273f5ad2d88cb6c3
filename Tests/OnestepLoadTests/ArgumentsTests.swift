import XCTest
@testable import OnestepLoad

final class ArgumentsTests: XCTestCase {
    private func config(_ args: [String]) throws -> LoadConfig {
        guard case .run(let c) = try Arguments.parse(args) else { throw UsageError("help") }
        return c
    }

    private func assertUsageError(_ args: [String], contains text: String, line: UInt = #line) {
        XCTAssertThrowsError(try Arguments.parse(args), line: line) { e in
            XCTAssertTrue("\(e)".contains(text), "'\(e)' does not mention '\(text)'", line: line)
        }
    }

    func testOpenLoopFlags() throws {
        let c = try config(["--rate", "250", "--duration", "30s", "--warmup", "5s", "--timeout", "2s",
                            "--connections", "8", "-H", "Accept: image/png", "http://a/x", "http://b/y"])
        XCTAssertEqual(c.mode, .openLoop(rate: 250))
        XCTAssertEqual(c.duration, 30)
        XCTAssertEqual(c.warmup, 5)
        XCTAssertEqual(c.timeout, 2)
        XCTAssertEqual(c.connections, 8)
        XCTAssertEqual(c.request.urls, ["http://a/x", "http://b/y"])
        XCTAssertEqual(c.request.headers, ["Accept: image/png"])
        XCTAssertEqual(c.schedule?.warmupCount, 1250)
        XCTAssertEqual(c.schedule?.measuredCount, 7500)
        XCTAssertEqual(c.lateAfterNanos, 4_000_000)
        XCTAssertEqual(c.expect, ResponseExpectation.none)
    }

    func testClosedLoopDefaultsAndBody() throws {
        let c = try config(["--concurrency", "4", "--requests", "100", "-d", #"{"seed": {{seed}}}"#, "http://h/v1/images/generations"])
        XCTAssertEqual(c.mode, .closedLoop(concurrency: 4))
        XCTAssertEqual(c.connections, 4)
        XCTAssertEqual(c.requests, 100)
        XCTAssertNil(c.duration)
        XCTAssertEqual(c.request.method, "POST")
        XCTAssertTrue(c.request.isTemplated)
    }

    func testImageRouteExpectsPNG() throws {
        XCTAssertEqual(try config(["--rate", "1", "http://h:8080/v1/generate?seed={{seed}}"]).expect,
                       .png(width: nil, height: nil))
        XCTAssertEqual(try config(["--rate", "1", "--expect-size", "32x32", "http://h/v1/generate"]).expect,
                       .png(width: 32, height: 32))
        XCTAssertEqual(try config(["--rate", "1", "--expect", "none", "http://h/v1/generate"]).expect, ResponseExpectation.none)
    }

    func testBadUsageMessages() {
        assertUsageError(["http://h/"], contains: "--rate R")
        assertUsageError(["--rate", "1", "--concurrency", "2", "http://h/"], contains: "not both")
        assertUsageError(["--rate", "-3", "http://h/"], contains: "--rate must be a positive number")
        assertUsageError(["--rate", "10", "--duration", "soon", "http://h/"], contains: "--duration must be a duration")
        assertUsageError(["--rate", "10", "--frobnicate", "http://h/"], contains: "unknown flag --frobnicate")
        assertUsageError(["--rate", "10"], contains: "no URL")
        assertUsageError(["--rate", "10", "ftp://h/"], contains: "http://")
        assertUsageError(["--rate", "10", "--connections", "0", "http://h/"], contains: "--connections")
        assertUsageError(["--rate", "10", "--expect", "jpeg", "http://h/"], contains: "--expect")
        assertUsageError(["--rate", "10", "--fail-if", "p99~3ms", "http://h/"], contains: "no comparison")
        assertUsageError(["--rate", "10", "--fail-if", "latency>3ms", "http://h/"], contains: "unknown metric")
        assertUsageError(["--rate", "10", "-d", "@/nonexistent/body.json", "http://h/"], contains: "cannot read")
        assertUsageError(["--rate", "10", "--timeout"], contains: "--timeout needs a value")
        XCTAssertEqual(try Arguments.parse(["--help"]), .help)
    }

    func testThresholdParsing() throws {
        let p99 = try Threshold(parsing: "p99>250ms")
        XCTAssertEqual(p99.metric, .latencyPercentile(99))
        XCTAssertEqual(p99.comparison, .greater)
        XCTAssertEqual(p99.value, 0.25, accuracy: 1e-12)
        let p999 = try Threshold(parsing: "p99.99 >= 1.5s")
        XCTAssertEqual(p999.metric, .latencyPercentile(99.99))
        XCTAssertEqual(p999.comparison, .greaterOrEqual)
        XCTAssertEqual(p999.value, 1.5)
        XCTAssertEqual(try Threshold(parsing: "p50>800").value, 0.8, accuracy: 1e-12)  // bare number = ms
        let err = try Threshold(parsing: "error_rate>1%")
        XCTAssertEqual(err.metric, .errorRate)
        XCTAssertEqual(err.value, 0.01, accuracy: 1e-12)
        XCTAssertEqual(try Threshold(parsing: "errors>0.05").value, 0.05)
        let rate = try Threshold(parsing: "rate<95")
        XCTAssertEqual(rate.metric, .achievedRate)
        XCTAssertEqual(rate.comparison, .less)
        XCTAssertEqual(rate.value, 95)
    }

    func testThresholdEvaluation() throws {
        var r = RunResults(lateAfterNanos: 1_000_000, requestedRate: 10)
        for i in 0..<100 {
            r.record(Outcome(index: i, phase: .measured, intended: UInt64(i) * 100_000_000,
                             sent: UInt64(i) * 100_000_000, done: UInt64(i) * 100_000_000 + UInt64(i + 1) * 1_000_000,
                             status: i < 98 ? 200 : 503, error: i < 98 ? nil : .status))
        }
        XCTAssertTrue(try Threshold(parsing: "p50>40ms").fails(r))
        XCTAssertFalse(try Threshold(parsing: "p50>60ms").fails(r))
        XCTAssertTrue(try Threshold(parsing: "error_rate>1%").fails(r))
        XCTAssertFalse(try Threshold(parsing: "error_rate>5%").fails(r))
        XCTAssertTrue(try Threshold(parsing: "rate<9.9").fails(r))  // 98 ok in ~10 s
    }

    func testRecorderKeepsWarmupApartAndCountsErrors() {
        var r = RunResults(lateAfterNanos: 10_000_000, requestedRate: 100)
        r.record(Outcome(index: 0, phase: .warmup, intended: 0, sent: 0, done: 900_000_000, status: 200))
        r.record(Outcome(index: 1, phase: .measured, intended: 10_000_000, sent: 30_000_000, done: 31_000_000, status: 200))
        r.record(Outcome(index: 2, phase: .measured, intended: 20_000_000, sent: 30_000_000, done: 40_000_000, status: 0, error: .timeout))
        r.record(Outcome(index: 3, phase: .measured, intended: 30_000_000, sent: 30_000_000, done: 32_000_000, status: 200, error: .invalid))
        XCTAssertEqual(r.warmup.corrected.totalCount, 1)
        XCTAssertEqual(r.measured.sent, 3)
        XCTAssertEqual(r.measured.responses, 2)         // the timeout has no latency
        XCTAssertEqual(r.measured.ok, 1)
        XCTAssertEqual(r.measured.errorCounts[.timeout], 1)
        XCTAssertEqual(r.measured.errorCounts[.invalid], 1)
        XCTAssertEqual(r.measured.late, 1)              // request 1 left 20 ms late
        XCTAssertEqual(r.measured.corrected.max, 21_000) // from the intended time
        XCTAssertEqual(r.measured.uncorrected.value(atPercentile: 50), 1_000)
        XCTAssertEqual(r.errorRate, 2.0 / 3.0, accuracy: 1e-12)
    }

    func testTemplateAndDurations() {
        XCTAssertEqual(Template.render("/v1/generate?seed={{seed}}&i={{index}}", seed: 42, index: 7),
                       "/v1/generate?seed=42&i=7")
        XCTAssertEqual(parseDuration("250ms"), 0.25)
        XCTAssertEqual(parseDuration("2m"), 120)
        XCTAssertEqual(parseDuration("1.5s"), 1.5)
        XCTAssertEqual(parseDuration("800us")!, 0.0008, accuracy: 1e-12)
        XCTAssertEqual(parseDuration("3"), 3)
        XCTAssertNil(parseDuration("-1s"))
        XCTAssertNil(parseDuration("fast"))
    }

    /// The shipped scenario parses, and flags override it.
    func testShippedScenario() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("loadtest/scenarios/default-model.json").path
        let c = try config(["--scenario", path])
        XCTAssertEqual(c.request.urls, ["http://127.0.0.1:8080/v1/generate?seed={{seed}}"])
        XCTAssertEqual(c.expect, .png(width: nil, height: nil))
        XCTAssertEqual(c.mode, .openLoop(rate: 20))
        XCTAssertEqual(c.thresholds.map(\.text), ["p99>1s", "error_rate>0.5%"])
        let o = try config(["--scenario", path, "--concurrency", "2", "--requests", "10"])
        XCTAssertEqual(o.mode, .closedLoop(concurrency: 2))
        XCTAssertEqual(o.requests, 10)
    }
}

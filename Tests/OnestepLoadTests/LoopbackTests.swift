// onestep-load against a real server on loopback (TestServer): rates, the coordinated-omission demonstration,
// response checks, outputs and exit codes.
import Foundation
import PNGCodec
import XCTest
@testable import OnestepLoad

final class LoopbackTests: XCTestCase {
    private func run(_ args: [String]) throws -> (LoadConfig, RunResults, LoadDriver) {
        guard case .run(let c) = try Arguments.parse(args + ["--quiet"]) else { throw UsageError("help") }
        let d = LoadDriver(config: c)
        return (c, d.run(), d)
    }

    private func tool(_ args: [String]) -> (Int32, String) {
        var text = ""
        let code = LoadTool.main(arguments: args + ["--quiet"], output: { text += $0 })
        return (code, text)
    }

    /// At a fixed rate against a server that takes 50 ms, the median lands near 50 ms.
    func testFixedDelayP50() throws {
        let server = try TestServer(.init(delay: 0.050))
        defer { server.stop() }
        let (_, r, _) = try run(["--rate", "40", "--duration", "2s", "--connections", "8", server.url + "/x"])
        let m = r.measured
        XCTAssertEqual(m.sent, 80)
        XCTAssertEqual(m.statusCounts[200], 80)
        XCTAssertEqual(m.errors, 0)
        // The server's 50 ms is a floor no measurement may undercut; the ceiling is loose on purpose (a shared or
        // sanitized machine may send late) but still catches a unit or start-time mistake (seconds, or latency
        // measured from the start of the run).
        let p50 = Double(m.corrected.value(atPercentile: 50)) / 1000
        XCTAssertGreaterThan(p50, 49, "p50 \(p50) ms")
        XCTAssertLessThan(p50, 250, "p50 \(p50) ms")
        XCTAssertEqual(r.sentRate, 40, accuracy: 1)
        XCTAssertEqual(r.achievedRate, 40, accuracy: 2)
        XCTAssertLessThan(m.late, m.sent / 2, "most requests go out on schedule")
        XCTAssertEqual(server.requestCount, 80)
    }

    /// The coordinated-omission demonstration (wrk2's): one connection, 100 requests/s for 10 s, and a server
    /// that stalls once for 1 s. Latency from the intended send time shows the stall at p99 (the ~100 requests
    /// that were due during the stall waited up to a second); latency from the actual send hides it.
    func testCoordinatedOmission() throws {
        let server = try TestServer(.init(delay: 0, stallAtRequest: 300, stallSeconds: 1.0))
        defer { server.stop() }
        let (_, r, _) = try run(["--rate", "100", "--duration", "10s", "--connections", "1", server.url + "/x"])
        let m = r.measured
        XCTAssertEqual(m.sent, 1000)
        XCTAssertEqual(m.ok, 1000)
        let corrected99 = Double(m.corrected.value(atPercentile: 99)) / 1000
        let uncorrected99 = Double(m.uncorrected.value(atPercentile: 99)) / 1000
        let uncorrected50 = Double(m.uncorrected.value(atPercentile: 50)) / 1000
        print("CO demo: corrected p99 \(corrected99) ms, uncorrected p99 \(uncorrected99) ms (p50 \(uncorrected50) ms), late \(m.late)")
        XCTAssertGreaterThan(corrected99, 500, "corrected p99 must show the 1 s stall")
        XCTAssertLessThan(uncorrected99, 20, "uncorrected p99 stays near normal latency")
        XCTAssertGreaterThan(Double(m.corrected.max) / 1000, 990)
        XCTAssertGreaterThan(m.late, 50)
    }

    func testThresholdsChangeExitCode() throws {
        let server = try TestServer(.init(delay: 0.020))
        defer { server.stop() }
        let base = ["--rate", "20", "--duration", "0.5s", "--connections", "4", server.url + "/x"]
        let (failCode, failText) = tool(base + ["--fail-if", "p50>1ms", "--fail-if", "error_rate>50%"])
        XCTAssertEqual(failCode, ExitCode.thresholdFailed)
        XCTAssertTrue(failText.contains("threshold FAILED: p50>1ms"), failText)
        XCTAssertTrue(failText.contains("threshold ok: error_rate>50%"), failText)
        XCTAssertEqual(tool(base + ["--fail-if", "p50>5s", "--fail-if", "rate<5"]).0, ExitCode.ok)
        XCTAssertEqual(tool(base + ["--fail-if", "p50 is big"]).0, ExitCode.usage)
        XCTAssertEqual(tool(["--rate", "x", server.url]).0, ExitCode.usage)
    }

    func testPNGBodiesAreVerified() throws {
        let png = try PNG.encode(PixelImage(width: 16, height: 16, channels: 3, fill: 128))
        let server = try TestServer(.init(body: png, contentType: "image/png"))
        defer { server.stop() }
        let url = server.url + "/v1/generate?seed={{seed}}"
        let (good, r1, _) = try run(["--rate", "100", "--requests", "20", "--expect-size", "16x16", url])
        XCTAssertEqual(good.expect, .png(width: 16, height: 16))
        XCTAssertEqual(r1.measured.ok, 20)
        XCTAssertEqual(r1.measured.bytes, 20 * png.count)
        let (_, r2, d2) = try run(["--rate", "100", "--requests", "20", "--expect", "png:32x32", url])
        XCTAssertEqual(r2.measured.errorCounts[.invalid], 20)
        XCTAssertEqual(d2.errorExamples[.invalid], "PNG is 16x16, expected 32x32")

        let text = try TestServer(.init(body: Array("not a png".utf8)))
        defer { text.stop() }
        // An image route defaults to --expect png.
        let (_, r3, _) = try run(["--rate", "100", "--requests", "10", text.url + "/v1/generate?seed=1"])
        XCTAssertEqual(r3.measured.errorCounts[.invalid], 10)
        XCTAssertEqual(r3.measured.responses, 10)
    }

    func testClosedLoopAndStatusErrors() throws {
        let server = try TestServer(.init(status: 503))
        defer { server.stop() }
        let (_, r, _) = try run(["--concurrency", "4", "--requests", "200", server.url + "/x"])
        XCTAssertEqual(r.measured.sent, 200)
        XCTAssertEqual(r.measured.statusCounts[503], 200)
        XCTAssertEqual(r.measured.errorCounts[.status], 200)
        XCTAssertEqual(r.errorRate, 1)
        XCTAssertNil(r.requestedRate)
    }

    func testConnectErrorsAndTimeouts() throws {
        // A port nobody listens on: bind one, note it, close it.
        let gone = try TestServer()
        let port = gone.port
        gone.stop()
        let (_, r, _) = try run(["--rate", "50", "--requests", "5", "http://127.0.0.1:\(port)/x"])
        XCTAssertEqual(r.measured.errorCounts[.connect], 5)
        XCTAssertEqual(r.measured.responses, 0)

        let slow = try TestServer(.init(delay: 2))
        defer { slow.stop() }
        let (_, t, _) = try run(["--rate", "20", "--requests", "4", "--timeout", "200ms", slow.url + "/x"])
        XCTAssertEqual(t.measured.errorCounts[.timeout], 4)
    }

    /// Requests still in flight when sending ends are waited for and reported.
    func testInFlightAtEndAreWaitedFor() throws {
        let server = try TestServer(.init(delay: 0.300))
        defer { server.stop() }
        let (_, r, _) = try run(["--rate", "20", "--duration", "0.5s", "--connections", "10", server.url + "/x"])
        XCTAssertGreaterThanOrEqual(r.inFlightAtEnd, 5)
        XCTAssertEqual(r.completedAfterEnd, r.inFlightAtEnd)
        XCTAssertEqual(r.measured.ok, 10)
    }

    func testWarmupJSONRawAndPlotOutputs() throws {
        let server = try TestServer(.init(delay: 0.002))
        defer { server.stop() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("onestep-load-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("r.json").path
        let raw = dir.appendingPathComponent("r.csv").path
        let plot = dir.appendingPathComponent("r.png").path
        let (code, text) = tool(["--rate", "100", "--warmup", "0.3s", "--duration", "0.5s", "--json", json,
                                 "--raw", raw, "--plot", plot, server.url + "/a", server.url + "/b"])
        XCTAssertEqual(code, ExitCode.ok)
        XCTAssertTrue(text.contains("Detailed Percentile spectrum"))
        XCTAssertTrue(text.contains("Warmup (not in results): 30 requests"))

        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any]
        let measured = object?["measured"] as? [String: Any]
        XCTAssertEqual(measured?["sent"] as? Int, 50)
        XCTAssertEqual((object?["warmup"] as? [String: Any])?["sent"] as? Int, 30)
        let latency = measured?["latency"] as? [String: Any]
        let corrected = latency?["corrected"] as? [String: Any]
        XCTAssertNotNil((corrected?["percentiles_ms"] as? [String: Double])?["p99.9"])
        XCTAssertEqual(object?["passed"] as? Bool, true)
        XCTAssertEqual(object?["requested_rate"] as? Double, 100)

        let lines = try String(contentsOfFile: raw, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 1 + 80)
        XCTAssertEqual(String(lines[0]) + "\n", RawWriter.header)
        XCTAssertEqual(lines.filter { $0.contains(",warmup,") }.count, 30)
        XCTAssertEqual(Set(lines.dropFirst().map { $0.split(separator: ",")[2] }), ["0", "1"])  // round-robin

        let image = try PNG.read(path: plot)
        XCTAssertEqual(image.width, 1000)
        XCTAssertEqual(image.height, 820)
    }
}

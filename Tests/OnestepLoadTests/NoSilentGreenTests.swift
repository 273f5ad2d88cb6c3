// Issue 16 item 3: a load test that fails must not exit 0. Thresholds on metrics with no samples fail as
// "no data"; runs whose requests failed beyond the error budget exit 1; the README's examples run against the
// real onestep-serve (built beside this test bundle) on its shipped default model and pass.
import Foundation
import XCTest
@testable import OnestepLoad

final class NoSilentGreenTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    private func tool(_ args: [String]) -> (Int32, String) {
        var text = ""
        let code = LoadTool.main(arguments: args + ["--quiet", "--no-spectrum"], output: { text += $0 })
        return (code, text)
    }

    private func closedPort() throws -> Int {
        let gone = try TestServer()
        let port = gone.port
        gone.stop()
        return Int(port)
    }

    /// The issue's input: a latency threshold against a port where nothing listens.
    func testLatencyThresholdWithoutSamplesFailsAsNoData() throws {
        let url = "http://127.0.0.1:\(try closedPort())/x"
        let (code, text) = tool(["--rate", "20", "--duration", "2s", "--fail-if", "p99>250ms", url])
        XCTAssertEqual(code, ExitCode.thresholdFailed, text)
        XCTAssertTrue(text.contains("threshold FAILED: p99>250ms (measured no data: no measured response (0 responses, 40 errors))"), text)
        // The other members: every latency metric, the status-filtered form, and the error rate with nothing finished.
        for expr in ["p50<1s", "max>1s", "mean>1s", "p99.99>1s", "p99[200]>1s", "error_rate>50%"] {
            let (c, t) = tool(["--rate", "20", "--requests", "3", "--fail-if", expr, "--error-budget", "off", url])
            XCTAssertEqual(c, ExitCode.thresholdFailed, "\(expr): \(t)")
            XCTAssertTrue(t.contains("threshold FAILED: \(expr)") || expr.hasPrefix("error_rate"), "\(expr): \(t)")
        }
    }

    func testStatusFilteredThresholdWithoutThatStatusFails() throws {
        let server = try TestServer(.init(delay: 0.001))
        defer { server.stop() }
        let (code, text) = tool(["--rate", "50", "--requests", "10", "--fail-if", "p99[429]>20ms", server.url + "/x"])
        XCTAssertEqual(code, ExitCode.thresholdFailed, text)
        XCTAssertTrue(text.contains("no data: no measured response with status 429 (10 responses, 0 errors)"), text)
    }

    func testAllFailedRunExitsNonZeroWithoutThresholds() throws {
        let url = "http://127.0.0.1:\(try closedPort())/x"
        let (code, text) = tool(["--rate", "50", "--requests", "10", url])
        XCTAssertEqual(code, ExitCode.thresholdFailed, text)
        XCTAssertTrue(text.contains("threshold FAILED: error_rate>1% (error budget"), text)
        XCTAssertEqual(tool(["--rate", "50", "--requests", "10", "--error-budget", "off", url]).0, ExitCode.ok)
        XCTAssertEqual(tool(["--rate", "50", "--requests", "10", "--error-budget", "100%", url]).0, ExitCode.ok)
    }

    func testErrorBudgetBoundsAndOverride() throws {
        // Half the requests get 429: over the default 1%, within 50%, over 49%.
        let ok = try TestServer(), full = try TestServer(.init(status: 429))
        defer { ok.stop(); full.stop() }
        let base = ["--rate", "100", "--requests", "20", ok.url + "/a", full.url + "/b"]
        XCTAssertEqual(tool(base).0, ExitCode.thresholdFailed)
        XCTAssertEqual(tool(base + ["--error-budget", "50%"]).0, ExitCode.ok)
        XCTAssertEqual(tool(base + ["--error-budget", "0.49"]).0, ExitCode.thresholdFailed)
        // A --fail-if on error_rate replaces the budget.
        XCTAssertEqual(tool(base + ["--fail-if", "error_rate>60%"]).0, ExitCode.ok)
        XCTAssertEqual(tool(base + ["--error-budget", "101%"]).0, ExitCode.usage)
        XCTAssertEqual(tool(base + ["--error-budget", "-1"]).0, ExitCode.usage)
        XCTAssertEqual(tool(base + ["--error-budget", "lots"]).0, ExitCode.usage)
        // A clean run passes the default budget.
        XCTAssertEqual(tool(["--rate", "100", "--requests", "20", ok.url + "/a"]).0, ExitCode.ok)
    }

    /// Every onestep-load command in loadtest/README.md's code blocks, against onestep-serve on its default model
    /// (durations shortened to 1 s, warmups dropped, output files in a temporary folder), exits 0.
    func testReadmeExamplesPass() throws {
        let serve = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/onestep-serve"
        guard FileManager.default.isExecutableFile(atPath: serve) else {
            return XCTFail("onestep-serve not built beside the tests at \(serve) (swift test builds every product)")
        }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: serve)
        server.arguments = ["--port", "0", "--models", Self.repoRoot + "/models", "--no-access-log", "--workers", "1"]
        let log = Pipe()
        server.standardError = log
        server.standardOutput = log
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        var seen = ""
        var base: String?
        let deadline = Date().addingTimeInterval(60)
        while base == nil, Date() < deadline {
            let chunk = log.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
            if let r = seen.range(of: #"http://127\.0\.0\.1:[0-9]+"#, options: .regularExpression) { base = String(seen[r]) }
        }
        guard let base else { return XCTFail("onestep-serve did not start: \(seen)") }

        let readme = try String(contentsOfFile: Self.repoRoot + "/loadtest/README.md", encoding: .utf8)
        var commands: [[String]] = []
        var inBlock = false
        for line in readme.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") { inBlock.toggle(); continue }
            guard inBlock else { continue }
            let words = Self.shellWords(String(line))
            guard let first = words.first, first.hasSuffix("onestep-load") else { continue }
            commands.append(Array(words.dropFirst()))
        }
        XCTAssertGreaterThanOrEqual(commands.count, 4, "the README's examples were not found")
        let tmp = NSTemporaryDirectory() + "onestep-readme-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        for args in commands {
            var a: [String] = []
            var i = 0
            while i < args.count {
                let w = args[i]
                if ["--duration", "--warmup"].contains(w), i + 1 < args.count {
                    a += [w, w == "--duration" ? "1s" : "0s"]; i += 2; continue
                }
                if ["--json", "--plot", "--raw"].contains(w), i + 1 < args.count {
                    a += [w, tmp + "/" + args[i + 1]]; i += 2; continue
                }
                if w == "--scenario", i + 1 < args.count {
                    // The scenario's URLs name port 8080: a copy pointing at this server.
                    let text = try String(contentsOfFile: Self.repoRoot + "/" + args[i + 1], encoding: .utf8)
                    let copy = tmp + "/" + URL(fileURLWithPath: args[i + 1]).lastPathComponent
                    // Its latency thresholds describe a quiet machine, not this test's (a sanitizer build, a loaded
                    // CI box): keep the error thresholds, which are what a wrong example would trip.
                    var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.replacingOccurrences(of: "http://127.0.0.1:8080", with: base).utf8)) as? [String: Any])
                    if let failIf = json["fail_if"] as? [String] { json["fail_if"] = failIf.filter { $0.hasPrefix("error_rate") } }
                    try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: copy))
                    a += [w, copy]; i += 2; continue
                }
                if w == "--fail-if", i + 1 < args.count {
                    // As for scenarios: latency thresholds are the reader's machine's; error thresholds stay.
                    if args[i + 1].hasPrefix("error_rate") { a += [w, args[i + 1]] }
                    i += 2; continue
                }
                a.append(w.replacingOccurrences(of: "http://127.0.0.1:8080", with: base))
                i += 1
            }
            if !a.contains("--duration") { a += ["--duration", "1s"] }
            if !a.contains("--warmup") { a += ["--warmup", "0s"] }
            let (code, text) = tool(a)
            XCTAssertEqual(code, ExitCode.ok, "README example failed: onestep-load \(args.joined(separator: " "))\n\(text)")
        }
    }

    /// Splits a shell line into words (single and double quotes; `#` starts a comment).
    static func shellWords(_ line: String) -> [String] {
        var words: [String] = [], cur = "", quote: Character?, any = false
        for ch in line {
            if let q = quote {
                if ch == q { quote = nil } else { cur.append(ch) }
            } else if ch == "'" || ch == "\"" {
                quote = ch; any = true
            } else if ch == "#" && cur.isEmpty && !any {
                break
            } else if ch == " " || ch == "\t" {
                if any || !cur.isEmpty { words.append(cur) }
                cur = ""; any = false
            } else {
                cur.append(ch); any = true
            }
        }
        if any || !cur.isEmpty { words.append(cur) }
        return words
    }
}

/// Issue 16 item 8: `--threads T` spreads the connections over T libcurl loops and merges their results into one
/// report: every request once, its own S_i, one histogram.
final class ThreadsTests: XCTestCase {
    private func run(_ args: [String]) throws -> (LoadConfig, RunResults) {
        guard case .run(let c) = try Arguments.parse(args + ["--quiet"]) else { throw UsageError("help") }
        return (c, LoadDriver(config: c, raw: c.rawPath.flatMap { RawWriter(path: $0) }).run())
    }

    private func rawIndices(_ path: String) throws -> [(index: Int, intendedMs: Double)] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").dropFirst().map {
            let f = $0.split(separator: ",", omittingEmptySubsequences: false)
            return (Int(f[0])!, Double(f[3])!)
        }
    }

    func testOpenLoopThreadsShareTheScheduleAndMerge() throws {
        let server = try TestServer(.init(delay: 0.002))
        defer { server.stop() }
        let raw = NSTemporaryDirectory() + "threads-\(UUID().uuidString.prefix(8)).csv"
        let (c, r) = try run(["--rate", "200", "--requests", "100", "--warmup", "0.1s", "--connections", "5", "--threads", "3",
                              "--raw", raw, server.url + "/x?seed={{seed}}"])
        XCTAssertEqual(c.effectiveThreads, 3)
        XCTAssertEqual(r.measured.sent, 100)
        XCTAssertEqual(r.warmup.sent, 20)
        XCTAssertEqual(r.measured.corrected.totalCount, 100, "one merged histogram")
        XCTAssertEqual(r.measured.ok, 100)
        XCTAssertEqual(server.requestCount, 120)
        // Every request once, at its own S_i = i / R.
        let rows = try rawIndices(raw)
        XCTAssertEqual(rows.map(\.index).sorted(), Array(0..<120))
        for row in rows { XCTAssertEqual(row.intendedMs, Double(row.index) * 5, accuracy: 0.001) }
    }

    func testClosedLoopThreadsSplitConcurrencyAndRequests() throws {
        let server = try TestServer(.init(delay: 0.001))
        defer { server.stop() }
        let raw = NSTemporaryDirectory() + "threads-\(UUID().uuidString.prefix(8)).csv"
        let (c, r) = try run(["--concurrency", "4", "--requests", "101", "--threads", "2", "--raw", raw, server.url + "/x"])
        XCTAssertEqual(c.effectiveThreads, 2)
        XCTAssertEqual(r.measured.sent, 101)
        XCTAssertEqual(r.measured.corrected.totalCount, 101)
        XCTAssertEqual(Set(try rawIndices(raw).map(\.index)).count, 101, "indices are unique over the threads")
        // Never more threads than connections; 1 thread keeps the single loop.
        XCTAssertEqual(try run(["--concurrency", "1", "--requests", "3", "--threads", "8", server.url + "/x"]).0.effectiveThreads, 1)
        guard case .run(let defaults) = try Arguments.parse(["--rate", "10", "http://h:1/x"]) else { return XCTFail() }
        XCTAssertEqual(defaults.threads, ProcessInfo.processInfo.activeProcessorCount)
        for bad in ["0", "-1", "x", "1025"] {
            XCTAssertThrowsError(try Arguments.parse(["--rate", "10", "--threads", bad, "http://h:1/x"]), bad)
        }
        XCTAssertNoThrow(try Arguments.parse(["--rate", "10", "--threads", "1024", "http://h:1/x"]))
    }
}

// Starting the real server for a test: golden models, options with small limits, a loopback port chosen by the
// kernel, and readers for /metrics. Every test drains and stops its own server.

import Foundation
import PNGCodec
import XCTest
@testable import OnestepServer

enum Fixtures {
    static let repoRoot: String = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// ../shared/golden beside the repository (override with ONESTEP_GOLDEN).
    static var golden: String {
        if let p = ProcessInfo.processInfo.environment["ONESTEP_GOLDEN"] { return p }
        return URL(fileURLWithPath: repoRoot + "/../shared/golden").standardizedFileURL.path
    }

    static func tempDir(_ tag: String) -> String {
        let safe = tag.filter { $0.isLetter || $0.isNumber }
        let p = NSTemporaryDirectory() + "onestep-server-test-\(safe)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    /// The three golden models (cd_tiny 16x16 RGB with 10 classes, ddpm_tiny, ddpm_gray 8x8 gray), loaded once.
    static let goldenModels: Result<ModelRegistry, Error> = Result {
        guard FileManager.default.fileExists(atPath: golden + "/cd_tiny/config.json") else {
            throw TestClientError(description: "golden models not found at \(golden); set ONESTEP_GOLDEN to the shared/golden folder")
        }
        return try ModelRegistry.load(directory: try pixelModels.get(), preferred: "cd_tiny", log: { _ in })
    }

    /// A models folder linking only the three pixel golden models: shared/golden also holds text-to-image pipelines
    /// (cfg_v_tiny, ...), which this server refuses by their component classes, and one refused folder stops a
    /// models folder loading.
    static let pixelModels: Result<String, Error> = Result {
        let dir = tempDir("golden")
        for name in ["cd_tiny", "ddpm_gray", "ddpm_tiny"] {
            try FileManager.default.createSymbolicLink(atPath: dir + "/" + name, withDestinationPath: golden + "/" + name)
        }
        return dir
    }

    /// A models folder with one model, "shapes": cd_tiny's weights with class names in config.json
    /// (the golden models have none), written to a temp folder once.
    static let namedModels: Result<ModelRegistry, Error> = Result {
        let dir = tempDir("named"), model = dir + "/shapes"
        let fm = FileManager.default
        try fm.createDirectory(atPath: model, withIntermediateDirectories: true)
        try fm.copyItem(atPath: golden + "/cd_tiny/diffusion_pytorch_model.safetensors",
                        toPath: model + "/diffusion_pytorch_model.safetensors")
        var config = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: golden + "/cd_tiny/config.json"))) as! [String: Any]
        config["id2label"] = Dictionary(uniqueKeysWithValues: classNames.enumerated().map { (String($0), $1) })
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: model + "/config.json"))
        return try ModelRegistry.load(directory: dir, preferred: nil, log: { _ in })
    }

    static let classNames = ["circle", "square", "triangle", "cross", "ring", "star", "heart", "moon", "diamond", "arrow"]
}

/// A running in-process server and what a test needs to talk to it.
final class RunningServer {
    let server: OnestepServer
    var port: Int { server.port }

    /// Options for tests: port 0, no access log; `configure` sets the rest.
    init(models: Result<ModelRegistry, Error> = Fixtures.goldenModels, _ configure: (inout ServerOptions) -> Void = { _ in }) throws {
        var options = ServerOptions()
        options.port = 0
        options.accessLog = false
        options.workers = 1
        options.blasThreads = 1
        options.drainTimeoutMs = 10_000
        // Tests check answers, not the default deadline (tests of deadlines set their own): under ThreadSanitizer on
        // a loaded 2-core machine a burst of 40 text requests waited past the server's 10 s default (503s).
        options.defaultDeadlineMs = 120_000
        options.maxDeadlineMs = 120_000
        configure(&options)
        server = OnestepServer(options: options, models: try models.get(), log: { _ in })
        try server.start()
    }

    deinit { server.drainAndStop() }

    func client(timeout: Int = 20) throws -> HTTPTestClient { try HTTPTestClient(port: port, timeout: timeout) }

    /// GET on a fresh connection.
    func get(_ target: String) throws -> TestResponse {
        guard let r = try client().get(target) else { throw TestClientError(description: "no response to GET \(target)") }
        return r
    }

    func post(_ target: String, json: String) throws -> TestResponse {
        guard let r = try client().post(target, json: json) else { throw TestClientError(description: "no response to POST \(target)") }
        return r
    }

    /// /metrics, parsed: "name{labels}" -> value.
    func metrics() throws -> [String: Double] {
        let r = try get("/metrics")
        XCTAssertEqual(r.status, 200)
        return parseMetrics(r.text)
    }

    /// Polls /metrics until `condition` holds (or fails the test after `timeout` seconds).
    @discardableResult
    func waitForMetrics(timeout: Double = 10, file: StaticString = #filePath, line: UInt = #line,
                        _ condition: ([String: Double]) -> Bool) throws -> [String: Double] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let m = try metrics()
            if condition(m) { return m }
            if Date() > deadline {
                XCTFail("metrics condition not met within \(timeout) s", file: file, line: line)
                return m
            }
            usleep(5_000)
        }
    }
}

/// Prometheus text format -> "name{labels}" -> value (comments skipped).
func parseMetrics(_ text: String) -> [String: Double] {
    var out: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
        out[String(line[..<space])] = v
    }
    return out
}

/// Decodes a PNG and checks its size and channel count.
func assertPNG(_ bytes: [UInt8], size: Int, channels: Int, file: StaticString = #filePath, line: UInt = #line) {
    do {
        let image = try PNG.decode(bytes)
        XCTAssertEqual(image.width, size, "width", file: file, line: line)
        XCTAssertEqual(image.height, size, "height", file: file, line: line)
        XCTAssertEqual(image.channels, channels, "channels", file: file, line: line)
    } catch {
        XCTFail("not a PNG: \(error)", file: file, line: line)
    }
}

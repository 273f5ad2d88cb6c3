import Foundation
import XCTest
@testable import OnestepServer

/// Issue 16 item 5b: every documented limit is accepted at both ends on every input path and refused one past
/// them: server flags and their ONESTEP_* variables (docs/SERVING.md's flag table), request fields in a query
/// string and in a JSON body (docs/SERVING.md "Request fields").
final class InputBoundsTests: XCTestCase {
    /// (flag, lowest, highest, extra flags the extremes need).
    static let serverLimits: [(String, String, String, [String])] = [
        ("port", "0", "65535", []),
        ("workers", "1", "64", []),
        ("threads", "1", "256", []),
        ("max-batch", "1", "256", []),
        ("max-delay-ms", "0", "10000", []),
        ("max-queue", "1", "1000000", []),
        ("default-deadline-ms", "1", "3600000", ["--max-deadline-ms", "3600000"]),
        ("max-deadline-ms", "1", "3600000", ["--default-deadline-ms", "1"]),
        ("max-connections", "1", "1000000", []),
        ("max-body-bytes", "256", "67108864", []),
        ("header-timeout-ms", "10", "3600000", []),
        ("body-timeout-ms", "10", "3600000", []),
        ("idle-timeout-ms", "10", "3600000", []),
        ("drain-timeout-ms", "0", "3600000", []),
        ("text-embedding-cache", "0", "1000000", []),
    ]

    static func onePast(_ v: String, by d: Int) -> String { String(Int(v)! + d) }

    func testServerFlagAndEnvironmentLimits() throws {
        for (flag, lo, hi, extra) in Self.serverLimits {
            let env = "ONESTEP_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
            let extraEnv = stride(from: 0, to: extra.count, by: 2).reduce(into: [String: String]()) {
                $0["ONESTEP_" + extra[$1].dropFirst(2).uppercased().replacingOccurrences(of: "-", with: "_")] = extra[$1 + 1]
            }
            for v in [lo, hi] {
                XCTAssertNoThrow(try ServerOptions.parse(["--\(flag)", v] + extra, environment: [:]), "--\(flag) \(v)")
                XCTAssertNoThrow(try ServerOptions.parse([], environment: extraEnv.merging([env: v]) { $1 }), "\(env)=\(v)")
            }
            for v in [Self.onePast(lo, by: -1), Self.onePast(hi, by: 1)] {
                XCTAssertThrowsError(try ServerOptions.parse(["--\(flag)", v] + extra, environment: [:]), "--\(flag) \(v)") {
                    XCTAssertTrue("\($0)".contains("--\(flag) \(v)"), "\($0)")
                }
                XCTAssertThrowsError(try ServerOptions.parse([], environment: extraEnv.merging([env: v]) { $1 }), "\(env)=\(v)")
            }
        }
        // The parsed value is the one given (not clamped), from either path.
        XCTAssertEqual(try ServerOptions.parse(["--max-batch", "256"], environment: [:]).0.maxBatch, 256)
        XCTAssertEqual(try ServerOptions.parse([], environment: ["ONESTEP_MAX_BATCH": "1"]).0.maxBatch, 1)
        XCTAssertEqual(try ServerOptions.parse([], environment: ["ONESTEP_MAX_DELAY_MS": "10000"]).0.maxDelayMs, 10_000)
    }

    /// (field, lowest, highest) of a generation request on the golden class model (16 images per request, 4 steps).
    static let requestLimits: [(String, Int, Int)] = [
        ("seed", 0, 9_007_199_254_740_991),
        ("steps", 1, 4),
        ("n", 1, 16),
        ("deadline_ms", 1, 3_600_000),
    ]

    func testRequestFieldLimitsOnQueryAndJSON() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        // Accepted: answered 200, except that a 1 ms deadline may pass while the request waits for its batch
        // (503 deadline_exceeded, the limit working as documented); refused: 400 naming the field.
        func accepted(_ r: TestResponse, _ field: String) -> Bool {
            r.status == 200 || (field == "deadline_ms" && r.status == 503 && r.errorType == "deadline_exceeded")
        }
        for (field, lo, hi) in Self.requestLimits {
            for v in [lo, hi] {
                if field != "n" {
                    let q = try server.get("/v1/generate?\(field)=\(v)")
                    XCTAssertTrue(accepted(q, field), "query \(field)=\(v): \(q.status) \(q.text)")
                }
                for route in field == "n" ? ["/v1/images/generations"] : ["/v1/generate", "/v1/images/generations"] {
                    let j = try server.post(route, json: "{\"\(field)\": \(v)}")
                    XCTAssertTrue(accepted(j, field), "\(route) JSON \(field)=\(v): \(j.status) \(j.text)")
                }
            }
            for v in [lo - 1, hi + 1] {
                if field != "n" {
                    let q = try server.get("/v1/generate?\(field)=\(v)")
                    XCTAssertEqual(q.status, 400, "query \(field)=\(v)")
                    XCTAssertTrue(q.errorMessage?.contains("\(field) must be") == true, q.text)
                }
                let j = try server.post("/v1/images/generations", json: "{\"\(field)\": \(v)}")
                XCTAssertEqual(j.status, 400, "JSON \(field)=\(v)")
                XCTAssertTrue(j.errorMessage?.contains("\(field) must be") == true, j.text)
            }
        }
        // The highest seed is echoed exactly.
        XCTAssertEqual(try server.get("/v1/generate?seed=9007199254740991").headers["x-seed"], "9007199254740991")
    }
}

import Foundation
import XCTest
@testable import OnestepServer

/// Issue 16 item 6: an OpenAI user's first requests. Every problem of a request in one error; a prompt that
/// contains a class name resolves to it (echoed); class names in responses; GET /v1/models/{id}; unknown fields
/// refused alike on every route and in both forms.
final class OpenAIRequestTests: XCTestCase {
    /// The issue's input: images.generate(prompt="a red star", size="256x256", response_format="url") on a class
    /// model (16x16) took three round trips; now one 400 names both problems.
    func testEveryProblemOfARequestInOneError() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let r = try server.post("/v1/images/generations", json: #"{"prompt": "a red star", "size": "256x256", "response_format": "url"}"#)
        XCTAssertEqual(r.status, 400, r.text)
        let m = try XCTUnwrap(r.errorMessage)
        XCTAssertTrue(m.hasPrefix("2 problems: (1) response_format"), m)
        XCTAssertTrue(m.contains(#"got "url""#) && m.contains(#"size must be "16x16""#) && m.contains(#"got "256x256""#), m)
        // More members: bad n, steps, seed, deadline_ms and an unknown field, all at once, on JSON and query.
        let many = try server.post("/v1/images/generations", json: #"{"prompt": "star", "n": 0, "steps": 9, "seed": -1, "deadline_ms": 0, "sead": 3}"#)
        let mm = try XCTUnwrap(many.errorMessage)
        XCTAssertTrue(mm.hasPrefix("5 problems:"), mm)
        for part in ["'sead'", "n must be", "steps must be", "seed must be", "deadline_ms must be"] { XCTAssertTrue(mm.contains(part), "\(part) missing: \(mm)") }
        let query = try server.get("/v1/generate?n=2&steps=0&label=hexagon&sead=1")
        let qm = try XCTUnwrap(query.errorMessage)
        XCTAssertTrue(qm.hasPrefix("4 problems:") && qm.contains("n is not supported") && qm.contains("hexagon") && qm.contains("'sead'"), qm)
        // A single problem keeps its plain message.
        XCTAssertEqual(try server.get("/v1/generate?steps=0").errorMessage, "steps must be an integer in 1...4, got 0")
    }

    func testPromptContainingAClassNameResolvesAndIsEchoed() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let star = try server.get("/v1/generate?seed=4&label=star")
        XCTAssertEqual(star.status, 200, star.text)
        XCTAssertEqual(star.headers["x-label"], "5")
        XCTAssertEqual(star.headers["x-label-name"], "star")
        for prompt in ["a red star", "stars", "A STAR.", "star", "five-pointed star on white"] {
            let body = "{\"prompt\": \"\(prompt)\", \"seed\": 4}"
            let r = try server.post("/v1/images/generations", json: body)
            XCTAssertEqual(r.status, 200, "\(prompt): \(r.text)")
            let item = try XCTUnwrap((r.json?["data"] as? [[String: Any]])?.first)
            XCTAssertEqual(item["label"] as? Int, 5, prompt)
            XCTAssertEqual(item["label_name"] as? String, "star", prompt)
            XCTAssertEqual(item["revised_prompt"] as? String, "star", prompt)
            XCTAssertEqual(Data(base64Encoded: item["b64_json"] as? String ?? "").map(Array.init), star.body, prompt)
        }
        let q = try server.get("/v1/generate?seed=4&prompt=two%20stars")
        XCTAssertEqual(q.status, 200, q.text)
        XCTAssertEqual(q.headers["x-prompt-resolved-to"], "star")
        XCTAssertEqual(q.body, star.body)
        // Two classes named, or none: 400 saying which.
        let two = try XCTUnwrap(try server.post("/v1/images/generations", json: #"{"prompt": "a star and a moon"}"#).errorMessage)
        XCTAssertTrue(two.contains("several classes (star, moon)"), two)
        let none = try XCTUnwrap(try server.post("/v1/images/generations", json: #"{"prompt": "a starfish"}"#).errorMessage)
        XCTAssertTrue(none.contains("names no class") && none.contains("circle"), none)
        // A class model asked for no class still names the class it drew.
        let free = try server.post("/v1/images/generations", json: #"{"seed": 12}"#)
        let item = try XCTUnwrap((free.json?["data"] as? [[String: Any]])?.first)
        XCTAssertEqual(item["label_name"] as? String, Fixtures.classNames[12 % 10])
        XCTAssertNil(item["revised_prompt"])
    }

    func testModelsRetrieve() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let list = try server.get("/v1/models")
        let first = try XCTUnwrap((list.json?["data"] as? [[String: Any]])?.first)
        let one = try server.get("/v1/models/shapes")
        XCTAssertEqual(one.status, 200, one.text)
        XCTAssertEqual(one.json?["id"] as? String, "shapes")
        XCTAssertEqual(one.json?["object"] as? String, "model")
        XCTAssertEqual(one.json?["owned_by"] as? String, "onestep")
        XCTAssertNotNil(one.json?["created"] as? Int)
        XCTAssertEqual(NSDictionary(dictionary: one.json ?? [:]), NSDictionary(dictionary: first))
        let missing = try server.get("/v1/models/dall-e-3")
        XCTAssertEqual(missing.status, 404)
        XCTAssertEqual((missing.json?["error"] as? [String: Any])?["type"] as? String, "not_found_error")
        XCTAssertTrue(missing.errorMessage?.contains("dall-e-3") == true && missing.errorMessage?.contains("shapes") == true)
        XCTAssertEqual(try server.post("/v1/models/shapes", json: "{}").status, 405)
    }

    /// Unknown fields: refused with 400 on every route, in JSON and query alike; OpenAI fields that do not apply
    /// are accepted and ignored everywhere.
    func testUnknownFieldsAreTreatedAlikeEverywhere() throws {
        let server = try RunningServer(models: Fixtures.namedModels)
        let cases: [(String, String?)] = [
            ("/v1/generate?seed=1&colour=red", nil),
            ("/v1/generate", #"{"seed": 1, "colour": "red"}"#),
            ("/v1/images/generations", #"{"seed": 1, "colour": "red"}"#),
        ]
        for (target, body) in cases {
            let r = try body.map { try server.post(target, json: $0) } ?? server.get(target)
            XCTAssertEqual(r.status, 400, target)
            XCTAssertTrue(r.errorMessage?.contains("unknown field 'colour'") == true, "\(target): \(r.text)")
        }
        let ignored = try server.post("/v1/images/generations", json: #"{"prompt": "star", "seed": 1, "user": "u1", "quality": "hd", "style": "vivid", "response_format": "b64_json", "size": "16x16", "model": "shapes"}"#)
        XCTAssertEqual(ignored.status, 200, ignored.text)
        XCTAssertEqual(try server.get("/v1/generate?seed=1&user=u1&size=16x16").status, 200)
    }
}

/// The docs' OpenAI Python client snippet, run with the real `openai` package against the real server.
final class OpenAIClientSnippetTests: XCTestCase {
    func testOfficialPythonClientSnippet() throws {
        let python = ProcessInfo.processInfo.environment["ONESTEP_PYTHON"] ?? "/work/venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python at \(python); set ONESTEP_PYTHON") }
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: python)
        probe.arguments = ["-c", "import openai"]
        probe.standardError = FileHandle.nullDevice
        try probe.run(); probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { throw XCTSkip("\(python) has no openai package (pip install openai)") }

        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let models = Result { try ModelRegistry.load(directory: repo + "/models", preferred: nil, log: { _ in }) }
        let server = try RunningServer(models: models)
        let doc = try String(contentsOfFile: repo + "/docs/SERVING.md", encoding: .utf8)
        let section = try XCTUnwrap(doc.range(of: "### From the OpenAI Python client"))
        let start = try XCTUnwrap(doc.range(of: "```python\n", range: section.upperBound..<doc.endIndex))
        let end = try XCTUnwrap(doc.range(of: "```", range: start.upperBound..<doc.endIndex))
        let snippet = String(doc[start.upperBound..<end.lowerBound])
            .replacingOccurrences(of: "http://127.0.0.1:8080", with: "http://127.0.0.1:\(server.port)")
        let dir = NSTemporaryDirectory() + "onestep-openai-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", snippet]
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        var env = ProcessInfo.processInfo.environment
        env["NO_PROXY"] = "127.0.0.1"; env["no_proxy"] = "127.0.0.1"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "snippet failed:\n\(o)\n\(e)")
        // models/ holds the default student and the DDPM teacher it can be distilled from; both are listed, and
        // the student (first by name) is retrieved.
        XCTAssertTrue(o.hasPrefix("['shapes16-cd-int8', 'shapes16-ddpm'] shapes16-cd-int8\n"), o)
        XCTAssertTrue(o.hasSuffix("star\n"), o)
        for i in 0..<2 {
            let png = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/star\(i).png"))
            XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        }
        // Same bytes as the plain route for the same seed and class.
        let direct = try server.get("/v1/generate?seed=7&label=star")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/star0.png")), Data(direct.body))
    }
}

// Issue 17 items 5 and 6, and issue 16 item 4, on the real server: model folders that used to be skipped
// silently (or hang start-up) stop it naming the file; errors quote a short prefix of the input, not all of it;
// chunked request bodies from real curl are accepted.

import Foundation
import XCTest
@testable import OnestepServer

final class HostileInputTests: XCTestCase {
    /// cd_tiny alone: the shared golden folder also holds text-to-image pipelines this server does not load.
    static let cdTiny: Result<ModelRegistry, Error> = Result {
        let dir = Fixtures.tempDir("cdtiny"), fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/cd_tiny", withIntermediateDirectories: true)
        for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try fm.copyItem(atPath: Fixtures.golden + "/cd_tiny/" + file, toPath: dir + "/cd_tiny/" + file)
        }
        return try ModelRegistry.load(directory: dir, preferred: nil, log: { _ in })
    }

    /// A models folder holding a good copy of cd_tiny (named "good") and one broken folder made by `breakIt`.
    private func modelsFolder(_ tag: String, _ breakIt: (String) throws -> Void) throws -> String {
        let dir = Fixtures.tempDir(tag), fm = FileManager.default
        for name in ["good", "bad"] {
            try fm.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: true)
        }
        for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try fm.copyItem(atPath: Fixtures.golden + "/cd_tiny/" + file, toPath: dir + "/good/" + file)
        }
        try breakIt(dir + "/bad")
        return dir
    }

    /// The start-up error for a models folder, or nil if it loaded.
    private func loadError(_ dir: String) -> String? {
        do {
            _ = try ModelRegistry.load(directory: dir, preferred: nil, log: { _ in })
            return nil
        } catch {
            return "\(error)"
        }
    }

    func testEveryBrokenModelFolderStopsStartUpNamingTheFileAndReason() throws {
        let fm = FileManager.default
        let weights = Fixtures.golden + "/cd_tiny/diffusion_pytorch_model.safetensors"
        let cases: [(String, (String) throws -> Void, [String])] = [
            ("dangling config symlink", { bad in
                try fm.copyItem(atPath: weights, toPath: bad + "/diffusion_pytorch_model.safetensors")
                try fm.createSymbolicLink(atPath: bad + "/config.json", withDestinationPath: "../../blobs/missing")
            }, ["bad/config.json", "symlink to ../../blobs/missing, which does not exist"]),
            ("config symlink loop", { bad in
                try fm.copyItem(atPath: weights, toPath: bad + "/diffusion_pytorch_model.safetensors")
                try fm.createSymbolicLink(atPath: bad + "/config.json", withDestinationPath: "config.json")
            }, ["bad/config.json", "symlink loop"]),
            ("weights symlink loop", { bad in
                try fm.copyItem(atPath: Fixtures.golden + "/cd_tiny/config.json", toPath: bad + "/config.json")
                try fm.createSymbolicLink(atPath: bad + "/diffusion_pytorch_model.safetensors",
                                          withDestinationPath: "diffusion_pytorch_model.safetensors")
            }, ["bad/diffusion_pytorch_model.safetensors", "symlink loop"]),
            ("weights without config", { bad in
                try fm.copyItem(atPath: weights, toPath: bad + "/diffusion_pytorch_model.safetensors")
            }, ["bad", "has diffusion_pytorch_model.safetensors but no config.json"]),
            ("FIFO as weights", { bad in
                try fm.copyItem(atPath: Fixtures.golden + "/cd_tiny/config.json", toPath: bad + "/config.json")
                XCTAssertEqual(mkfifo(bad + "/diffusion_pytorch_model.safetensors", 0o644), 0)
            }, ["bad/diffusion_pytorch_model.safetensors", "FIFO", "not a regular file"]),
            ("config is a folder", { bad in
                try fm.copyItem(atPath: weights, toPath: bad + "/diffusion_pytorch_model.safetensors")
                try fm.createDirectory(atPath: bad + "/config.json", withIntermediateDirectories: false)
            }, ["bad/config.json", "is a folder"]),
        ]
        for (name, breakIt, expected) in cases {
            let dir = try modelsFolder(name, breakIt)
            let started = ContinuousClock.now
            let error = loadError(dir)
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "\(name): start-up hung")
            guard let error else {
                XCTFail("\(name): the server started, skipping the broken folder")
                continue
            }
            for part in expected { XCTAssertTrue(error.contains(part), "\(name): \(error)") }
            XCTAssertFalse(error.contains("NSCocoaErrorDomain"), "\(name): \(error)")
        }
    }

    /// A top-level entry that is a dangling symlink (a model linked from a cache that is gone) stops start-up;
    /// plain files beside the models (a README) are fine.
    func testDanglingModelSymlinkStopsStartUpAndReadmeIsIgnored() throws {
        let dir = try modelsFolder("toplevel", { bad in try FileManager.default.removeItem(atPath: bad) })
        try Data("notes".utf8).write(to: URL(fileURLWithPath: dir + "/README.md"))
        XCTAssertNil(loadError(dir))
        try FileManager.default.createSymbolicLink(atPath: dir + "/linked", withDestinationPath: "/nonexistent/model")
        let error = try XCTUnwrap(loadError(dir))
        XCTAssertTrue(error.contains("linked") && error.contains("does not exist"), error)
    }

    /// Unreadable folders can only be shown as a user other than root (root reads everything); the
    /// loadtest/faults/bad-models drill runs that case as `nobody`.
    func testUnreadableModelFolderNamesTheUser() throws {
        try XCTSkipIf(getuid() == 0, "root can read any folder; covered by loadtest/faults/bad-models as nobody")
        let dir = try modelsFolder("unreadable", { bad in
            try FileManager.default.copyItem(atPath: Fixtures.golden + "/cd_tiny/config.json", toPath: bad + "/config.json")
            chmod(bad, 0)
        })
        let error = try XCTUnwrap(loadError(dir))
        XCTAssertTrue(error.contains("bad") && error.contains("Permission denied") && error.contains("uid"), error)
    }

    /// A 60 KB label comes back as a short prefix and its size, not as a 60 KB error.
    func testErrorsQuoteAShortPrefixOfTheInput() throws {
        let server = try RunningServer(models: Self.cdTiny)
        let long = String(repeating: "z", count: 60_000)
        for (target, json) in [("/v1/generate", "{\"label\":\"\(long)\"}"), ("/v1/generate", "{\"seed\":\"\(long)\"}"),
                               ("/v1/generate", "{\"model\":\"\(long)\"}")] {
            let r = try server.post(target, json: json)
            XCTAssertEqual(r.status == 400 || r.status == 404, true, r.text)
            XCTAssertLessThan(r.body.count, 1024, String(r.text.prefix(200)))
            XCTAssertTrue(r.text.contains("60000 bytes"), r.text)
        }
        let query = try server.get("/v1/generate?" + String(repeating: "q", count: 5000) + "=1")
        XCTAssertEqual(query.status, 400)
        XCTAssertLessThan(query.body.count, 1024)
        let route = try server.get("/" + String(repeating: "r", count: 5000))
        XCTAssertEqual(route.status, 404)
        XCTAssertLessThan(route.body.count, 1024)
    }

    /// curl sends `Transfer-Encoding: chunked` when it reads a body from a pipe without knowing its size: the
    /// image comes back as for a Content-Length body.
    func testChunkedBodyFromRealCurl() throws {
        let server = try RunningServer(models: Self.cdTiny)
        let base = "http://127.0.0.1:\(server.port)"
        let json = "{\"seed\":7,\"label\":3}"
        let reference = try server.post("/v1/generate", json: json)
        XCTAssertEqual(reference.status, 200)
        for extra in [["-H", "Transfer-Encoding: chunked", "--data-binary", "@-"], ["-X", "POST", "-T", "-"]] {
            let curl = Process()
            curl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("chunked-\(UUID().uuidString).png")
            curl.arguments = ["curl", "-sS", "-v", "-o", out.path, "-w", "%{http_code}",
                              "-H", "Content-Type: application/json"] + extra + [base + "/v1/generate"]
            let input = Pipe(), output = Pipe(), errors = Pipe()
            curl.standardInput = input
            curl.standardOutput = output
            curl.standardError = errors
            try curl.run()
            input.fileHandleForWriting.write(Data(json.utf8))
            try input.fileHandleForWriting.close()
            let status = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let trace = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            curl.waitUntilExit()
            XCTAssertTrue(trace.lowercased().contains("transfer-encoding: chunked"), "curl did not send chunked: \(trace)")
            XCTAssertEqual(status, "200", trace)
            XCTAssertEqual(try Data(contentsOf: out), Data(reference.body), "same PNG as the Content-Length request")
        }
    }
}

import Foundation
import XCTest
@testable import OnestepCore

/// Broken pipeline folders are refused naming the file and the reason. Each test copies sd_turbo_tiny's small
/// files and links its weights into a temporary folder, then breaks one thing.
final class TextToImageLoadErrorTests: XCTestCase {
    func copyPipeline(_ tag: String = #function) throws -> String {
        let src = T2IGoldenCase.folder("sd_turbo_tiny"), dst = Fixtures.tempDir(tag)
        let fm = FileManager.default
        for entry in try fm.subpathsOfDirectory(atPath: src) {
            var isDir: ObjCBool = false
            _ = fm.fileExists(atPath: src + "/" + entry, isDirectory: &isDir)
            if isDir.boolValue { try fm.createDirectory(atPath: dst + "/" + entry, withIntermediateDirectories: true) }
            else if entry.hasSuffix(".safetensors") { try fm.createSymbolicLink(atPath: dst + "/" + entry, withDestinationPath: src + "/" + entry) }
            else { try fm.copyItem(atPath: src + "/" + entry, toPath: dst + "/" + entry) }
        }
        return dst
    }

    func assertRefused(_ dir: String, mentions parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try GenerationPipeline.load(path: dir), file: file, line: line) { e in
            let text = "\(e)"
            print("refused: \(text)")
            for p in parts { XCTAssertTrue(text.contains(p), "error should mention '\(p)': \(text)", file: file, line: line) }
        }
    }

    func testCopyLoads() throws {
        // The copy itself is fine, so the refusals below come from the one thing each breaks.
        guard case .text = try GenerationPipeline.load(path: try copyPipeline()) else { return XCTFail("not a text pipeline") }
    }

    func testMissingTokenizerFiles() throws {
        for file in ["merges.txt", "vocab.json"] {
            let d = try copyPipeline(#function + file)
            try FileManager.default.removeItem(atPath: d + "/tokenizer/" + file)
            assertRefused(d, mentions: ["tokenizer/" + file])
        }
    }

    func testTextEncoderConfigOutsideSubset() throws {
        let d = try copyPipeline()
        let p = d + "/text_encoder/config.json"
        var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as? [String: Any])
        cfg["hidden_act"] = "relu"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: p))
        assertRefused(d, mentions: ["text_encoder/config.json", "hidden_act"])
    }

    func testUnknownComponentClass() throws {
        let d = try copyPipeline()
        let p = d + "/model_index.json"
        var idx = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as? [String: Any])
        idx["vae"] = ["diffusers", "AutoencoderDC"]
        try JSONSerialization.data(withJSONObject: idx).write(to: URL(fileURLWithPath: p))
        assertRefused(d, mentions: ["model_index.json", "AutoencoderDC", "vae"])
    }

    func testMissingComponent() throws {
        let d = try copyPipeline()
        let p = d + "/model_index.json"
        var idx = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as? [String: Any])
        idx["text_encoder"] = [NSNull(), NSNull()]
        try JSONSerialization.data(withJSONObject: idx).write(to: URL(fileURLWithPath: p))
        assertRefused(d, mentions: ["model_index.json", "text_encoder"])
    }

    func testPixelLoaderPointsTextPipelinesElsewhere() throws {
        XCTAssertThrowsError(try ImagePipeline.load(path: T2IGoldenCase.folder("sd_turbo_tiny"))) { e in
            XCTAssertTrue("\(e)".contains("text-to-image"), "\(e)")
        }
    }
}

import Foundation
import XCTest
@testable import OnestepCore

/// Broken tokenizer and text encoder folders are refused with the file and the reason (ModelLoadError).
final class CLIPLoadErrorTests: XCTestCase {
    /// Asserts `body` throws a ModelLoadError whose path ends with `file` and whose problem contains `phrase`.
    func assertRefused(_ file: String, _ phrase: String, line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), line: line) { error in
            guard let e = error as? ModelLoadError else { return XCTFail("not a ModelLoadError: \(error)", line: line) }
            XCTAssertTrue(e.path.hasSuffix(file), "path \(e.path) does not end with \(file)", line: line)
            XCTAssertTrue(e.problem.contains(phrase), "problem '\(e.problem)' does not mention '\(phrase)'", line: line)
        }
    }

    nonisolated(unsafe) static let config: [String: Any] = ["model_max_length": 77, "pad_token": "!", "tokenizer_class": "CLIPTokenizer"]

    func testBrokenTokenizerFolders() throws {
        typealias T = CLIPTokenizerTests
        assertRefused("no-such-folder", "is not a directory") { _ = try CLIPTokenizer(folder: "/tmp/no-such-folder") }
        var d = try T.makeFolder(config: nil, specialMap: nil)
        assertRefused("tokenizer_config.json", "is missing") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: Self.config, specialMap: nil)
        try FileManager.default.removeItem(atPath: d + "/vocab.json")
        assertRefused("vocab.json", "cannot be read") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: Self.config, specialMap: nil)
        try FileManager.default.removeItem(atPath: d + "/merges.txt")
        assertRefused("merges.txt", "cannot be read") { _ = try CLIPTokenizer(folder: d) }

        for (vocab, phrase) in [("{\"a\": 1, \"b\": }", "expected a non-negative integer id at byte 14"),
                                ("{\"a\": 1", "unexpected end of file"), ("[1, 2]", "expected '{'"),
                                ("{\"a\": 1.5}", "not an integer"), ("{\"a\": 1, \"a\": 2}", "appears twice"),
                                ("{\"a\": 1} x", "unexpected data after the object"), ("{}", "holds no tokens"),
                                ("{\"\\ud800\": 1}", "lone high surrogate"), ("{\"a\": 99999999999}", "larger than")] {
            d = try T.makeFolder(config: Self.config, specialMap: nil, vocab: vocab)
            assertRefused("vocab.json", phrase) { _ = try CLIPTokenizer(folder: d) }
        }
        d = try T.makeFolder(config: Self.config, specialMap: nil, merges: "#version: 0.2\ni n\nt h e\n")
        assertRefused("merges.txt", "line 3 has 3 fields") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: Self.config, specialMap: nil, merges: "#version: 0.2\n")
        assertRefused("merges.txt", "holds no merges") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: Self.config, specialMap: nil, merges: "#version: 0.2\ni n\nqq zz\n")
        assertRefused("merges.txt", "line 3 (qq zz)") { _ = try CLIPTokenizer(folder: d) }

        d = try T.makeFolder(config: ["model_max_length": 77, "pad_token": "<|pad|>"], specialMap: nil)
        assertRefused("tokenizer_config.json", "special token \"<|pad|>\" is not in vocab.json") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: ["pad_token": "!"], specialMap: nil)
        assertRefused("tokenizer_config.json", "model_max_length is missing") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: ["model_max_length": 1e30], specialMap: nil)
        assertRefused("tokenizer_config.json", "model_max_length") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: ["model_max_length": 77, "pad_token": ["content": "!", "lstrip": true]], specialMap: nil)
        assertRefused("tokenizer_config.json", "pad_token sets lstrip: true") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: ["model_max_length": 77, "pad_token": 5], specialMap: nil)
        assertRefused("tokenizer_config.json", "pad_token is neither a token string") { _ = try CLIPTokenizer(folder: d) }
        d = try T.makeFolder(config: Self.config, specialMap: nil)
        try "{not json".write(toFile: d + "/special_tokens_map.json", atomically: false, encoding: .utf8)
        assertRefused("special_tokens_map.json", "is not valid JSON") { _ = try CLIPTokenizer(folder: d) }
    }

    /// A copy of a golden text_encoder folder with its config changed by `edit`.
    func encoderFolder(_ edit: (inout [String: Any]) -> Void) throws -> String {
        let src = try CLIPTokenizerTests.pipelineFolder("lcm_tiny") + "/text_encoder"
        let d = Fixtures.tempDir("textenc")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: d + "/config.json"))
        try FileManager.default.createSymbolicLink(atPath: d + "/model.safetensors", withDestinationPath: src + "/model.safetensors")
        return d
    }

    func testBrokenTextEncoderFolders() throws {
        var d = try encoderFolder { _ in }
        XCTAssertNoThrow(try CLIPTextModel(folder: d))
        try FileManager.default.removeItem(atPath: d + "/config.json")
        assertRefused("config.json", "cannot be read") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["hidden_act"] = "relu" }
        assertRefused("config.json", "config key 'hidden_act': relu is not supported (supported: quick_gelu, gelu)") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["rope_theta"] = 10000 }
        assertRefused("config.json", "config key 'rope_theta': is not part of the supported CLIPTextModel subset") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["model_type"] = "t5" }
        assertRefused("config.json", "config key 'model_type'") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["num_attention_heads"] = 5 }
        assertRefused("config.json", "5 does not divide hidden_size 32") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["projection_dim"] = 999; $0["torch_dtype"] = "float16"; $0["_name_or_path"] = "x" }
        XCTAssertNoThrow(try CLIPTextModel(folder: d), "keys that do not change last_hidden_state are accepted")
        d = try encoderFolder { $0["hidden_size"] = 64 }
        assertRefused("model.safetensors", "has shape [49408, 32] but config.json needs [49408, 64]") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["num_hidden_layers"] = 1 }
        assertRefused("model.safetensors", "tensor(s) a 1-layer CLIPTextModel does not use") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { $0["num_hidden_layers"] = 3 }
        assertRefused("model.safetensors", "tensor encoder.layers.2.layer_norm1.weight is missing") { _ = try CLIPTextModel(folder: d) }
        d = try encoderFolder { _ in }
        try FileManager.default.removeItem(atPath: d + "/model.safetensors")
        assertRefused("model.safetensors", "is missing") { _ = try CLIPTextModel(folder: d) }
        try [UInt8](repeating: 7, count: 20).withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: d + "/model.safetensors")) }
        assertRefused("model.safetensors", "header length") { _ = try CLIPTextModel(folder: d) }

        // A non-finite weight, and keys under transformers 4.x's "text_model." prefix with its position_ids buffer.
        let src = try SafetensorsFile(path: try CLIPTokenizerTests.pipelineFolder("lcm_tiny") + "/text_encoder/model.safetensors")
        var w = SafetensorsWriter()
        for name in src.names { w.add("text_model." + name, try src.floats(name)) }
        w.add("text_model.embeddings.position_ids", int64: (0..<77).map { Int64($0) }, shape: [1, 77])
        try w.write(to: d + "/model.safetensors")
        let prefixed = try CLIPTextModel(folder: d)
        let plain = try CLIPTextModel(folder: try encoderFolder { _ in })
        XCTAssertEqual(try prefixed.forward(ids: [[49406, 320, 49407]]).data, try plain.forward(ids: [[49406, 320, 49407]]).data)
        var bad = try src.floats("final_layer_norm.bias")
        bad.data[3] = .nan
        w = SafetensorsWriter()
        for name in src.names { w.add(name, name == "final_layer_norm.bias" ? bad : try src.floats(name)) }
        try w.write(to: d + "/model.safetensors")
        assertRefused("model.safetensors", "tensor final_layer_norm.bias holds nan at index 3") { _ = try CLIPTextModel(folder: d) }
    }
}

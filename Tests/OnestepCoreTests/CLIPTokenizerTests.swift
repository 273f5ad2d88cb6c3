import Foundation
import Synchronization
import XCTest
@testable import OnestepCore

/// CLIPTokenizer against transformers 5's CLIPTokenizer: the golden pipeline folders (../shared/golden/*_tiny,
/// io.safetensors prompt_input_ids) and the hard cases of Golden/clip_tokenizer.json
/// (scripts/golden/make_tokenizer_golden.py), plus refusal of broken tokenizer folders.
final class CLIPTokenizerTests: XCTestCase {
    static let pipelineFolders = ["sd_turbo_tiny", "sdxs_tiny", "lcm_tiny", "tcd_tiny", "cfg_v_tiny"]

    static func pipelineFolder(_ name: String) throws -> String {
        let p = Fixtures.golden + "/" + name
        guard FileManager.default.fileExists(atPath: p + "/model_index.json") else {
            XCTFail("golden pipeline \(name) not found at \(p); set ONESTEP_GOLDEN to the shared/golden folder")
            throw CocoaError(.fileNoSuchFile)
        }
        return p
    }

    /// The prompts of io.safetensors' metadata and their ids (N, 77).
    static func goldenPrompts(_ dir: String) throws -> (prompts: [String], ids: [[Int]]) {
        let io = try SafetensorsFile(path: dir + "/io.safetensors")
        let prompts = try JSONSerialization.jsonObject(with: Data(io.metadata["prompts"]!.utf8)) as! [String]
        let (shape, values) = try io.integers("prompt_input_ids")
        XCTAssertEqual(shape, [prompts.count, 77])
        return (prompts, (0..<shape[0]).map { r in values[(r * shape[1])..<((r + 1) * shape[1])].map { Int($0) } })
    }

    func testGoldenPipelineTokenIds() throws {
        for name in Self.pipelineFolders {
            let dir = try Self.pipelineFolder(name)
            let tok = try CLIPTokenizer(folder: dir + "/tokenizer")
            let (prompts, expected) = try Self.goldenPrompts(dir)
            XCTAssertEqual(tok.maxLength, 77)
            for (p, ids) in zip(prompts, expected) {
                XCTAssertEqual(tok.encode(p), ids, "\(name): prompt \(p.debugDescription)")
            }
            XCTAssertEqual(tok.encode(prompts), expected, "\(name): batch encode")
        }
    }

    func testPadTokenPerFamily() throws {
        // SD 2.x / Turbo pad with "!" (id 0), SD 1.x / SDXS-DreamShaper with <|endoftext|>.
        let turbo = try CLIPTokenizer(folder: try Self.pipelineFolder("sd_turbo_tiny") + "/tokenizer")
        let sdxs = try CLIPTokenizer(folder: try Self.pipelineFolder("sdxs_tiny") + "/tokenizer")
        XCTAssertEqual([turbo.bosId, turbo.eosId, turbo.padId], [49406, 49407, 0])
        XCTAssertEqual([sdxs.bosId, sdxs.eosId, sdxs.padId], [49406, 49407, 49407])
        XCTAssertEqual(turbo.vocabularySize, 49408)
    }

    /// Writes a tokenizer folder: the shared CLIP vocabulary (symlinked) and the given JSON files.
    static func makeFolder(config: Any?, specialMap: Any?, vocab: String? = nil, merges: String? = nil) throws -> String {
        let src = try pipelineFolder("sd_turbo_tiny") + "/tokenizer"
        let d = Fixtures.tempDir("cliptok")
        let fm = FileManager.default
        if let vocab { try vocab.write(toFile: d + "/vocab.json", atomically: false, encoding: .utf8) } else {
            try fm.createSymbolicLink(atPath: d + "/vocab.json", withDestinationPath: src + "/vocab.json")
        }
        if let merges { try merges.write(toFile: d + "/merges.txt", atomically: false, encoding: .utf8) } else {
            try fm.createSymbolicLink(atPath: d + "/merges.txt", withDestinationPath: src + "/merges.txt")
        }
        if let config { try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: d + "/tokenizer_config.json")) }
        if let specialMap { try JSONSerialization.data(withJSONObject: specialMap).write(to: URL(fileURLWithPath: d + "/special_tokens_map.json")) }
        return d
    }

    func testTransformersHardCases() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Golden/clip_tokenizer.json"
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        let texts = golden["texts"] as! [String]
        let variants = golden["variants"] as! [[String: Any]]
        XCTAssertGreaterThanOrEqual(texts.count, 40)
        XCTAssertGreaterThanOrEqual(variants.count, 8)
        for v in variants {
            let name = v["name"] as! String
            let map = v["special_tokens_map"].flatMap { $0 is NSNull ? nil : $0 }
            let dir = try Self.makeFolder(config: v["tokenizer_config"]!, specialMap: map)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let tok = try CLIPTokenizer(folder: dir)
            XCTAssertEqual(tok.padId, v["pad_token_id"] as? Int, "\(name): pad id")
            XCTAssertEqual(tok.maxLength, v["model_max_length"] as? Int, "\(name): model_max_length")
            let expected = (v["ids"] as! [[Any]]).map { $0.map { JSONValues.integer($0)! } }
            var wrong = 0
            for (t, ids) in zip(texts, expected) {
                let got = tok.encode(t)
                if got != ids { wrong += 1 }
                XCTAssertEqual(got, ids, "\(name): text \(t.debugDescription)")
            }
            XCTAssertEqual(wrong, 0, "\(name): \(wrong) of \(texts.count) texts differ from transformers")
        }
    }

    func testTruncationKeepsEndToken() throws {
        let tok = try CLIPTokenizer(folder: try Self.pipelineFolder("sdxs_tiny") + "/tokenizer")
        let ids = tok.encode(String(repeating: "cat ", count: 200))
        XCTAssertEqual(ids.count, 77)
        XCTAssertEqual(ids.first, 49406)
        XCTAssertEqual(ids.last, 49407)
        XCTAssertEqual(Set(ids[1..<76]).count, 1, "75 copies of the same word token")
        // contentIds stops early but gives the same prefix as an untruncated run.
        XCTAssertEqual(tok.contentIds(String(repeating: "cat ", count: 200), limit: 75), Array(tok.contentIds(String(repeating: "cat ", count: 200)).prefix(75)))
    }

    /// One tokenizer shared by several threads (the BPE cache behind a Mutex) gives every thread the ids a fresh
    /// tokenizer gives, while the cache fills and after.
    func testConcurrentEncodingMatchesSerial() throws {
        let dir = try Self.pipelineFolder("sd_turbo_tiny") + "/tokenizer"
        let shared = try CLIPTokenizer(folder: dir)
        let prompts = CLIPTextBench.prompts(count: 400)
        let expected = try CLIPTokenizer(folder: dir).encode(prompts)
        let results = Mutex<[Int: [[Int]]]>([:])
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            // Each thread walks the prompts from another starting point so they race on different pieces.
            let order = (0..<prompts.count).map { ($0 + t * 97) % prompts.count }
            var got = [[Int]](repeating: [], count: prompts.count)
            for i in order { got[i] = shared.encode(prompts[i]) }
            results.withLock { $0[t] = got }
        }
        for t in 0..<4 { XCTAssertEqual(results.withLock { $0[t] }, expected, "thread \(t)") }
    }

    /// The BPE merge loop against the original CLIP algorithm (openai/CLIP simple_tokenizer.py bpe(): merge every
    /// occurrence of the lowest-ranked bigram, left to right) on strings, for words of the golden prompts and
    /// random byte strings.
    func testBPEMatchesReferenceAlgorithm() throws {
        let tok = try CLIPTokenizer(folder: try Self.pipelineFolder("sd_turbo_tiny") + "/tokenizer")
        let dir = try Self.pipelineFolder("sd_turbo_tiny") + "/tokenizer"
        let vocabJSON = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/vocab.json"))) as! [String: Int]
        let mergeLines = try String(contentsOfFile: dir + "/merges.txt", encoding: .utf8).split(separator: "\n").dropFirst()
        var ranks: [String: Int] = [:]
        for (r, l) in mergeLines.enumerated() { ranks[String(l)] = r }
        let chars = BytePairEncoding.byteCharacters.map { String($0) }

        func referenceBPE(_ bytes: [UInt8]) -> [Int] {
            var word = bytes.map { chars[Int($0)] }
            word[word.count - 1] += "</w>"
            while word.count > 1 {
                var best: (rank: Int, pair: (String, String))? = nil
                for i in 0..<(word.count - 1) {
                    if let r = ranks[word[i] + " " + word[i + 1]], r < (best?.rank ?? .max) { best = (r, (word[i], word[i + 1])) }
                }
                guard let b = best else { break }
                var merged: [String] = []
                var i = 0
                while i < word.count {
                    if i < word.count - 1, word[i] == b.pair.0, word[i + 1] == b.pair.1 {
                        merged.append(word[i] + word[i + 1])
                        i += 2
                    } else {
                        merged.append(word[i])
                        i += 1
                    }
                }
                word = merged
            }
            return word.map { vocabJSON[$0]! }
        }

        var words = ["photograph", "astronaut", "aaaaaaaaaaaaaaaaaaaaaaa", "supercalifragilisticexpialidocious",
                     "caf\u{e9}", "\u{4e2d}\u{6587}", "\u{1F431}\u{1F680}", "!!!", "...", "mississippi", "lollol"]
        var rng = TestRandom(7)
        for _ in 0..<300 {
            let n = 1 + rng.int(12)
            // Mostly lowercase ASCII letters, sometimes any byte: exercises shifted byte symbols too.
            words.append(String(decoding: (0..<n).map { _ in rng.int(4) == 0 ? UInt8(rng.int(256)) : UInt8(97 + rng.int(26)) }, as: UTF8.self))
        }
        var checked = 0
        for w in words {
            for piece in CLIPTextSplitter.pieces(CLIPTextSplitter.normalize(w)[...]) {
                XCTAssertEqual(tok.bpe.merge(piece).map { Int($0) }, referenceBPE(piece), "piece \(String(decoding: piece, as: UTF8.self).debugDescription)")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 300)
    }
}

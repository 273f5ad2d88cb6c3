// CLIP's tokenizer as transformers 5 runs it (CLIPTokenizer, tokenizers backend), loaded from a diffusers
// pipeline's tokenizer/ folder: vocab.json + merges.txt + tokenizer_config.json (+ special_tokens_map.json).
// tokenizer.json, when present, is not read: real SD repositories ship only the four files above, and transformers
// builds the same tokenizer from them (checked against it in CLIPTokenizerTests).
//
// encode(text) = [bos] + the first model_max_length - 2 content ids + [eos], padded to model_max_length with the
// pad token (transformers: tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True),
// RobertaProcessing post-processor). Content ids: the special tokens (bos, eos, unk, pad and any
// added_tokens_decoder entry) are cut out of the text first, leftmost-longest; the rest is normalized, split and
// byte-level BPE encoded (CLIPTextSplitter, BytePairEncoding). So with pad "!" (SD 2.x, SD-Turbo) a "!" in the text
// is the special token 0 on its own, "!!" is [0, 0] rather than the BPE token "!!</w>" — as transformers does.
import Foundation

public final class CLIPTokenizer: Sendable {
    /// A token cut out of the text before BPE. `normalized` ones are matched in the normalized text (after NFC,
    /// whitespace folding and lowercasing: "<|ENDOFTEXT|>" then matches "<|endoftext|>"), the others in the raw text.
    public struct AddedToken: Sendable, Equatable {
        public var content: String
        public var id: Int
        public var normalized: Bool
    }

    public let maxLength: Int
    public let bosId: Int, eosId: Int, padId: Int
    public let vocabularySize: Int
    public let addedTokens: [AddedToken]
    let bpe: BytePairEncoding
    let rawPatterns: [(bytes: [UInt8], id: Int)]
    let normalizedPatterns: [(scalars: [Unicode.Scalar], id: Int)]

    /// Loads `folder` (a pipeline's tokenizer/ directory).
    /// - Throws: ModelLoadError naming the file and what is wrong: a missing or unreadable file, malformed JSON in
    ///   vocab.json (with the byte offset), a malformed merges.txt line, a merge whose symbols are not in the
    ///   vocabulary, a special token absent from the vocabulary, a missing or unusable model_max_length.
    public init(folder: String) throws {
        let vocabPath = folder + "/vocab.json", mergesPath = folder + "/merges.txt"
        let configPath = folder + "/tokenizer_config.json", mapPath = folder + "/special_tokens_map.json"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw ModelLoadError(path: folder, problem: "is not a directory; pass the pipeline's tokenizer/ folder (vocab.json, merges.txt, tokenizer_config.json)")
        }
        guard let config = try TokenizerFiles.readJSONObject(path: configPath) else {
            throw ModelLoadError(path: configPath, problem: "is missing; a CLIP tokenizer folder needs tokenizer_config.json (model_max_length, special tokens)")
        }
        let vocab = try TokenizerFiles.readVocab(path: vocabPath)
        vocabularySize = vocab.idLimit

        guard let lengthValue = config["model_max_length"], let length = JSONValues.integer(lengthValue), (2...4096).contains(length) else {
            throw ModelLoadError(path: configPath, problem: "model_max_length \(config["model_max_length"].map { "\($0)" } ?? "is missing"); it must be an integer from 2 to 4096 (77 for CLIP)")
        }
        maxLength = length

        // Special tokens: tokenizer_config.json, overridden by special_tokens_map.json unless the config has an
        // added_tokens_decoder (transformers 5 tokenization_utils_base.from_pretrained reads the map only then).
        var specials: [String: (content: String, normalized: Bool)] = [
            "bos_token": ("<|startoftext|>", false), "eos_token": ("<|endoftext|>", false),
            "unk_token": ("<|endoftext|>", false), "pad_token": ("<|endoftext|>", false),
        ]
        let keys = ["bos_token", "eos_token", "unk_token", "pad_token"]
        for k in keys { if let v = config[k], !(v is NSNull) { specials[k] = try Self.addedToken(v, key: k, path: configPath) } }
        var declared: [(content: String, normalized: Bool, id: Int?)] = []
        if let decoder = config["added_tokens_decoder"] {
            guard let d = decoder as? [String: Any] else {
                throw ModelLoadError(path: configPath, problem: "added_tokens_decoder is not an object of id -> token")
            }
            for (idText, v) in d.sorted(by: { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }) {
                guard let id = Int(idText) else {
                    throw ModelLoadError(path: configPath, problem: "added_tokens_decoder key \(idText.debugDescription) is not an integer id")
                }
                let t = try Self.addedToken(v, key: "added_tokens_decoder.\(idText)", path: configPath)
                declared.append((t.content, t.normalized, id))
            }
        } else if let map = try TokenizerFiles.readJSONObject(path: mapPath) {
            for k in keys { if let v = map[k], !(v is NSNull) { specials[k] = try Self.addedToken(v, key: k, path: mapPath) } }
        }
        for k in keys { declared.append((specials[k]!.content, specials[k]!.normalized, nil)) }

        // One entry per content; a later declaration sets the normalized flag (transformers adds bos, eos, unk,
        // pad in that order and the last AddedToken of a content wins).
        var added: [AddedToken] = []
        for t in declared {
            guard let id = vocab.find(Array(t.content.utf8)) else {
                throw ModelLoadError(path: configPath, problem: "special token \(t.content.debugDescription) is not in vocab.json; only tokens of the vocabulary are supported")
            }
            if let given = t.id, given != Int(id) {
                throw ModelLoadError(path: configPath, problem: "added_tokens_decoder gives \(t.content.debugDescription) id \(given) but vocab.json gives \(id)")
            }
            if let i = added.firstIndex(where: { $0.content == t.content }) { added[i].normalized = t.normalized } else {
                added.append(AddedToken(content: t.content, id: Int(id), normalized: t.normalized))
            }
        }
        addedTokens = added
        func idOf(_ k: String) -> Int { added.first { $0.content == specials[k]!.content }!.id }
        bosId = idOf("bos_token")
        eosId = idOf("eos_token")
        padId = idOf("pad_token")
        rawPatterns = added.filter { !$0.normalized }.map { (Array($0.content.utf8), $0.id) }
        normalizedPatterns = added.filter(\.normalized).map { (CLIPTextSplitter.normalize($0.content), $0.id) }

        let merges = try TokenizerFiles.readMerges(path: mergesPath, vocab: vocab)
        bpe = try BytePairEncoding(vocab: vocab, merges: merges.table, unknownToken: Array(specials["unk_token"]!.content.utf8),
                                   vocabPath: vocabPath)
    }

    /// A special token value: a string, or an AddedToken dict {"content", "normalized", "lstrip", ...}.
    static func addedToken(_ v: Any, key: String, path: String) throws -> (content: String, normalized: Bool) {
        if let s = v as? String, !s.isEmpty { return (s, false) }
        guard let d = v as? [String: Any], let content = d["content"] as? String, !content.isEmpty else {
            throw ModelLoadError(path: path, problem: "\(key) is neither a token string nor an object with a \"content\" string")
        }
        for flag in ["lstrip", "rstrip", "single_word"] where d[flag].flatMap(JSONValues.bool) == true {
            throw ModelLoadError(path: path, problem: "\(key) sets \(flag): true, which is not supported (CLIP tokenizers use false)")
        }
        return (content, d["normalized"].flatMap(JSONValues.bool) ?? false)
    }

    /// Token ids of one prompt: exactly `maxLength` of them (bos, content truncated to maxLength - 2, eos, padding).
    public func encode(_ text: String) -> [Int] {
        var ids = [bosId]
        ids.reserveCapacity(maxLength)
        ids += contentIds(text, limit: maxLength - 2)
        ids.append(eosId)
        while ids.count < maxLength { ids.append(padId) }
        return ids
    }

    /// encode for each prompt: (texts.count, maxLength) ids, row-major.
    public func encode(_ texts: [String]) -> [[Int]] { texts.map { encode($0) } }

    /// The ids of `text` without bos/eos/padding, stopping once `limit` ids are made (the rest would be truncated).
    public func contentIds(_ text: String, limit: Int = .max) -> [Int] {
        var out: [Int] = []
        let utf8 = Array(text.utf8)
        var start = 0
        for (range, id) in Self.matches(utf8[...], rawPatterns) {
            encodeNormalizing(utf8[start..<range.lowerBound], into: &out, limit: limit)
            if out.count >= limit { break }
            out.append(id)
            start = range.upperBound
        }
        if out.count < limit { encodeNormalizing(utf8[start...], into: &out, limit: limit) }
        if out.count > limit { out.removeLast(out.count - limit) }
        return out
    }

    /// Normalizes a raw segment, cuts out normalized added tokens, splits and BPE-encodes the rest.
    func encodeNormalizing(_ segment: ArraySlice<UInt8>, into out: inout [Int], limit: Int) {
        guard !segment.isEmpty, out.count < limit else { return }
        let normalized = CLIPTextSplitter.normalize(String(decoding: segment, as: UTF8.self))
        var start = 0
        for (range, id) in Self.matches(normalized[...], normalizedPatterns) {
            encodePieces(normalized[start..<range.lowerBound], into: &out, limit: limit)
            if out.count >= limit { return }
            out.append(id)
            start = range.upperBound
        }
        encodePieces(normalized[start...], into: &out, limit: limit)
    }

    func encodePieces(_ s: ArraySlice<Unicode.Scalar>, into out: inout [Int], limit: Int) {
        for piece in CLIPTextSplitter.pieces(s) {
            if out.count >= limit { return }
            bpe.encode(piece: piece, into: &out)
        }
    }

    /// Non-overlapping occurrences of the patterns, leftmost first and the longest at a position (the
    /// aho-corasick MatchKind::LeftmostLongest tokenizers' AddedVocabulary uses).
    static func matches<T: Equatable>(_ s: ArraySlice<T>, _ patterns: [([T], Int)]) -> [(Range<Int>, Int)] {
        guard !patterns.isEmpty else { return [] }
        var out: [(Range<Int>, Int)] = []
        var i = s.startIndex
        while i < s.endIndex {
            var best: (len: Int, id: Int)? = nil
            for (p, id) in patterns where p.count > (best?.len ?? 0) && i + p.count <= s.endIndex {
                var ok = true
                for k in 0..<p.count where s[i + k] != p[k] { ok = false; break }
                if ok { best = (p.count, id) }
            }
            if let b = best {
                out.append((i..<(i + b.len), b.id))
                i += b.len
            } else {
                i += 1
            }
        }
        return out
    }
}

// Reading a CLIP tokenizer folder as transformers saves it: vocab.json (token -> id), merges.txt (ranked BPE
// merges, "#version" header) and tokenizer_config.json / special_tokens_map.json (special tokens, max length).
//
// vocab.json is read by a small JSON object parser of our own rather than JSONSerialization: the file is a flat
// {"token": id, ...} map of 49408 entries and the dedicated parser is several times faster and can say at which
// byte a malformed file goes wrong. Every error names the file and the reason (ModelLoadError).
import Foundation

enum TokenizerFiles {
    /// vocab.json: a JSON object of string keys and non-negative integer ids. Refuses duplicate tokens, ids
    /// outside 0..<2^31, trailing data and empty vocabularies.
    static func readVocab(path: String) throws -> ByteStringTable {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be read; a CLIP tokenizer folder needs vocab.json (token -> id map)")
        }
        let bytes = [UInt8](data)
        // Checked once for the whole file; \u escapes are turned into valid UTF-8 by the parser (no lone surrogates).
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw ModelLoadError(path: path, problem: "is not valid UTF-8")
        }
        var parser = FlatJSONObjectParser(bytes: bytes, path: path)
        let table = try parser.parseStringToIntObject()
        guard table.count > 0 else { throw ModelLoadError(path: path, problem: "holds no tokens") }
        return table
    }

    /// merges.txt: an optional "#version" first line, then one merge per line, two space-separated symbols, rank =
    /// order. Blank lines are skipped (as transformers does); a line with another number of fields is refused, and
    /// so is a merge whose symbols or result are not in the vocabulary (tokenizers refuses these too:
    /// MergeTokenOutOfVocabulary). A later duplicate of a pair replaces the earlier rank (tokenizers' HashMap collect).
    /// - Returns: (left id << 32 | right id) -> (rank << 32 | merged id), and the number of merge lines.
    static func readMerges(path: String, vocab: ByteStringTable) throws -> (table: [UInt64: UInt64], count: Int) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be read; a CLIP tokenizer folder needs merges.txt (ranked BPE merges)")
        }
        let bytes = [UInt8](data)
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw ModelLoadError(path: path, problem: "is not valid UTF-8")
        }
        var table = [UInt64: UInt64](minimumCapacity: bytes.count / 10)
        var rank = 0, lineNumber = 0, start = 0
        var joined: [UInt8] = []
        try bytes.withUnsafeBufferPointer { all in
            while start < all.count {
                var end = start
                while end < all.count && all[end] != 0x0A { end += 1 }
                lineNumber += 1
                var lineEnd = end
                if lineEnd > start && all[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                let line = UnsafeBufferPointer(rebasing: all[start..<lineEnd])
                start = end + 1
                if lineNumber == 1 && line.starts(with: "#version".utf8) { continue }
                if line.isEmpty { continue }
                // Fields separated by runs of spaces (str.split() in transformers); the first two kept.
                var fields = (0..<0, 0..<0), fieldCount = 0
                var i = 0
                while i < line.count {
                    while i < line.count && line[i] == 0x20 { i += 1 }
                    let f = i
                    while i < line.count && line[i] != 0x20 { i += 1 }
                    guard i > f else { continue }
                    if fieldCount == 0 { fields.0 = f..<i } else if fieldCount == 1 { fields.1 = f..<i }
                    fieldCount += 1
                }
                guard fieldCount == 2 else {
                    throw ModelLoadError(path: path, problem: "line \(lineNumber) has \(fieldCount) fields; each merge line is two symbols separated by a space (\"t h\")")
                }
                let left = UnsafeBufferPointer(rebasing: line[fields.0]), right = UnsafeBufferPointer(rebasing: line[fields.1])
                joined.removeAll(keepingCapacity: true)
                joined.append(contentsOf: left)
                joined.append(contentsOf: right)
                func id(_ p: UnsafeBufferPointer<UInt8>) throws -> Int32 {
                    guard let v = vocab.find(p) else {
                        throw ModelLoadError(path: path, problem: "line \(lineNumber) (\(String(decoding: line, as: UTF8.self))) uses or makes \(String(decoding: p, as: UTF8.self).debugDescription), which is not in vocab.json; vocab.json and merges.txt do not belong together")
                    }
                    return v
                }
                let a = try id(left), b = try id(right), merged = try joined.withUnsafeBufferPointer { try id($0) }
                table[BytePairEncoding.key(a, b)] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merged))
                rank += 1
            }
        }
        guard rank > 0 else { throw ModelLoadError(path: path, problem: "holds no merges") }
        return (table, rank)
    }

    /// A JSON file as a dictionary; nil when the file does not exist.
    static func readJSONObject(path: String) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelLoadError(path: path, problem: "cannot be read (is it a readable file?)")
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw ModelLoadError(path: path, problem: "is not valid JSON (\(error.localizedDescription))")
        }
        guard let dict = json as? [String: Any] else { throw ModelLoadError(path: path, problem: "is not a JSON object") }
        return dict
    }
}

/// Parses exactly one JSON object whose values are all integers: {"key": 123, ...}. Whitespace per RFC 8259,
/// string escapes including \uXXXX surrogate pairs. Keys are returned as UTF-8 bytes.
struct FlatJSONObjectParser {
    let bytes: [UInt8]
    let path: String
    var i = 0

    init(bytes: [UInt8], path: String) {
        self.bytes = bytes
        self.path = path
    }

    func fail(_ what: String) -> ModelLoadError {
        ModelLoadError(path: path, problem: "is not a JSON object of token -> id: \(what) at byte \(i)")
    }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    mutating func expect(_ c: UInt8, _ what: String) throws {
        skipSpace()
        guard i < bytes.count, bytes[i] == c else { throw fail("expected \(what)") }
        i += 1
    }

    mutating func parseStringToIntObject() throws -> ByteStringTable {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { i = 3 }  // a UTF-8 byte order mark
        try expect(UInt8(ascii: "{"), "'{'")
        var table = ByteStringTable(expectedCount: bytes.count / 16, expectedBytes: bytes.count / 2)
        var key: [UInt8] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1 } else {
            while true {
                skipSpace()
                let keyStart = i
                key.removeAll(keepingCapacity: true)
                try parseString(into: &key)
                try expect(UInt8(ascii: ":"), "':' after a key")
                skipSpace()
                let value = try parseId()
                let fresh = key.withUnsafeBufferPointer { table.insert($0, id: value) }
                guard fresh else {
                    i = keyStart
                    throw ModelLoadError(path: path, problem: "token \(String(decoding: key, as: UTF8.self).debugDescription) appears twice (second at byte \(keyStart))")
                }
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end of file") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; break }
                throw fail("expected ',' or '}'")
            }
        }
        skipSpace()
        guard i == bytes.count else { throw fail("unexpected data after the object") }
        return table
    }

    mutating func parseId() throws -> Int32 {
        let start = i
        var v: Int64 = 0
        while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
            v = v * 10 + Int64(bytes[i] - 0x30)
            guard v <= Int64(Int32.max) else { throw fail("id larger than \(Int32.max)") }
            i += 1
        }
        guard i > start else { throw fail("expected a non-negative integer id") }
        if i < bytes.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[i]) {
            throw fail("id is not an integer")
        }
        return Int32(v)
    }

    mutating func parseString(into out: inout [UInt8]) throws {
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
        i += 1
        while true {
            guard i < bytes.count else { throw fail("unterminated string") }
            let c = bytes[i]
            i += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw fail("control character inside a string") }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard i < bytes.count else { throw fail("unterminated escape") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code) {
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone high surrogate \\u\(String(code, radix: 16))")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("bad low surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(code) {
                    throw fail("lone low surrogate")
                }
                out += Array(String(Character(Unicode.Scalar(code)!)).utf8)
            default: throw fail("unknown escape \\\(Character(Unicode.Scalar(e)))")
            }
        }
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("bad hex digit in \\u escape")
            }
            v = v * 16 + d
            i += 1
        }
        return v
    }
}

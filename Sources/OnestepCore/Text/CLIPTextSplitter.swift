// Normalization and pre-tokenization of transformers 5's CLIPTokenizer (tokenization_clip.py, tokenizers backend):
//
//   normalizer:    NFC, then Replace(Regex(r"\s+"), " "), then Lowercase
//   pre-tokenizer: Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
//                        behavior="removed", invert=True)   -> keeps the matches, drops what lies between (spaces)
//                  then ByteLevel(add_prefix_space=False), whose use_regex=True splits each piece again with GPT-2's
//                  pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// We match the tokenizers (Rust, Oniguruma regex) behaviour, not the older slow tokenizer: no ftfy fixing, no
// whitespace stripping beyond the above. Both patterns are matched by hand here (no NSRegularExpression), on
// Unicode scalars, with these classes:
//   \s    White_Space (Oniguruma's Unicode \s: U+0009-000D, 0020, 0085, 00A0, 1680, 2000-200A, 2028, 2029, 202F,
//         205F, 3000) = Unicode.Scalar.Properties.isWhitespace
//   \p{L} general categories Lu Ll Lt Lm Lo;  \p{N} Nd Nl No  (Swift's Unicode tables; a character assigned in a
//         newer Unicode version than Oniguruma's may be classed differently)
// Lowercase maps scalar by scalar with the full mapping (tokenizers' NormalizedString::lowercase calls Rust's
// char::to_lowercase per char: "İ" -> "i̇", and "Σ" -> "σ" even at the end of a word).
//
// The GPT-2 split only changes pieces that mix letters and punctuation, which the CLIP split makes only for the
// literal "<|startoftext|>" / "<|endoftext|>" (e.g. from "<|ENDOFTEXT|>" lowercased): those become "<|", the
// word and "|>". It is applied to every piece all the same, so the code follows the pipeline step by step.
import Foundation

enum CLIPTextSplitter {
    enum CharClass { case letter, number, space, other }

    @inline(__always)
    static func charClass(_ s: Unicode.Scalar) -> CharClass {
        if s.value < 0x80 {  // ASCII fast path
            let v = s.value
            if (v >= 0x61 && v <= 0x7A) || (v >= 0x41 && v <= 0x5A) { return .letter }
            if v >= 0x30 && v <= 0x39 { return .number }
            if v == 0x20 || (v >= 0x09 && v <= 0x0D) { return .space }
            return .other
        }
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// NFC, every run of whitespace to one space, lowercase (full mapping, scalar by scalar).
    static func normalize(_ text: String) -> [Unicode.Scalar] {
        // Plain ASCII is already NFC; skip Foundation's normalization (an NSString round trip) for it.
        let nfc = text.utf8.allSatisfy({ $0 < 0x80 }) ? text : text.precomposedStringWithCanonicalMapping
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(nfc.unicodeScalars.count)
        var inSpace = false
        for s in nfc.unicodeScalars {
            if charClass(s) == .space {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            if s.value < 0x80 {
                out.append(s.value >= 0x41 && s.value <= 0x5A ? Unicode.Scalar(s.value + 32)! : s)
            } else {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return out
    }

    static let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }
    static let specialLiterals: [[Unicode.Scalar]] = ["<|startoftext|>", "<|endoftext|>"].map { Array($0.unicodeScalars) }

    @inline(__always)
    static func hasPrefix(_ s: ArraySlice<Unicode.Scalar>, at i: Int, _ p: [Unicode.Scalar]) -> Bool {
        guard i + p.count <= s.endIndex else { return false }
        for k in 0..<p.count where s[i + k] != p[k] { return false }
        return true
    }

    /// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at i, or 0.
    @inline(__always)
    static func contractionLength(_ s: ArraySlice<Unicode.Scalar>, at i: Int) -> Int {
        guard s[i] == "'" else { return 0 }
        for c in contractions where hasPrefix(s, at: i + 1, c) { return 1 + c.count }
        return 0
    }

    /// The CLIP split of normalized text, then GPT-2's split of each piece; pieces as UTF-8 bytes, in order.
    static func pieces(_ s: ArraySlice<Unicode.Scalar>) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var i = s.startIndex
        while i < s.endIndex {
            var end = i
            if let lit = specialLiterals.first(where: { hasPrefix(s, at: i, $0) }) {
                end = i + lit.count
            } else if case let n = contractionLength(s, at: i), n > 0 {
                end = i + n
            } else {
                switch charClass(s[i]) {
                case .letter:
                    while end < s.endIndex, charClass(s[end]) == .letter { end += 1 }
                case .number:
                    end = i + 1  // [\p{N}]: one digit per piece
                case .other:
                    while end < s.endIndex, charClass(s[end]) == .other { end += 1 }
                case .space:
                    i += 1  // not matched: removed
                    continue
                }
            }
            gpt2Split(s[i..<end], into: &out)
            i = end
        }
        return out
    }

    /// GPT-2's pattern on a piece that holds no whitespace: contractions, letter runs, number runs, other runs.
    static func gpt2Split(_ s: ArraySlice<Unicode.Scalar>, into out: inout [[UInt8]]) {
        var i = s.startIndex
        while i < s.endIndex {
            var end: Int
            let n = contractionLength(s, at: i)
            if n > 0 { end = i + n } else {
                let c = charClass(s[i])
                end = i + 1
                while end < s.endIndex, charClass(s[end]) == c { end += 1 }
            }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(end - i)
            for k in i..<end { UTF8.encode(s[k]) { bytes.append($0) } }
            out.append(bytes)
            i = end
        }
    }
}

// A strict JSON reader for safetensors headers. Foundation's JSONSerialization keeps the last of two equal keys
// and reads `256.0` and `256` as the same NSNumber, so a header with a duplicated tensor name or float offsets
// passed unnoticed; the format's reference reader (serde_json into `usize`) refuses both. This reader keeps
// integers exact (as their digits), numbers with a fraction or exponent apart, and reports duplicate keys.
import Foundation

/// A parsed JSON value. Objects keep their keys in file order.
indirect enum HeaderJSON: Equatable {
    case object([(String, HeaderJSON)])
    case array([HeaderJSON])
    case string(String)
    /// A number written without fraction or exponent, exactly as its digits say (nil when it does not fit an Int).
    case integer(Int?, text: String)
    /// A number with a fraction or exponent (`256.0`, `1e3`), which safetensors' integer fields refuse.
    case real(String)
    case bool(Bool)
    case null

    static func == (a: HeaderJSON, b: HeaderJSON) -> Bool {
        switch (a, b) {
        case (.object(let x), .object(let y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.array(let x), .array(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.integer(_, let x), .integer(_, let y)): return x == y
        case (.real(let x), .real(let y)): return x == y
        case (.bool(let x), .bool(let y)): return x == y
        case (.null, .null): return true
        default: return false
        }
    }

    /// How the value looks in an error message.
    var shortText: String {
        switch self {
        case .object: return "an object"
        case .array(let a): return "[" + a.map(\.shortText).joined(separator: ", ") + "]"
        case .string(let s): return "\"\(s.prefix(40))\""
        case .integer(_, let t), .real(let t): return t
        case .bool(let b): return "\(b)"
        case .null: return "null"
        }
    }
}

struct HeaderJSONError: Error {
    var offset: Int
    var problem: String
}

/// Recursive-descent parser over the header bytes (RFC 8259; depth limited so a hostile header cannot overflow
/// the stack).
struct HeaderJSONParser {
    private let b: [UInt8]
    private var i = 0
    private var depth = 0
    static let maxDepth = 64

    /// Parses one value followed only by whitespace (the reference writer pads headers with spaces).
    static func parse(_ bytes: [UInt8]) throws -> HeaderJSON {
        var p = HeaderJSONParser(b: bytes)
        p.skipSpace()
        let v = try p.value()
        p.skipSpace()
        guard p.i == bytes.count else { throw HeaderJSONError(offset: p.i, problem: "unexpected bytes after the JSON object") }
        return v
    }

    private init(b: [UInt8]) { self.b = b }

    private mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    private func fail(_ p: String) -> HeaderJSONError { HeaderJSONError(offset: i, problem: p) }

    private mutating func value() throws -> HeaderJSON {
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected character '\(Character(Unicode.Scalar(b[i])))'")
        }
    }

    private mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard i + w.count <= b.count, Array(b[i..<(i + w.count)]) == w else { throw fail("invalid literal") }
        i += w.count
    }

    private mutating func object() throws -> HeaderJSON {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw fail("nested more than \(Self.maxDepth) deep") }
        i += 1
        var members: [(String, HeaderJSON)] = []
        var seen = Set<String>()
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
        while true {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a key string") }
            let key = try string()
            guard seen.insert(key).inserted else { throw fail("key '\(key)' appears twice") }
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after key '\(key)'") }
            i += 1
            skipSpace()
            members.append((key, try value()))
            skipSpace()
            guard i < b.count else { throw fail("unexpected end inside an object") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            throw fail("expected ',' or '}'")
        }
    }

    private mutating func array() throws -> HeaderJSON {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw fail("nested more than \(Self.maxDepth) deep") }
        i += 1
        var items: [HeaderJSON] = []
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            skipSpace()
            items.append(try value())
            skipSpace()
            guard i < b.count else { throw fail("unexpected end inside an array") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("expected ',' or ']'")
        }
    }

    private mutating func string() throws -> String {
        i += 1  // opening quote
        var out = [UInt8]()
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                return s
            }
            guard c >= 0x20 else { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            guard i + 1 < b.count else { break }
            let e = b[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var unit = try hex4()
                if (0xD800..<0xDC00).contains(unit) {  // surrogate pair
                    guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { throw fail("lone surrogate") }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("lone surrogate") }
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(unit) {
                    throw fail("lone surrogate")
                }
                guard let scalar = Unicode.Scalar(unit) else { throw fail("invalid \\u escape") }
                out += Array(String(Character(scalar)).utf8)
            default: throw fail("invalid escape")
            }
        }
        throw fail("unterminated string")
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw fail("invalid \\u escape")
        }
        i += 4
        return v
    }

    private mutating func number() throws -> HeaderJSON {
        let start = i
        if b[i] == UInt8(ascii: "-") { i += 1 }
        func digits() -> Int {
            let s = i
            while i < b.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b[i]) { i += 1 }
            return i - s
        }
        let intStart = i
        guard digits() > 0 else { throw fail("invalid number") }
        guard !(b[intStart] == UInt8(ascii: "0") && i - intStart > 1) else { throw fail("number with a leading zero") }
        var isReal = false
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { throw fail("invalid number") }
            isReal = true
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw fail("invalid number") }
            isReal = true
        }
        let text = String(decoding: b[start..<i], as: UTF8.self)
        return isReal ? .real(text) : .integer(Int(text), text: text)
    }
}

/// Where JSON text that JSONSerialization refused goes wrong, for messages about config files: "at line L, column C
/// (PROBLEM)", 1-based, columns counted in bytes. Foundation's own error names no position on Linux ("The data is not
/// in the correct format"), which leaves a user searching a 60-line config.json for one stray comma.
enum JSONSyntax {
    static func whereInvalid(_ data: Data) -> String {
        let bytes = [UInt8](data)
        do { _ = try HeaderJSONParser.parse(bytes) } catch let e as HeaderJSONError {
            let before = bytes.prefix(e.offset)
            let line = before.filter { $0 == UInt8(ascii: "\n") }.count + 1
            let column = e.offset - (before.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0) + 1
            return "at line \(line), column \(column) (\(e.problem))"
        } catch {}
        return "(JSONSerialization refused it; this reader found no position)"
    }
}

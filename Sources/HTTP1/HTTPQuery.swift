// Query-string parsing: `a=1&b=two%20words&c` into decoded name/value pairs.

/// The decoded pairs of a query string, in order.
///
/// Decoding follows the `application/x-www-form-urlencoded` convention used by HTML forms and most clients
/// (WHATWG URL §5.1): `+` means space, `%XX` is a byte, and the bytes are read as UTF-8. A malformed escape such
/// as `%G1` is kept literally rather than rejected, so a sloppy client still reaches the handler, which decides.
public struct HTTPQuery: Sendable, Sequence {
    public typealias Item = (name: String, value: String)

    public let items: [Item]

    public init(parsing query: Substring) {
        var items: [Item] = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            if let equals = pair.firstIndex(of: "=") {
                let name = pair[..<equals]
                let value = pair[pair.index(after: equals)...]
                items.append((name: Self.percentDecoded(name), value: Self.percentDecoded(value)))
            } else {
                items.append((name: Self.percentDecoded(pair), value: ""))
            }
        }
        self.items = items
    }

    public func makeIterator() -> IndexingIterator<[Item]> { items.makeIterator() }

    /// The first value named `name` (case-sensitive, as query names are), or nil.
    public subscript(name: String) -> String? {
        items.first { $0.name == name }?.value
    }

    /// Every value named `name`, in order.
    public func values(for name: String) -> [String] {
        items.filter { $0.name == name }.map(\.value)
    }

    /// Decodes `%XX` escapes and `+` (as space). Invalid escapes stay as written; invalid UTF-8 becomes U+FFFD.
    public static func percentDecoded<S: StringProtocol>(_ text: S) -> String {
        let utf8 = Array(text.utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count)
        var index = 0
        while index < utf8.count {
            let byte = utf8[index]
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
                index += 1
            } else if byte == UInt8(ascii: "%"), index + 2 < utf8.count,
                      let high = hexValue(utf8[index + 1]), let low = hexValue(utf8[index + 2]) {
                bytes.append(high << 4 | low)
                index += 3
            } else {
                bytes.append(byte)
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

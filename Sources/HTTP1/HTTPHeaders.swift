// Header fields in arrival order with case-insensitive lookup (RFC 9110 §5.1: field names are case-insensitive).

/// An ordered list of header fields.
///
/// Order and duplicates are kept because they matter for some fields (RFC 9110 §5.3); lookups compare names ASCII
/// case-insensitively without allocating, which is what a request path does a handful of times per request.
public struct HTTPHeaders: Sendable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public typealias Field = (name: String, value: String)

    private var fields: [Field]

    public init() { fields = [] }
    public init(_ fields: [(String, String)]) { self.fields = fields.map { (name: $0.0, value: $0.1) } }
    public init(dictionaryLiteral elements: (String, String)...) { self.init(elements) }

    public var count: Int { fields.count }
    public var isEmpty: Bool { fields.isEmpty }

    public func makeIterator() -> IndexingIterator<[Field]> { fields.makeIterator() }

    /// The first value for `name`, or nil. Setting replaces every field of that name with one (or removes them all).
    public subscript(name: String) -> String? {
        get { fields.first { Self.namesEqual($0.name, name) }?.value }
        set {
            remove(name)
            if let newValue { fields.append((name: name, value: newValue)) }
        }
    }

    /// Every value for `name`, in arrival order.
    public func values(for name: String) -> [String] {
        fields.filter { Self.namesEqual($0.name, name) }.map(\.value)
    }

    public func contains(_ name: String) -> Bool {
        fields.contains { Self.namesEqual($0.name, name) }
    }

    /// Appends a field, keeping any existing ones of the same name.
    public mutating func add(name: String, value: String) {
        fields.append((name: name, value: value))
    }

    public mutating func remove(_ name: String) {
        fields.removeAll { Self.namesEqual($0.name, name) }
    }

    /// Whether a comma-separated field such as `Connection` lists `token`, case-insensitively (RFC 9110 §5.6.1).
    public func containsToken(_ token: String, in name: String) -> Bool {
        for value in values(for: name) {
            for element in value.split(separator: ",") where Self.namesEqual(trimmed(element), token) {
                return true
            }
        }
        return false
    }

    public var description: String {
        fields.map { "\($0.name): \($0.value)" }.joined(separator: ", ")
    }

    /// ASCII case-insensitive comparison; header names are tokens, so ASCII folding is the whole story.
    static func namesEqual<A: StringProtocol, B: StringProtocol>(_ a: A, _ b: B) -> Bool {
        let aBytes = a.utf8, bBytes = b.utf8
        guard aBytes.count == bBytes.count else { return false }
        for (x, y) in zip(aBytes, bBytes) where x != y {
            guard asciiLowercased(x) == asciiLowercased(y) else { return false }
        }
        return true
    }
}

@inline(__always)
func asciiLowercased(_ byte: UInt8) -> UInt8 {
    (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) ? byte | 0x20 : byte
}

/// Strips optional whitespace (SP / HTAB) from both ends (RFC 9110 §5.6.3, OWS).
func trimmed(_ text: Substring) -> Substring {
    var result = text
    while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
    while let last = result.last, last == " " || last == "\t" { result.removeLast() }
    return result
}

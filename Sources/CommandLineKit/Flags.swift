// The flag parser of the onestep executables (onestep-serve and onestep-distill; Tool.swift dispatches their
// sub-commands): `--name value`, `--name=value`, switches, repeated flags, `--help`/`-h` always. Every error says
// which flag was wrong and what it wanted, and an unknown flag names the closest known one ("did you mean
// --models?"). Errors are FlagError, which the executables turn into exit status 2.

/// A command line that cannot be run as written (exit status 2).
public struct FlagError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One flag a command accepts.
public struct FlagSpec: Sendable {
    public var name: String
    public var help: String
    public var defaultValue: String?
    public var isSwitch: Bool
    public init(_ name: String, _ help: String, default def: String? = nil, isSwitch: Bool = false) {
        self.name = name
        self.help = help
        self.defaultValue = def
        self.isSwitch = isSwitch
    }
}

/// A command line parsed against a command's specs: every value of every flag given, defaults for the others.
public struct ParsedFlags {
    var values: [String: [String]] = [:]
    let specs: [String: FlagSpec]
    static let help = FlagSpec("help", "show this help", isSwitch: true)

    public init(_ args: [String], specs: [FlagSpec]) throws {
        var known = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        known["help"] = known["help"] ?? Self.help
        self.specs = known
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "-h" && known["h"] == nil { values["help", default: []].append("true"); i += 1; continue }
            // A one-letter flag may be written -x (onestep-serve generate -n 16).
            let short = a.count == 2 && a.hasPrefix("-") && a != "--"
            guard (a.hasPrefix("--") && a.count > 2) || short else {
                throw FlagError("unexpected argument '\(a)'; flags start with -- (see --help)")
            }
            var name = String(a.dropFirst(short ? 1 : 2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let spec = known[name] else {
                let names = known.keys.sorted()
                let hint = closestMatch(to: name, among: names).map { "did you mean --\($0)? " } ?? ""
                throw FlagError("unknown flag --\(name); \(hint)known flags: \(names.map { "--" + $0 }.joined(separator: " "))")
            }
            if spec.isSwitch {
                values[name, default: []].append(value ?? "true")
            } else {
                if value == nil {
                    guard i + 1 < args.count else { throw FlagError("--\(name) needs a value (\(spec.help))") }
                    i += 1
                    value = args[i]
                }
                values[name, default: []].append(value!)
            }
            i += 1
        }
    }

    /// --help or -h was given.
    public var wantsHelp: Bool { isSet("help") }
    /// The last value given, else the default.
    public func string(_ name: String) -> String? { values[name]?.last ?? specs[name]?.defaultValue }
    /// Every value given, in order (a repeatable flag such as --model).
    public func all(_ name: String) -> [String] { values[name] ?? [] }
    /// The flag was given (a default does not count).
    public func has(_ name: String) -> Bool { values[name] != nil }
    /// A switch that was given (and not as --name=false).
    public func isSet(_ name: String) -> Bool { (values[name]?.last).map { $0 != "false" } ?? false }

    public func required(_ name: String) throws -> String {
        guard let v = string(name), !v.isEmpty else { throw FlagError("--\(name) is required (\(specs[name]?.help ?? ""))") }
        return v
    }

    /// The integer value or default, nil when neither; throws when out of `range`.
    public func int(_ name: String, range: ClosedRange<Int>) throws -> Int? {
        guard let s = string(name) else { return nil }
        guard let v = Int(s), range.contains(v) else {
            throw FlagError("--\(name) \(s): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    /// Like int(_:range:) for a flag that must have a value (given or default).
    public func requiredInt(_ name: String, _ range: ClosedRange<Int>) throws -> Int {
        _ = try required(name)
        return try int(name, range: range)!
    }

    public func double(_ name: String, range: ClosedRange<Double>) throws -> Double? {
        guard let s = string(name) else { return nil }
        guard let v = Double(s), v.isFinite, range.contains(v) else {
            throw FlagError("--\(name) \(s): expected a number in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    /// A Float flag that must have a value (given or default).
    public func requiredFloat(_ name: String, _ range: ClosedRange<Double>) throws -> Float {
        _ = try required(name)
        return Float(try double(name, range: range)!)
    }

    /// One of `allowed` (given or default).
    public func choice(_ name: String, _ allowed: [String]) throws -> String {
        let s = try required(name)
        guard allowed.contains(s) else {
            let hint = closestMatch(to: s, among: allowed).map { " (did you mean \($0)?)" } ?? ""
            throw FlagError("--\(name) \(s): expected one of \(allowed.joined(separator: ", "))\(hint)")
        }
        return s
    }

    /// Comma-separated integers, e.g. --batch 1,16.
    public func intList(_ name: String, range: ClosedRange<Int>) throws -> [Int]? {
        guard let s = string(name) else { return nil }
        let parts = s.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmed }
        let values = parts.compactMap { Int($0) }
        guard !parts.isEmpty, values.count == parts.count, values.allSatisfy({ range.contains($0) }) else {
            throw FlagError("--\(name) \(s): expected comma-separated integers in \(range.lowerBound)...\(range.upperBound)")
        }
        return values
    }

    /// Help text listing every flag with its default (and --help last).
    public static func usage(_ specs: [FlagSpec]) -> String {
        (specs.filter { $0.name != "help" } + [help]).map { s in
            let head = "  --\(s.name)" + (s.isSwitch ? "" : " VALUE")
            let pad = String(repeating: " ", count: max(2, 28 - head.count))
            return head + pad + s.help + (s.defaultValue.map { " (default: \($0))" } ?? "")
        }.joined(separator: "\n")
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo (at most a third
/// of the word's length, at least 2 edits allowed) or `word` is a prefix of exactly one candidate.
public func closestMatch(to word: String, among candidates: [String]) -> String? {
    let prefixed = candidates.filter { $0.hasPrefix(word) }
    if prefixed.count == 1, word.count >= 2 { return prefixed[0] }
    let scored = candidates.map { ($0, editDistance(word, $0)) }.sorted { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
    guard let best = scored.first, best.1 <= max(2, word.count / 3) else { return nil }
    return best.0
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two neighbours as 1 each (optimal
/// string alignment), so the common typo "--modles" is 1 from "--models" and 2 from "--model".
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    // d[i][j]: distance between the first i characters of a and the first j of b.
    var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in 0...a.count { d[i][0] = i }
    for j in 0...b.count { d[0][j] = j }
    for i in 1...a.count {
        for j in 1...b.count {
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
        }
    }
    return d[a.count][b.count]
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

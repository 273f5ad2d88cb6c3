// A small command-line flag parser shared by the onestep commands: `--name value`, `--name=value`,
// boolean switches, repeated flags. Every error says which flag was wrong and what it wanted.

public struct FlagError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

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

public struct ParsedFlags {
    var values: [String: [String]] = [:]
    let specs: [String: FlagSpec]

    public init(_ args: [String], specs: [FlagSpec]) throws {
        self.specs = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var i = 0
        while i < args.count {
            let a = args[i]
            guard a.hasPrefix("--") || (a.hasPrefix("-") && a.count == 2) else {
                throw FlagError("unexpected argument '\(a)'; flags start with --")
            }
            var name = String(a.drop(while: { $0 == "-" }))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let spec = self.specs[name] else {
                let known = specs.map { "--" + $0.name }.joined(separator: ", ")
                throw FlagError("unknown flag --\(name); known flags: \(known)")
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

    public func string(_ name: String) -> String? { values[name]?.last ?? specs[name]?.defaultValue }
    public func all(_ name: String) -> [String] { values[name] ?? [] }
    public func has(_ name: String) -> Bool { values[name] != nil }
    public func isSet(_ name: String) -> Bool { (values[name]?.last).map { $0 != "false" } ?? false }

    public func required(_ name: String) throws -> String {
        guard let v = string(name) else { throw FlagError("--\(name) is required (\(specs[name]?.help ?? ""))") }
        return v
    }

    public func int(_ name: String, range: ClosedRange<Int>) throws -> Int? {
        guard let s = string(name) else { return nil }
        guard let v = Int(s), range.contains(v) else {
            throw FlagError("--\(name) \(s): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    public func double(_ name: String, range: ClosedRange<Double>) throws -> Double? {
        guard let s = string(name) else { return nil }
        guard let v = Double(s), v.isFinite, range.contains(v) else {
            throw FlagError("--\(name) \(s): expected a number in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    /// Comma-separated integers, e.g. --batch 1,16.
    public func intList(_ name: String, range: ClosedRange<Int>) throws -> [Int]? {
        guard let s = string(name) else { return nil }
        let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let values = parts.compactMap { Int($0) }
        guard !parts.isEmpty, values.count == parts.count, values.allSatisfy({ range.contains($0) }) else {
            throw FlagError("--\(name) \(s): expected comma-separated integers in \(range.lowerBound)...\(range.upperBound)")
        }
        return values
    }

    /// Help text listing every flag with its default.
    public static func usage(_ specs: [FlagSpec]) -> String {
        specs.map { s in
            let head = "  --\(s.name)" + (s.isSwitch ? "" : " VALUE")
            let pad = String(repeating: " ", count: max(1, 28 - head.count))
            return head + pad + s.help + (s.defaultValue.map { " (default: \($0))" } ?? "")
        }.joined(separator: "\n")
    }
}

import Foundation

// Flag parsing for onestep-distill: `--name value` or `--name=value`, switches, per-command help. Every error
// names the flag and what it wanted; main turns it into exit code 2.
import Foundation

struct UsageError: Error, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

struct Flag {
    var name: String
    var help: String
    var defaultValue: String?
    var isSwitch = false
}

struct Command {
    var name: String
    var summary: String
    var flags: [Flag]

    var usage: String {
        var s = "usage: onestep-distill \(name) [flags]\n  \(summary)\n\nflags:\n"
        for f in flags + [Flag(name: "help", help: "show this help", isSwitch: true)] {
            let lhs = "  --\(f.name)" + (f.isSwitch ? "" : " VALUE")
            s += lhs.padding(toLength: max(lhs.count + 2, 24), withPad: " ", startingAt: 0) + f.help
            if let d = f.defaultValue { s += " (default \(d))" }
            s += "\n"
        }
        return s
    }

    func parse(_ args: [String]) throws -> Flags {
        var values: [String: String] = [:]
        var i = 0
        while i < args.count {
            let a = args[i]
            guard a.hasPrefix("--") else { throw UsageError("unexpected argument '\(a)'; flags start with -- (see --help)") }
            var name = String(a.dropFirst(2)), value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if name == "help" { values["help"] = "true"; i += 1; continue }
            guard let flag = flags.first(where: { $0.name == name }) else {
                throw UsageError("unknown flag --\(name) for '\(self.name)'; known: \(flags.map { "--" + $0.name }.joined(separator: " "))")
            }
            if flag.isSwitch {
                values[name] = value ?? "true"
            } else {
                if value == nil {
                    guard i + 1 < args.count else { throw UsageError("--\(name) needs a value: \(flag.help)") }
                    i += 1
                    value = args[i]
                }
                values[name] = value
            }
            i += 1
        }
        return Flags(values: values, flags: flags)
    }
}

struct Flags {
    var values: [String: String]
    var flags: [Flag]

    var wantsHelp: Bool { values["help"] != nil }
    func string(_ name: String) -> String? { values[name] ?? flags.first { $0.name == name }?.defaultValue }
    func isSet(_ name: String) -> Bool { values[name].map { $0 != "false" } ?? false }
    func given(_ name: String) -> Bool { values[name] != nil }

    func required(_ name: String) throws -> String {
        guard let v = string(name), !v.isEmpty else {
            throw UsageError("--\(name) is required: \(flags.first { $0.name == name }?.help ?? "")")
        }
        return v
    }

    func int(_ name: String, _ range: ClosedRange<Int>) throws -> Int {
        let s = try required(name)
        guard let v = Int(s), range.contains(v) else {
            throw UsageError("--\(name) \(s): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    func float(_ name: String, _ range: ClosedRange<Double>) throws -> Float {
        let s = try required(name)
        guard let v = Double(s), v.isFinite, range.contains(v) else {
            throw UsageError("--\(name) \(s): expected a number in \(range.lowerBound)...\(range.upperBound)")
        }
        return Float(v)
    }

    func choice(_ name: String, _ allowed: [String]) throws -> String {
        let s = try required(name)
        guard allowed.contains(s) else { throw UsageError("--\(name) \(s): expected one of \(allowed.joined(separator: ", "))") }
        return s
    }
}

// The settings that define a run, recorded where the run keeps its results and compared when it is continued
// (issue 15, "Honest tools"). Two places record one:
//   - every training checkpoint (`onestep.run_settings` in its __metadata__, TrainingLoop / Checkpoint.swift):
//     the objective's settings (steps, batch, lr, seed, the method's own, ...) plus the inputs the objective does
//     not know (teacher and data folders, given by the command);
//   - pipeline.json (DistillPipeline): the stage settings that decide what a finished stage made.
// Continuing either with other values is refused with a RunSettingsError naming each one (old -> new) unless
// the user passes --force; both go through `differences(from:)` and the same message.
//
// Names are the command's flag names where a flag sets the value ("steps", "lr", "ect-q", "teacher"), so the
// message says which flag to change back. Values are text, compared exactly: numbers as Swift prints them (a
// Float's shortest round-trip form), so the same flag value always gives the same text.
// Not recorded, because they do not change what the run computes: --workers, --threads, --log-every,
// --checkpoint-every, --sample-every (and the pipeline's --threads, --checkpoint-every, --log-every).
import Foundation

public struct RunSettings: Sendable, Equatable, CustomStringConvertible {
    /// Setting name -> its value as text.
    public private(set) var values: [String: String]

    public init(_ values: [String: String] = [:]) { self.values = values }

    public subscript(name: String) -> String? {
        get { values[name] }
        set { values[name] = newValue }
    }

    /// These settings with `other`'s added (other's value wins on a shared name).
    public func merging(_ other: RunSettings) -> RunSettings {
        RunSettings(values.merging(other.values) { _, new in new })
    }

    /// "name value, name value" in name order.
    public var description: String { values.keys.sorted().map { "\($0) \(values[$0]!)" }.joined(separator: ", ") }

    /// One setting whose recorded value is not the current one.
    public struct Difference: Sendable, Equatable, CustomStringConvertible {
        public var name: String
        public var recorded: String
        public var current: String
        /// "steps 200 -> 600".
        public var description: String { "\(name) \(recorded) -> \(current)" }
    }

    /// Every setting recorded in `recorded` and present now with another value, in name order. A name only one
    /// side has is not compared: a record written by an older onestep-distill lacks the settings added since
    /// (they cannot have been other than their defaults then), and a setting that no longer exists cannot differ.
    public func differences(from recorded: RunSettings) -> [Difference] {
        values.keys.sorted().compactMap { name in
            guard let was = recorded.values[name], let now = values[name], was != now else { return nil }
            return Difference(name: name, recorded: was, current: now)
        }
    }

    /// Compact JSON object with sorted keys, for a metadata string.
    public var json: String {
        let data = (try? JSONSerialization.data(withJSONObject: values, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The record in `json`; nil when it is not a JSON object of strings.
    public init?(json: String) {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else { return nil }
        var v: [String: String] = [:]
        for (k, value) in object {
            guard let s = value as? String else { return nil }
            v[k] = s
        }
        values = v
    }

    /// Text of a setting for the record: numbers as Swift prints them, arrays as "[a, b]", Bool as true/false.
    public static func text(_ value: Any) -> String {
        switch value {
        case let s as String: return s
        case let b as Bool: return b ? "true" : "false"
        case let a as [Int]: return "[" + a.map(String.init).joined(separator: ", ") + "]"
        case let a as [Any]: return "[" + a.map { text($0) }.joined(separator: ", ") + "]"
        default: return "\(value)"
        }
    }

    /// Text of a value read back from a JSON file (pipeline.json), made comparable with `text(current)`:
    /// JSONSerialization returns NSNumber for numbers and booleans alike, so the current value's type says which.
    public static func text(parsed value: Any, like current: Any) -> String {
        if current is Bool, let n = value as? NSNumber { return n.boolValue ? "true" : "false" }
        if let c = current as? [Any], let a = value as? [Any], let template = c.first {
            return "[" + a.map { text(parsed: $0, like: template) }.joined(separator: ", ") + "]"
        }
        if let n = value as? NSNumber, current is Int { return String(n.intValue) }
        // A recorded 1.0 reads back as the NSNumber 1: print it as the Double it was written from.
        if let n = value as? NSNumber, current is Double { return text(n.doubleValue) }
        return text(value)
    }
}

/// A run folder continued with other settings than it was made with, refused: where, which settings
/// (old -> new), what reusing it would mean, and what to do. onestep-distill reports it as a command-line error
/// (exit 2).
public struct RunSettingsError: Error, CustomStringConvertible {
    public var dir: String
    /// "training run", "pipeline run".
    public var what: String
    public var differences: [RunSettings.Difference]
    /// Why continuing would be wrong, e.g. "its finished stages (data, teacher) would be reused as if made with these".
    public var consequence: String
    public init(dir: String, what: String, differences: [RunSettings.Difference], consequence: String) {
        (self.dir, self.what, self.differences, self.consequence) = (dir, what, differences, consequence)
    }

    /// The differing settings as "steps 200 -> 600; lr 0.0001 -> 0.0002".
    public var list: String { Self.list(differences) }
    public static func list(_ differences: [RunSettings.Difference]) -> String { differences.map(\.description).joined(separator: "; ") }

    public var description: String {
        "\(dir) holds a \(what) made with other settings (\(list)); \(consequence). Run again with the recorded values, choose another --out to start a new run with these settings, or pass --force to continue this one with them"
    }
}

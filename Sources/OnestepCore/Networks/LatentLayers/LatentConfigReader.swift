// Config reading shared by the latent networks' config types: the key set check (every key of a config.json
// must be one the network's diffusers __init__ takes, or start with "_") and per-level values, which diffusers
// accepts as one value or as one value per down block.
import Foundation

enum LatentConfigReading {
    /// Reads and parses a config.json into a dictionary; errors name the file.
    static func load(path: String) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(key: "(file)", problem: "cannot read \(path)")
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw ConfigError(key: "(file)", problem: "\(path) is not valid JSON: \(error.localizedDescription)")
        }
        guard let dict = json as? [String: Any] else {
            throw ConfigError(key: "(file)", problem: "\(path) is not a JSON object")
        }
        return dict
    }

    /// Refuses a `_class_name` other than `className` and any key outside `known` (keys starting with "_" are
    /// metadata diffusers ignores).
    static func checkKeys(_ d: [String: Any], className: String, known: Set<String>) throws {
        if let cls = d["_class_name"] as? String, cls != className {
            throw ConfigError(key: "_class_name", problem: "\(cls) is not \(className); this loader reads \(className) configs only")
        }
        for key in d.keys.sorted() where !key.hasPrefix("_") && !known.contains(key) {
            throw ConfigError(key: key, problem: "is not a \(className) setting Onestep knows; remove it or use a config diffusers \(className) accepts")
        }
    }

    /// Refuses an explicit null for keys whose diffusers default is not null: ConfigReader reads null as "use
    /// the default", but diffusers would pass None on (and fail, or build another network).
    static func refuseNulls(_ d: [String: Any], _ keys: [String]) throws {
        for key in keys where d[key] is NSNull {
            throw ConfigError(key: key, problem: "is null; give a value (diffusers' default is not null)")
        }
    }

    static func isNull(_ d: [String: Any], _ key: String) -> Bool { d[key] == nil || d[key] is NSNull }

    /// Refuses any value but null (or absent) for `key`.
    static func requireNull(_ d: [String: Any], _ key: String, why: String) throws {
        guard isNull(d, key) else { throw ConfigError(key: key, problem: "\(d[key]!) is not supported (\(why)); only null is") }
    }

    /// Refuses a boolean `key` set to anything but `value` (absent means the default, `value`).
    static func requireBool(_ d: [String: Any], _ key: String, _ value: Bool, why: String) throws {
        guard !isNull(d, key) else { return }
        guard let b = JSONValues.bool(d[key]!) else { throw ConfigError(key: key, problem: "\(d[key]!) is not true or false") }
        guard b == value else { throw ConfigError(key: key, problem: "\(b) is not supported (\(why)); only \(value) is") }
    }

    /// An integer or a list of `levels` integers (diffusers' `int | tuple[int]` per-level settings), each in `range`.
    static func perLevelInts(_ d: [String: Any], _ key: String, default def: Int?, levels: Int, range: ClosedRange<Int>) throws -> [Int] {
        guard let v = d[key], !(v is NSNull) else {
            guard let def else { throw ConfigError(key: key, problem: "is required") }
            return Array(repeating: def, count: levels)
        }
        func check(_ e: Any) throws -> Int {
            guard let i = JSONValues.integer(e) else { throw ConfigError(key: key, problem: "\(e) is not an integer") }
            guard range.contains(i) else {
                throw ConfigError(key: key, problem: "\(i) is outside the supported range \(range.lowerBound)...\(range.upperBound)")
            }
            return i
        }
        if let list = v as? [Any] {
            guard list.count == levels else {
                throw ConfigError(key: key, problem: "has \(list.count) values but down_block_types has \(levels) blocks")
            }
            return try list.map(check)
        }
        return Array(repeating: try check(v), count: levels)
    }

    /// A boolean or a list of `levels` booleans.
    static func perLevelBools(_ d: [String: Any], _ key: String, default def: Bool, levels: Int) throws -> [Bool] {
        guard let v = d[key], !(v is NSNull) else { return Array(repeating: def, count: levels) }
        func check(_ e: Any) throws -> Bool {
            guard let b = JSONValues.bool(e) else { throw ConfigError(key: key, problem: "\(e) is not true or false") }
            return b
        }
        if let list = v as? [Any] {
            guard list.count == levels else {
                throw ConfigError(key: key, problem: "has \(list.count) values but down_block_types has \(levels) blocks")
            }
            return try list.map(check)
        }
        return Array(repeating: try check(v), count: levels)
    }

    /// Any finite number (ConfigReader.float takes positive ones only).
    static func number(_ d: [String: Any], _ key: String, default def: Float) throws -> Float {
        guard let v = d[key], !(v is NSNull) else { return def }
        guard let n = JSONValues.number(v), n.floatValue.isFinite else {
            throw ConfigError(key: key, problem: "\(v) is not a finite number")
        }
        return n.floatValue
    }
}

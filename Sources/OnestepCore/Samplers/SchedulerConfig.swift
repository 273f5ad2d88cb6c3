// A parsed diffusers scheduler_config.json, read key by key with the error naming the file and key.
//
// diffusers' ConfigMixin passes every key of the file that the class's __init__ takes and ignores (with a log line)
// keys it does not know, e.g. "_diffusers_version" or a key of another scheduler (a DDPMScheduler config loaded as
// DDIMScheduler keeps "variance_type"). We do the same: unknown keys are ignored, known keys with a value we cannot
// honour are refused naming key and value. JSON null means "the default", as Python's None does.
import Foundation

public struct SchedulerConfig: @unchecked Sendable {
    // @unchecked: holds JSONSerialization values (NSNumber, NSString, NSArray), never mutated after init.
    public let values: [String: Any]
    /// Names the file in errors.
    public let path: String
    /// `_class_name` as the file (or model_index.json) gives it; nil when the file has none.
    public let className: String?

    public init(values: [String: Any], path: String, className: String? = nil) {
        self.values = values
        self.path = path
        self.className = className ?? (values["_class_name"] as? String)
    }

    /// Parses JSON text.
    public init(json data: Data, path: String) throws {
        let quoted = Self.quotingNonFiniteNumbers(data)
        guard let json = try? JSONSerialization.jsonObject(with: quoted) else {
            throw ModelLoadError(path: path, problem: "is not valid JSON \(JSONSyntax.whereInvalid(quoted)); correct the file there")
        }
        guard let d = json as? [String: Any] else {
            throw ModelLoadError(path: path, problem: "is not a JSON object")
        }
        self.init(values: d, path: path)
    }

    /// Python's json writes -Infinity, Infinity and NaN bare (DPMSolverMultistepScheduler saves
    /// "lambda_min_clipped": -Infinity); JSONSerialization refuses them, so outside strings they become strings.
    static func quotingNonFiniteNumbers(_ data: Data) -> Data {
        let bytes = [UInt8](data)
        var out = [UInt8](), inString = false, escaped = false, i = 0
        out.reserveCapacity(bytes.count + 16)
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                out.append(b); i += 1; continue
            }
            if b == 0x22 { inString = true; out.append(b); i += 1; continue }
            var matched = false
            for token in ["-Infinity", "Infinity", "NaN"] {
                let t = Array(token.utf8)
                if i + t.count <= bytes.count, Array(bytes[i..<(i + t.count)]) == t {
                    out += [0x22] + t + [0x22]
                    i += t.count
                    matched = true
                    break
                }
            }
            if !matched { out.append(b); i += 1 }
        }
        return Data(out)
    }

    /// An empty config (every key at the scheduler's default).
    public static func defaults(className: String, path: String = "(defaults)") -> SchedulerConfig {
        SchedulerConfig(values: ["_class_name": className], path: path)
    }

    public func error(_ key: String, _ problem: String) -> ModelLoadError {
        ModelLoadError(path: path, problem: "key '\(key)': \(problem)")
    }

    private func present(_ key: String) -> Any? {
        guard let v = values[key], !(v is NSNull) else { return nil }
        return v
    }

    /// A finite number; `aliases` are older spellings read when `key` is absent.
    public func double(_ key: String, default d: Double, aliases: [String] = [],
                       valid: (Double) -> Bool = { _ in true }, expect: String = "a number") throws -> Double {
        for k in [key] + aliases {
            guard let v = present(k) else { continue }
            guard let n = JSONValues.number(v), n.doubleValue.isFinite, valid(n.doubleValue) else {
                throw error(k, "\(v) is not \(expect)")
            }
            return n.doubleValue
        }
        return d
    }

    /// An integer in `range`.
    public func int(_ key: String, default d: Int, range: ClosedRange<Int>, aliases: [String] = []) throws -> Int {
        for k in [key] + aliases {
            guard let v = present(k) else { continue }
            guard let i = JSONValues.integer(v), range.contains(i) else {
                throw error(k, "\(v) must be an integer \(range.lowerBound)...\(range.upperBound)")
            }
            return i
        }
        return d
    }

    public func bool(_ key: String, default d: Bool) throws -> Bool {
        guard let v = present(key) else { return d }
        guard let b = JSONValues.bool(v) else { throw error(key, "\(v) is not true or false") }
        return b
    }

    /// One of `allowed` strings.
    public func string(_ key: String, default d: String, allowed: [String]) throws -> String {
        guard let v = present(key) else { return d }
        guard let s = v as? String, allowed.contains(s) else {
            throw error(key, "\(v) is not supported; use one of \(allowed.joined(separator: ", "))")
        }
        return s
    }

    /// Refuses a key whose value asks for a feature this port does not have (say what to do instead).
    public func requireDefault(_ key: String, _ isDefault: (Any) -> Bool, advice: String) throws {
        guard let v = present(key) else { return }
        guard isDefault(v) else { throw error(key, "\(v) is not supported; \(advice)") }
    }

    /// requireDefault for a boolean option that must be false.
    public func requireFalse(_ key: String, advice: String) throws {
        try requireDefault(key, { JSONValues.bool($0) == false }, advice: advice)
    }

    /// A list of finite numbers (trained_betas), or nil when absent.
    public func doubles(_ key: String) throws -> [Double]? {
        guard let v = present(key) else { return nil }
        guard let a = v as? [Any] else { throw error(key, "is not a list of numbers") }
        return try a.map { e in
            guard let n = JSONValues.number(e), n.doubleValue.isFinite else { throw error(key, "\(e) is not a number") }
            return n.doubleValue
        }
    }
}

extension SchedulerConfig {
    /// The values with `_class_name` set, as diffusers' save_config writes them.
    public func dictionary(className: String) -> [String: Any] {
        var d = values
        d["_class_name"] = className
        return d
    }
}

// What a generation request asks for, decoded from JSON bodies (POST) or query strings (GET), validated
// against the model it names. Every refusal says which field was wrong and what to send instead.
import Foundation
import OnestepCore

public struct RequestError: Error, Equatable {
    public var message: String
    public var type: String
    public init(_ message: String, type: String = "invalid_request_error") {
        self.message = message
        self.type = type
    }

    /// Longest piece of client input an error message quotes.
    static let maxQuoted = 64

    /// Client input as an error message quotes it: whole when short, else its first ``maxQuoted`` characters and
    /// its size, so a 10 MB prompt does not come back as a 10 MB error (issue 17).
    public static func quote(_ input: Any) -> String {
        let text = input as? String ?? "\(input)"
        guard text.count > maxQuoted else { return text }
        return "\(text.prefix(maxQuoted))... (\(text.utf8.count) bytes)"
    }
}

/// A validated request: the model, the images (seed + label each) and the step count.
public struct GenerationParams: Sendable, Equatable {
    public var model: String
    public var steps: Int
    public var images: [GenerationRequest]
    /// The client's own deadline in ms, if it gave one (clamped by the server's maximum).
    public var deadlineMs: Int?
}

/// Raw fields before validation; strings stay strings so JSON and query share one validator.
struct RawGenerationFields {
    var model: String?
    var n: Any?
    var seed: Any?
    var label: Any?
    var prompt: Any?
    var steps: Any?
    var responseFormat: Any?
    var size: Any?
    var deadlineMs: Any?

    /// Highest seed accepted: JSON numbers are exact only up to 2^53.
    static let maxSeed: UInt64 = (1 << 53) - 1

    static func fromJSON(_ body: [UInt8]) throws(RequestError) -> RawGenerationFields {
        guard !body.isEmpty else { return RawGenerationFields() }
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: Data(body)) } catch {
            throw RequestError("body is not valid JSON; send an object such as {\"seed\": 1, \"label\": \"circle\"}")
        }
        guard let d = obj as? [String: Any] else {
            throw RequestError("body must be a JSON object such as {\"seed\": 1}")
        }
        var r = RawGenerationFields()
        if let m = d["model"], !(m is NSNull) {
            guard let s = m as? String else { throw RequestError("model must be a string naming a model from GET /v1/models") }
            r.model = s
        }
        r.n = d["n"]; r.seed = d["seed"]; r.label = d["label"]; r.prompt = d["prompt"]; r.steps = d["steps"]
        r.responseFormat = d["response_format"]; r.size = d["size"]; r.deadlineMs = d["deadline_ms"]
        return r
    }

    static func fromQuery(_ items: [(name: String, value: String)]) throws(RequestError) -> RawGenerationFields {
        var r = RawGenerationFields()
        let known = ["model", "seed", "label", "prompt", "steps", "n", "deadline_ms"]
        for (k, v) in items {
            switch k {
            case "model": r.model = v
            case "seed": r.seed = v
            case "label": r.label = v
            case "prompt": r.prompt = v
            case "steps": r.steps = v
            case "n": r.n = v
            case "deadline_ms": r.deadlineMs = v
            default: throw RequestError("unknown query parameter '\(RequestError.quote(k))'; known: \(known.joined(separator: ", "))")
            }
        }
        return r
    }

    /// An integer from a JSON number or a query string, or nil when absent.
    static func integer(_ v: Any?, field: String, range: ClosedRange<Int>) throws(RequestError) -> Int? {
        guard let v, !(v is NSNull) else { return nil }
        var i: Int?
        if let s = v as? String { i = Int(s.trimmingCharacters(in: .whitespaces)) } else if !JSONValues.isBool(v) { i = JSONValues.integer(v) }
        guard let i, range.contains(i) else {
            throw RequestError("\(field) must be an integer in \(range.lowerBound)...\(range.upperBound), got \(RequestError.quote(v))")
        }
        return i
    }

    func validate(models: ModelRegistry, maxImages: Int, randomSeed: () -> UInt64) throws(RequestError) -> GenerationParams {
        let name = model ?? models.defaultName
        guard let p = models[name] else {
            throw RequestError("model '\(RequestError.quote(name))' is not loaded; available: \(models.names.joined(separator: ", "))", type: "not_found_error")
        }
        if let f = responseFormat, !(f is NSNull) {
            guard let s = f as? String, s == "b64_json" else {
                throw RequestError("response_format must be \"b64_json\" (images are returned inline; there are no URLs)")
            }
        }
        if let sz = size, !(sz is NSNull) {
            let want = "\(p.imageSize)x\(p.imageSize)"
            guard let s = sz as? String, s == want else {
                throw RequestError("size must be \"\(want)\" for model \(name) (it generates one size only)")
            }
        }
        let n = try Self.integer(self.n, field: "n", range: 1...maxImages) ?? 1
        let steps = try Self.integer(self.steps, field: "steps", range: 1...p.sampler.maxSteps) ?? p.sampler.defaultSteps
        let deadline = try Self.integer(deadlineMs, field: "deadline_ms", range: 1...3_600_000)
        var seed: UInt64
        if let s = self.seed, !(s is NSNull) {
            guard let v = try Self.integer(s, field: "seed", range: 0...Int(Self.maxSeed)) else { throw RequestError("seed is invalid") }
            seed = UInt64(v)
        } else {
            seed = randomSeed() & 0xFFFF_FFFF
        }
        let label = try resolveLabel(p)
        let images = (0..<n).map { i -> GenerationRequest in
            let s = seed &+ UInt64(i)
            // A conditional model asked for no class: the class follows the seed, so the answer is deterministic.
            let l = p.numClasses.map { label ?? Int(s % UInt64($0)) }
            return GenerationRequest(seed: s, label: l)
        }
        seed = images[0].seed
        return GenerationParams(model: name, steps: steps, images: images, deadlineMs: deadline)
    }

    /// label may be an index or a class name; prompt (OpenAI clients) names a class.
    /// Longest label or prompt accepted, in UTF-8 bytes (OpenAI's own prompt limit is 4,000 characters). Checked
    /// before any work on the text, which runs on the event loop: a 10 MB prompt used to hold it for 1.4 s.
    static let maxTextBytes = 4000

    func resolveLabel(_ p: ImagePipeline) throws(RequestError) -> Int? {
        var text: String?
        for (field, value) in [("label", label), ("prompt", prompt)] {
            if let s = value as? String, s.utf8.count > Self.maxTextBytes {
                throw RequestError("\(field) is \(s.utf8.count) bytes; at most \(Self.maxTextBytes) are accepted")
            }
        }
        if let l = label, !(l is NSNull) {
            if let s = l as? String { text = s } else if let i = JSONValues.integer(l) { text = String(i) } else {
                throw RequestError("label must be a class index or a class name")
            }
        } else if let pr = prompt, !(pr is NSNull), p.numClasses != nil {
            // An unconditional model ignores prompts, so OpenAI clients that always send one still work.
            guard let s = pr as? String else { throw RequestError("prompt must be a string naming a class") }
            text = s.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let text else { return nil }
        switch p.resolveLabel(text) {
        case .success(let l): return l
        case .failure(let e):
            // The core's message quotes the text it was given; quote only a prefix of a long one.
            let quoted = RequestError.quote(text)
            throw RequestError(quoted == text ? e.description : e.description.replacingOccurrences(of: text, with: quoted))
        }
    }
}

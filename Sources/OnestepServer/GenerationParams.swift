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
    /// The model's class names (nil: classes are indices only), to name labels in responses.
    public var labelNames: [String]? = nil
    /// The class a prompt resolved to, echoed as `revised_prompt` (nil when no prompt chose the class).
    public var resolvedFromPrompt: String? = nil
    /// Text-to-image models: prompt and negative prompt per image, parallel to `images` (empty for pixel models).
    public var text: [TextGenerationRequest] = []
    /// Text-to-image models: the size asked for (or the model's own); nil for pixel models.
    public var size: ImageSize? = nil
    /// Text-to-image models: the guidance scale asked for (or the model's default).
    public var guidanceScale: Double = 0
    /// Text-to-image models: the decoder asked for ("decoder": "vae" or "taesd"; default the model's vae/).
    public var decoder: DecoderChoice = .model

    /// The name of a class index, or the index as text.
    public func labelName(_ label: Int) -> String {
        guard let names = labelNames, names.indices.contains(label) else { return String(label) }
        return names[label]
    }
}

/// Raw fields before validation; strings stay strings so JSON and query share one validator.
/// Fields are the same on every route and in both forms (query string, JSON body): a name not listed in
/// `knownFields` or `ignoredOpenAIFields` is refused with 400 naming it, so a typo (`sead`) is never silently
/// ignored; OpenAI Images API fields that do not apply here are accepted and ignored.
struct RawGenerationFields {
    static let knownFields = ["model", "prompt", "negative_prompt", "guidance_scale", "n", "seed", "label", "steps", "size",
                              "response_format", "deadline_ms", "decoder"]
    /// OpenAI Images API fields (images.generate) that have no meaning for a one-step class/unconditional model.
    static let ignoredOpenAIFields = ["user", "quality", "style", "background", "moderation", "output_format",
                                      "output_compression", "partial_images", "stream"]
    /// Longest prompt accepted, in characters: CLIP reads 77 tokens, so text far past that is a client mistake.
    static let maxPromptCharacters = 4_000
    /// Largest guidance_scale accepted (diffusers has no cap; past 30 images are saturated noise).
    static let maxGuidanceScale = 30.0

    var model: String?
    var n: Any?
    var seed: Any?
    var label: Any?
    var prompt: Any?
    var negativePrompt: Any?
    var guidanceScale: Any?
    var steps: Any?
    var responseFormat: Any?
    var size: Any?
    var deadlineMs: Any?
    var decoder: Any?
    /// Field names that are neither known nor ignored OpenAI fields.
    var unknown: [String] = []
    /// Problems found while reading the fields (reported with the others by `validate`).
    var problems: [String] = []

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
        r.unknown = d.keys.filter { !knownFields.contains($0) && !ignoredOpenAIFields.contains($0) }.sorted()
        if let m = d["model"], !(m is NSNull) {
            if let s = m as? String { r.model = s } else { r.problems.append("model must be a string naming a model from GET /v1/models") }
        }
        r.n = d["n"]; r.seed = d["seed"]; r.label = d["label"]; r.prompt = d["prompt"]; r.steps = d["steps"]
        r.negativePrompt = d["negative_prompt"]; r.guidanceScale = d["guidance_scale"]
        r.responseFormat = d["response_format"]; r.size = d["size"]; r.deadlineMs = d["deadline_ms"]
        r.decoder = d["decoder"]
        return r
    }

    static func fromQuery(_ items: [(name: String, value: String)]) throws(RequestError) -> RawGenerationFields {
        var r = RawGenerationFields()
        for (k, v) in items {
            switch k {
            case "model": r.model = v
            case "seed": r.seed = v
            case "label": r.label = v
            case "prompt": r.prompt = v
            case "negative_prompt": r.negativePrompt = v
            case "guidance_scale": r.guidanceScale = v
            case "steps": r.steps = v
            case "n": r.n = v
            case "deadline_ms": r.deadlineMs = v
            case "size": r.size = v
            case "response_format": r.responseFormat = v
            case "decoder": r.decoder = v
            default: if !ignoredOpenAIFields.contains(k), !r.unknown.contains(k) { r.unknown.append(RequestError.quote(k)) }
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

    /// Checks every field and reports every problem of the request in one error (an OpenAI client's first
    /// request often has several: size, response_format, an unknown field), each saying what to send instead.
    /// `route` names the route in messages; `allowsN` is false on /v1/generate (one PNG per request).
    func validate(models: ModelRegistry, maxImages: Int, allowsN: Bool = true,
                  randomSeed: () -> UInt64) throws(RequestError) -> GenerationParams {
        var problems = self.problems
        if !unknown.isEmpty {
            problems.append("unknown field\(unknown.count > 1 ? "s" : "") \(unknown.map { "'\($0)'" }.joined(separator: ", ")); known: \(Self.knownFields.joined(separator: ", ")) (OpenAI fields \(Self.ignoredOpenAIFields.joined(separator: ", ")) are accepted and ignored)")
        }
        let name = model ?? models.defaultName
        guard let served = models.model(name) else {
            let notFound = "model '\(RequestError.quote(name))' is not loaded; available: \(models.names.joined(separator: ", "))"
            if problems.isEmpty { throw RequestError(notFound, type: "not_found_error") }
            throw Self.combined(problems + [notFound])
        }
        let p: ImagePipeline
        switch served {
        case .text(let t):
            return try validateText(t, problems: problems, maxImages: maxImages, allowsN: allowsN, randomSeed: randomSeed)
        case .pixel(let pixel): p = pixel
        }
        if let f = responseFormat, !(f is NSNull) {
            if (f as? String) != "b64_json" {
                problems.append("response_format must be \"b64_json\", got \(Self.show(f)) (images are returned inline; there are no URLs)")
            }
        }
        if let sz = size, !(sz is NSNull) {
            let want = "\(p.imageSize)x\(p.imageSize)"
            if (sz as? String) != want {
                problems.append("size must be \"\(want)\" for model \(name), got \(Self.show(sz)) (it generates one size only; leave size out)")
            }
        }
        let guidance = Self.pixelGuidance(guidanceScale, p, model: name, problems: &problems)
        if let d = decoder, !(d is NSNull) {
            problems.append("decoder is for text-to-image models; model \(name) is a pixel model with no decoder (leave decoder out)")
        }
        // negative_prompt: accepted and ignored, as before text models existed (clients that always send one work).
        func check<T>(_ f: () throws(RequestError) -> T?) -> T? {
            do { return try f() } catch { problems.append(error.message); return nil }
        }
        var n = 1
        if !allowsN, self.n != nil {
            problems.append("n is not supported on /v1/generate (one PNG per request); use /v1/images/generations")
        } else {
            n = check { () throws(RequestError) in try Self.integer(self.n, field: "n", range: 1...maxImages) } ?? 1
        }
        let steps = check { () throws(RequestError) in try Self.integer(self.steps, field: "steps", range: p.sampler.stepRange) } ?? p.sampler.defaultSteps
        let deadline = check { () throws(RequestError) in try Self.integer(deadlineMs, field: "deadline_ms", range: 1...Self.maxDeadlineMs) }
        var seed = randomSeed() & 0xFFFF_FFFF
        if let s = self.seed, !(s is NSNull) {
            if let v = check({ () throws(RequestError) in try Self.integer(s, field: "seed", range: 0...Int(Self.maxSeed)) }) { seed = UInt64(v) }
        }
        let resolved = check { () throws(RequestError) in try resolveLabel(p) }
        guard problems.isEmpty else { throw Self.combined(problems) }
        let label = resolved?.index
        let images = (0..<n).map { i -> GenerationRequest in
            let s = seed &+ UInt64(i)
            // A conditional model asked for no class: the class follows the seed, so the answer is deterministic.
            let l = p.numClasses.map { label ?? Int(s % UInt64($0)) }
            return GenerationRequest(seed: s, label: l)
        }
        return GenerationParams(model: name, steps: steps, images: images, deadlineMs: deadline,
                                labelNames: p.classNames, resolvedFromPrompt: resolved?.fromPrompt, guidanceScale: guidance)
    }

    /// The classifier-free guidance scale of a pixel model's request (the batch key's): 0 for a model that takes
    /// none, else the scale sent or 1 when none is (1 = the conditional model itself, no guidance: the same bytes
    /// with or without the field). Problems are appended, each saying what to send instead.
    static func pixelGuidance(_ g: Any?, _ p: ImagePipeline, model name: String, problems: inout [String]) -> Double {
        guard p.takesClassGuidance else {
            if let g, !(g is NSNull) {
                problems.append(p.config.nullClassLabel != nil
                    ? "guidance_scale: model \(name) is a distilled student (\(type(of: p.sampler).className)) whose guidance, if any, was distilled into it; leave guidance_scale out"
                    : p.numClasses == nil
                    ? "guidance_scale: model \(name) is unconditional, so it has no classifier-free guidance (leave guidance_scale out)"
                    : "guidance_scale: model \(name) has no null label (\"null_class_label\" in its config: trained without label dropout), so it has no classifier-free guidance (leave guidance_scale out)")
            }
            return 0
        }
        guard let g, !(g is NSNull) else { return 1 }
        let v: Double? = (g as? String).flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            ?? (JSONValues.isBool(g) ? nil : JSONValues.number(g)?.doubleValue)
        guard let v, v.isFinite, (0...GuidanceLimits.maxScale).contains(v) else {
            problems.append("guidance_scale must be a number in 0...\(Int(GuidanceLimits.maxScale)) (1 = no guidance, 0 = the unconditional model, typical 1.5-5), got \(show(g))")
            return 1
        }
        return v
    }

    /// Largest deadline_ms a request may send (one hour); the server's --max-deadline-ms then caps it.
    static let maxDeadlineMs = 3_600_000

    static func combined(_ problems: [String]) -> RequestError {
        problems.count == 1 ? RequestError(problems[0])
            : RequestError("\(problems.count) problems: " + problems.enumerated().map { "(\($0 + 1)) \($1)" }.joined(separator: "; "))
    }

    /// A value as the client sent it, for messages.
    static func show(_ v: Any) -> String {
        if let s = v as? String { return "\"\(s.prefix(64))\"" }
        // A JSON true / false arrives as an NSNumber that prints as 1 / 0: name it as the client sent it.
        if JSONValues.isBool(v), let b = v as? Bool { return b ? "true" : "false" }
        return "\(v)"
    }

    /// Longest label or prompt accepted, in UTF-8 bytes (OpenAI's own prompt limit is 4,000 characters). Checked
    /// before any work on the text, which runs on the event loop: a 10 MB prompt used to hold it for 1.4 s.
    static let maxTextBytes = 4000

    /// label may be an index or a class name; prompt (OpenAI clients) names a class: the whole prompt, or the one
    /// class name it contains as a word (plural -s/-es allowed): "a red star" and "stars" resolve to "star".
    /// `fromPrompt` is the class name a prompt resolved to, echoed in the response.
    func resolveLabel(_ p: ImagePipeline) throws(RequestError) -> (index: Int, fromPrompt: String?)? {
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
            let whole = s.trimmingCharacters(in: .whitespacesAndNewlines)
            if case .success(let l?) = p.resolveLabel(whole) { return (l, p.classNames?[l] ?? String(l)) }
            let names = p.classNames ?? []
            let found = Self.classesNamed(in: whole, names: names)
            if found.count == 1 { return (found[0], names[found[0]]) }
            if found.count > 1 {
                throw RequestError("prompt '\(whole.prefix(80))' names several classes (\(found.map { names[$0] }.joined(separator: ", "))); name one of: \(names.joined(separator: ", "))")
            }
            throw RequestError(names.isEmpty
                ? "prompt '\(whole.prefix(80))' is not a class index and this model has no class names"
                : "prompt '\(whole.prefix(80))' names no class of this model; it must contain one of: \(names.joined(separator: ", "))")
        }
        guard let text else { return nil }
        switch p.resolveLabel(text) {
        case .success(let l): return l.map { ($0, nil) }
        case .failure(let e):
            // The core's message quotes the text it was given; quote only a prefix of a long one.
            let quoted = RequestError.quote(text)
            throw RequestError(quoted == text ? e.description : e.description.replacingOccurrences(of: text, with: quoted))
        }
    }

    /// Indices of the class names that occur in `prompt` as whole words (case-insensitive; a plural -s or -es
    /// counts; multi-word names match as phrases).
    static func classesNamed(in prompt: String, names: [String]) -> [Int] {
        func words(_ s: String) -> [String] {
            s.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber }).map(String.init)
        }
        let w = words(prompt)
        return names.indices.filter { i in
            let n = words(names[i])
            guard !n.isEmpty, n.count <= w.count else { return false }
            return (0...(w.count - n.count)).contains { start in
                zip(n.indices, n).allSatisfy { k, part in
                    let word = w[start + k]
                    if word == part { return true }
                    return k == n.count - 1 && (word == part + "s" || word == part + "es")
                }
            }
        }
    }
}

// Request fields of text-to-image models: prompt, negative_prompt, size "WxH", guidance_scale, on top of the
// fields every model takes (n, seed, steps, deadline_ms, response_format). Like the pixel validator, every problem
// of a request is reported in one error, each saying what to send instead.
import Foundation
import OnestepCore

extension RawGenerationFields {
    /// "WxH" (also "W x H", "WXH") -> size, or nil when the text is not two positive integers.
    static func parseSize(_ text: String) -> ImageSize? {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]), w > 0, h > 0 else { return nil }
        return ImageSize(width: w, height: h)
    }

    /// Problems with a size for a text model (empty when it is allowed).
    static func sizeProblems(_ v: Any, rule: SizeRule, model: String) -> [String] {
        guard let s = v as? String, let size = parseSize(s) else {
            return ["size must be \"WIDTHxHEIGHT\" such as \"512x512\", got \(show(v))"]
        }
        let bad = [("width", size.width), ("height", size.height)].filter { !rule.allows($0.1) }
        guard !bad.isEmpty else { return [] }
        return ["size \(size): \(bad.map { "\($0.0) \($0.1)" }.joined(separator: " and ")) not allowed for model \(model); each side must be \(rule.describe)"]
    }

    func validateText(_ t: TextToImagePipeline, problems initial: [String], maxImages: Int, allowsN: Bool,
                      randomSeed: () -> UInt64) throws(RequestError) -> GenerationParams {
        var problems = initial
        let name = t.name
        func check<T>(_ f: () throws(RequestError) -> T?) -> T? {
            do { return try f() } catch { problems.append(error.message); return nil }
        }
        func text(_ v: Any?, _ field: String) -> String? {
            guard let v, !(v is NSNull) else { return nil }
            guard let s = v as? String else { problems.append("\(field) must be a string, got \(Self.show(v))"); return nil }
            guard s.count <= Self.maxPromptCharacters else {
                problems.append("\(field) has \(s.count) characters; at most \(Self.maxPromptCharacters) (the text encoder reads 77 tokens)")
                return nil
            }
            return s
        }
        let prompt = text(self.prompt, "prompt")
        if self.prompt == nil || self.prompt is NSNull {
            problems.append("prompt is required: model \(name) is text-to-image; send {\"prompt\": \"a photo of a cat\"}")
        }
        let negative = text(negativePrompt, "negative_prompt") ?? ""
        if let l = label, !(l is NSNull) {
            problems.append("label is for class models; model \(name) takes a text prompt (send prompt instead)")
        }
        if let f = responseFormat, !(f is NSNull), (f as? String) != "b64_json" {
            problems.append("response_format must be \"b64_json\", got \(Self.show(f)) (images are returned inline; there are no URLs)")
        }
        var size = t.defaultImageSize
        if let sz = self.size, !(sz is NSNull) {
            let found = Self.sizeProblems(sz, rule: t.sizeRule, model: name)
            if found.isEmpty, let s = sz as? String, let parsed = Self.parseSize(s) { size = parsed }
            problems += found
        }
        var guidance = t.guidance.defaultScale
        if let g = guidanceScale, !(g is NSNull) {
            let v: Double? = (g as? String).flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }
                ?? (JSONValues.isBool(g) ? nil : JSONValues.number(g)?.doubleValue)
            if t.guidance == .none {
                problems.append("guidance_scale: model \(name) is distilled to run without guidance; leave guidance_scale out")
            } else if let v, v.isFinite, (0...Self.maxGuidanceScale).contains(v) {
                guidance = v
            } else {
                problems.append("guidance_scale must be a number in 0...\(Int(Self.maxGuidanceScale)), got \(Self.show(g))")
            }
        }
        if !negative.isEmpty {
            switch t.guidance {
            case .classifierFree:
                if guidance <= 1 {
                    problems.append("negative_prompt takes effect only under classifier-free guidance, guidance_scale > 1 (got \(guidance)); raise guidance_scale or leave negative_prompt out")
                }
            case .none, .embedding:
                problems.append("negative_prompt: model \(name) has no classifier-free guidance, so a negative prompt would change nothing; leave it out")
            }
        }
        var decoderChoice = DecoderChoice.model
        if let d = decoder, !(d is NSNull) {
            if let s = d as? String, let c = DecoderChoice(rawValue: s) {
                if c == .taesd, t.taesd == nil {
                    problems.append("decoder \"taesd\": model \(name) was started without a TAESD folder (onestep-serve --taesd \(name)=DIR); leave decoder out or send \"vae\"")
                }
                decoderChoice = c
            } else {
                problems.append("decoder must be \"vae\" (the model's own) or \"taesd\"\(t.taesd == nil ? " (when the server was started with --taesd for the model)" : ""), got \(Self.show(d))")
            }
        }
        var n = 1
        if !allowsN, self.n != nil {
            problems.append("n is not supported on /v1/generate (one PNG per request); use /v1/images/generations")
        } else {
            n = check { () throws(RequestError) in try Self.integer(self.n, field: "n", range: 1...maxImages) } ?? 1
        }
        let steps = check { () throws(RequestError) in try Self.integer(self.steps, field: "steps", range: t.sampler.stepRange) } ?? t.sampler.defaultSteps
        let deadline = check { () throws(RequestError) in try Self.integer(deadlineMs, field: "deadline_ms", range: 1...Self.maxDeadlineMs) }
        var seed = randomSeed() & 0xFFFF_FFFF
        if let s = self.seed, !(s is NSNull) {
            if let v = check({ () throws(RequestError) in try Self.integer(s, field: "seed", range: 0...Int(Self.maxSeed)) }) { seed = UInt64(v) }
        }
        guard problems.isEmpty, let prompt else { throw Self.combined(problems) }
        let seeds = (0..<n).map { seed &+ UInt64($0) }
        return GenerationParams(model: name, steps: steps, images: seeds.map { GenerationRequest(seed: $0) },
                                deadlineMs: deadline,
                                text: seeds.map { TextGenerationRequest(prompt: prompt, negativePrompt: negative, seed: $0, guidanceScale: guidance) },
                                size: size, guidanceScale: guidance, decoder: decoderChoice)
    }
}

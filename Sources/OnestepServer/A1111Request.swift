// AUTOMATIC1111's txt2img body (the shape Open WebUI, SillyTavern and the `webuiapi` client send), translated to
// the server's own generation fields. The translation is a JSON object in the shape of POST
// /v1/images/generations, read by the same `RawGenerationFields.fromJSON` and `validate` as that route, so every
// field the server learns there (negative_prompt, guidance_scale, size for text-to-image models) is honoured here
// without a second validator.
//
// A1111 clients send their own defaults on every request (steps 20, cfg_scale 7, 512x512, sampler "Euler a").
// A one-step model cannot honour those, and refusing them would make every such client fail out of the box, so
// what the model cannot do is adjusted or ignored and each adjustment is written in `info.notes`. What would
// give a different kind of result (hires fix, scripts, extensions) or is malformed is refused with a 400.
import Foundation
import OnestepCore

/// A validated A1111 txt2img request: the generation body it becomes, and what the response echoes.
struct A1111Txt2Img: Sendable {
    /// The model that will run.
    var model: String
    /// JSON in the shape of POST /v1/images/generations (`model`, `prompt`, `seed`, `n`, `steps`, ...).
    var generationBody: [UInt8]
    var prompt: String
    var negativePrompt: String
    var cfgScale: Double
    var batchSize: Int
    var nIter: Int
    /// The size the images will have (the model's own size unless the model takes `size`).
    var width: Int
    var height: Int
    /// The sampler the model really uses (its scheduler_config decides).
    var samplerName: String
    /// What the client asked for that the model cannot do, and what was done instead.
    var notes: [String]
    /// The request body as received, re-encoded (A1111 echoes it as `parameters`).
    var parametersJSON: String

    /// Parses and checks an A1111 txt2img body.
    ///
    /// - Parameters:
    ///   - model: the model in force (POST /sdapi/v1/options), unless `override_settings.sd_model_checkpoint` names one.
    ///   - fields: for each model, the request fields /v1/models says it takes (`fields`), or nil when it does not say
    ///     (a class model: `prompt` names a class).
    /// - Throws: `RequestError` naming the field and what to send.
    init(body: [UInt8], models: ModelRegistry, model current: String, fields: (String) -> Set<String>?,
         maxImages: Int) throws(RequestError) {
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: Data(body.isEmpty ? Array("{}".utf8) : body)) } catch {
            throw RequestError("body is not valid JSON; send an A1111 txt2img object such as {\"prompt\": \"circle\", \"seed\": 1, \"batch_size\": 2}")
        }
        guard let d = obj as? [String: Any] else { throw RequestError("body must be a JSON object such as {\"prompt\": \"circle\"}") }

        // Features that would change what the client gets: refused, not silently skipped.
        if let hr = d["enable_hr"], JSONValues.bool(hr) == true {
            throw RequestError("enable_hr (hires fix) is not supported: the model generates its own size in one pass; send enable_hr false")
        }
        if let s = d["script_name"] as? String, !s.isEmpty {
            throw RequestError("script_name '\(s)': scripts are not supported; send script_name null")
        }
        if let a = d["alwayson_scripts"] as? [String: Any], !a.isEmpty {
            throw RequestError("alwayson_scripts (\(a.keys.sorted().joined(separator: ", "))): extensions are not supported; send {}")
        }

        var model = current
        if let o = d["override_settings"], !(o is NSNull) {
            guard let o = o as? [String: Any] else { throw RequestError("override_settings must be an object") }
            if let c = o["sd_model_checkpoint"], !(c is NSNull) {
                guard let s = c as? String, let name = Self.checkpoint(s, models: models) else {
                    throw RequestError("override_settings.sd_model_checkpoint \(c) is not loaded; available: \(models.names.joined(separator: ", ")) (GET /sdapi/v1/sd-models)", type: "not_found_error")
                }
                model = name
            }
        }
        guard let p = models.model(model) else {
            throw RequestError("model '\(model)' is not loaded; available: \(models.names.joined(separator: ", "))", type: "not_found_error")
        }
        let takes = fields(model)
        self.model = model

        prompt = try Self.string(d["prompt"], "prompt")
        negativePrompt = try Self.string(d["negative_prompt"], "negative_prompt")
        batchSize = try Self.int(d["batch_size"], "batch_size", 1...maxImages) ?? 1
        nIter = try Self.int(d["n_iter"], "n_iter", 1...maxImages) ?? 1
        guard batchSize * nIter <= maxImages else {
            throw RequestError("batch_size x n_iter = \(batchSize * nIter) images; at most \(maxImages) per request")
        }
        let seed = try Self.int(d["seed"], "seed", -1...Int(RawGenerationFields.maxSeed)) ?? -1
        var steps = try Self.int(d["steps"], "steps", 1...10_000)
        if let c = d["cfg_scale"], !(c is NSNull) {
            guard let v = JSONValues.number(c)?.doubleValue, v.isFinite, v >= 0 else { throw RequestError("cfg_scale must be a number >= 0, got \(c)") }
            cfgScale = v
        } else {
            cfgScale = 1
        }
        let askedWidth = try Self.int(d["width"], "width", 1...16384)
        let askedHeight = try Self.int(d["height"], "height", 1...16384)
        let asked = (d["sampler_name"] as? String) ?? (d["sampler_index"] as? String)

        var notes: [String] = []
        var gen: [String: Any] = ["model": model, "n": batchSize * nIter]
        if seed >= 0 { gen["seed"] = seed }
        if !prompt.isEmpty { gen["prompt"] = prompt }

        // steps: a one-step model's maximum is small; A1111 clients default to 20.
        let own = p.defaultImageSize
        if let s = steps, s > p.sampler.stepRange.upperBound {
            notes.append("steps \(s) lowered to \(p.sampler.stepRange.upperBound), the most model \(model) takes (its default is \(p.sampler.defaultSteps))")
            steps = p.sampler.stepRange.upperBound
        }
        if let steps { gen["steps"] = steps }

        if takes?.contains("negative_prompt") == true {
            if !negativePrompt.isEmpty { gen["negative_prompt"] = negativePrompt }
        } else if !negativePrompt.isEmpty {
            notes.append("negative_prompt ignored: model \(model) takes no text prompt to contrast it with")
        }
        if takes?.contains("guidance_scale") == true {
            if d["cfg_scale"] != nil { gen["guidance_scale"] = cfgScale }
        } else if d["cfg_scale"] != nil {
            notes.append("cfg_scale \(cfgScale) ignored: model \(model) has no classifier-free guidance")
        }

        width = own.width
        height = own.height
        if takes?.contains("size") == true, askedWidth != nil || askedHeight != nil {
            // One side given: the other keeps the model's own size (A1111 defaults each side separately).
            width = askedWidth ?? own.width
            height = askedHeight ?? own.height
            gen["size"] = "\(width)x\(height)"
        } else if (askedWidth ?? own.width) != own.width || (askedHeight ?? own.height) != own.height {
            notes.append("model \(model) generates \(own) only; width x height \(askedWidth ?? own.width)x\(askedHeight ?? own.height) not used")
        }

        samplerName = A1111Catalog.samplerName(p.sampler)
        if let asked, !asked.isEmpty, asked.caseInsensitiveCompare(samplerName) != .orderedSame {
            notes.append("sampler '\(asked)' not used: model \(model) samples with \(samplerName) (set by its scheduler config)")
        }
        self.notes = notes
        do {
            generationBody = Array(try JSONSerialization.data(withJSONObject: gen, options: [.sortedKeys]))
            parametersJSON = String(decoding: try JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]), as: UTF8.self)
        } catch {
            throw RequestError("the request could not be re-encoded as JSON: \(error)")
        }
    }

    /// A model named as A1111 clients name checkpoints: the id, or a title with a file extension or " [hash]".
    static func checkpoint(_ title: String, models: ModelRegistry) -> String? {
        var s = title.trimmingCharacters(in: .whitespaces)
        if models.model(s) != nil { return s }
        if let bracket = s.range(of: " [", options: .backwards), s.hasSuffix("]") { s = String(s[..<bracket.lowerBound]) }
        for ext in [".safetensors", ".ckpt"] where s.hasSuffix(ext) { s = String(s.dropLast(ext.count)) }
        return models.model(s) != nil ? s : nil
    }

    static func string(_ v: Any?, _ field: String) throws(RequestError) -> String {
        guard let v, !(v is NSNull) else { return "" }
        guard let s = v as? String else { throw RequestError("\(field) must be a string, got \(v)") }
        return s
    }

    static func int(_ v: Any?, _ field: String, _ range: ClosedRange<Int>) throws(RequestError) -> Int? {
        guard let v, !(v is NSNull) else { return nil }
        guard let i = JSONValues.integer(v), range.contains(i) else {
            throw RequestError("\(field) must be an integer in \(range.lowerBound)...\(range.upperBound), got \(v)")
        }
        return i
    }
}

/// The names A1111 clients list and pick from.
enum A1111Catalog {
    /// The sampler name shown for a model: what its scheduler config selects (A1111's names where one exists).
    static func samplerName(_ s: any Sampler) -> String {
        switch type(of: s).className {
        case "CMStochasticIterativeScheduler": return "Consistency"
        case "OnestepEDMHeunScheduler": return "Heun Karras (EDM)"
        case "EulerDiscreteScheduler": return "Euler"
        case "EulerAncestralDiscreteScheduler": return "Euler a"
        case "DDIMScheduler": return "DDIM"
        case "DPMSolverMultistepScheduler": return "DPM++ 2M"
        case "LCMScheduler": return "LCM"
        case "TCDScheduler": return "TCD"
        case "DDPMScheduler": return "DDPM"
        case let other: return other
        }
    }

    /// The diffusers scheduler class behind each sampler name (A1111 lists these as `aliases`).
    static func schedulerClass(_ s: any Sampler) -> String { type(of: s).className }
}

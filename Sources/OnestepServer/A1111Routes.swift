// Routes for the tools people put in front of image servers, and the playground page:
//   GET  /                          the playground (PlaygroundPage.swift)
//   POST /sdapi/v1/txt2img          AUTOMATIC1111's generation call -> {"images": [base64 PNG], "parameters", "info"}
//   GET|POST /sdapi/v1/options      the model in force (sd_model_checkpoint); clients read it to check the server
//   GET  /sdapi/v1/sd-models, samplers, schedulers, progress, scripts, and empty lists for sd-vae, sd-modules,
//        upscalers, latent-upscale-modes, loras, embeddings: what Open WebUI, SillyTavern and the webuiapi client
//        call when they connect.
// Generation goes through the same validator, queue and batcher as /v1/images/generations, so an A1111 request
// gives the same PNG bytes as the native request with the same model, seed, class and steps.
import Foundation
import HTTP1
import OnestepCore
import Synchronization

/// What the A1111 routes keep between requests: the model chosen with POST /sdapi/v1/options.
/// Per process: replicas behind a load balancer each keep their own, so clients of a replicated set-up should
/// name the model in each request (`override_settings.sd_model_checkpoint`).
final class A1111Settings: Sendable {
    private let checkpoint = Locked<String?>(nil)  // pthread mutex: visible to ThreadSanitizer

    func model(default name: String) -> String { checkpoint.withLock { $0 } ?? name }
    func setModel(_ name: String) { checkpoint.withLock { $0 = name } }
}

extension Router {
    /// Paths served by this file; merged into `Router.routes` (HEAD is allowed wherever GET is).
    static let ecosystemRoutes: [String: [HTTPMethod]] = [
        "/": [.GET],
        "/sdapi/v1/txt2img": [.POST],
        "/sdapi/v1/options": [.GET, .POST],
        "/sdapi/v1/sd-models": [.GET],
        "/sdapi/v1/samplers": [.GET],
        "/sdapi/v1/schedulers": [.GET],
        "/sdapi/v1/progress": [.GET],
        "/sdapi/v1/scripts": [.GET],
        "/sdapi/v1/sd-vae": [.GET],
        "/sdapi/v1/upscalers": [.GET],
        "/sdapi/v1/loras": [.GET],
        "/sdapi/v1/embeddings": [.GET],
        "/sdapi/v1/latent-upscale-modes": [.GET],
        "/sdapi/v1/sd-modules": [.GET],
    ]

    func handleEcosystem(_ path: String, _ request: HTTPRequest, _ responder: HTTPResponder) {
        switch path {
        case "/": respond(responder, PlaygroundPage.response)
        case "/sdapi/v1/txt2img": a1111Txt2Img(request, responder)
        case "/sdapi/v1/options":
            if request.method == .POST { a1111SetOptions(request, responder) } else { respond(responder, .json(Self.encode(a1111Options()))) }
        case "/sdapi/v1/sd-models":
            respond(responder, .json(Self.encode(models.names.map { name -> [String: Any] in
                ["title": name, "model_name": name, "hash": NSNull(), "sha256": NSNull(), "filename": name, "config": NSNull()]
            })))
        case "/sdapi/v1/samplers":
            var seen = Set<String>()
            let list: [[String: Any]] = models.names.compactMap { name in
                let s = models.model(name)!.sampler, label = A1111Catalog.samplerName(s)
                guard seen.insert(label).inserted else { return nil }
                return ["name": label, "aliases": [A1111Catalog.schedulerClass(s)], "options": [String: String]()]
            }
            respond(responder, .json(Self.encode(list)))
        case "/sdapi/v1/schedulers":
            respond(responder, .json(Self.encode([["name": "automatic", "label": "Automatic", "aliases": NSNull(),
                                                   "default_rho": -1, "need_inner_model": false] as [String: Any]])))
        case "/sdapi/v1/progress":
            // Generation is not observable step by step; clients poll this to show a bar and to check liveness.
            let state: [String: Any] = ["skipped": false, "interrupted": false, "job": "", "job_count": queue.depth,
                                        "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0]
            respond(responder, .json(Self.encode(["progress": 0, "eta_relative": 0, "state": state,
                                                  "current_image": NSNull(), "textinfo": NSNull()] as [String: Any])))
        case "/sdapi/v1/scripts":
            respond(responder, .json(Self.encode(["txt2img": [String](), "img2img": [String]()])))
        default:  // sd-vae, sd-modules, upscalers, latent-upscale-modes, loras, embeddings: none here, said with an empty answer clients accept
            respond(responder, .json(Array((path.hasSuffix("embeddings") ? "{\"loaded\":{},\"skipped\":{}}" : "[]").utf8)))
        }
    }

    func a1111Options() -> [String: Any] {
        ["sd_model_checkpoint": a1111.model(default: models.defaultName), "sd_checkpoint_hash": NSNull(),
         "samples_format": "png", "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "eta_noise_seed_delta": 0]
    }

    /// POST /sdapi/v1/options: `sd_model_checkpoint` selects the model of later requests that name none. Other
    /// keys have no meaning here; they are accepted (clients post their whole settings page) and listed back in
    /// `X-Onestep-Ignored-Options`.
    func a1111SetOptions(_ request: HTTPRequest, _ responder: HTTPResponder) {
        guard let d = (try? JSONSerialization.jsonObject(with: Data(request.body.isEmpty ? Array("{}".utf8) : request.body))) as? [String: Any] else {
            respond(responder, Self.a1111Error(.badRequest, RequestError("body must be a JSON object such as {\"sd_model_checkpoint\": \"\(models.defaultName)\"}")))
            return
        }
        if let c = d["sd_model_checkpoint"], !(c is NSNull) {
            guard let s = c as? String, let name = A1111Txt2Img.checkpoint(s, models: models) else {
                respond(responder, Self.a1111Error(.notFound, RequestError("sd_model_checkpoint \(c) is not loaded; available: \(models.names.joined(separator: ", "))", type: "not_found_error")))
                return
            }
            a1111.setModel(name)
        }
        var r = HTTPResponse.json(Array("null".utf8))
        let ignored = d.keys.filter { $0 != "sd_model_checkpoint" }.sorted()
        if !ignored.isEmpty { r.headers.add(name: "X-Onestep-Ignored-Options", value: ignored.joined(separator: ",")) }
        respond(responder, r)
    }

    func a1111Txt2Img(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let t: A1111Txt2Img, params: GenerationParams
        let declared = declaredFields()
        do {
            t = try A1111Txt2Img(body: request.body, models: models, model: a1111.model(default: models.defaultName),
                                 fields: { declared[$0] ?? nil }, maxImages: options.maxImagesPerRequest)
            params = try RawGenerationFields.fromJSON(t.generationBody)
                .validate(models: models, maxImages: options.maxImagesPerRequest, randomSeed: { UInt64.random(in: 0...UInt64.max) })
        } catch {  // both steps throw RequestError only
            respond(responder, Self.a1111Error(error.type == "not_found_error" ? .notFound : .badRequest, error))
            return
        }
        let classes = models[params.model]?.classNames
        // The CFG scale the images were made with: the request's guidance when the model takes guidance_scale, else
        // 1 (A1111's "no guidance"), so an ignored cfg_scale (said in notes) is not reported as used.
        let cfgScale = (declared[params.model] ?? nil)?.contains("guidance_scale") == true ? params.guidanceScale : 1
        enqueue(params, responder, id: nextJobID.add(1, ordering: .relaxed).oldValue) { pngs, wait, compute, batch in
            let seeds = params.images.map { Int($0.seed) }
            let labels: [Any] = params.images.map { img in
                img.label.map { l -> Any in classes.flatMap { l < $0.count ? $0[l] : nil } ?? l } ?? NSNull()
            }
            let infotexts = seeds.map { s in
                (t.prompt.isEmpty ? "" : t.prompt + "\n") + (t.negativePrompt.isEmpty ? "" : "Negative prompt: \(t.negativePrompt)\n")
                    + "Steps: \(params.steps), Sampler: \(t.samplerName), CFG scale: \(cfgScale), Seed: \(s), Size: \(t.width)x\(t.height), Model: \(params.model)"
            }
            let info: [String: Any] = [
                "prompt": t.prompt, "all_prompts": Array(repeating: t.prompt, count: seeds.count),
                "negative_prompt": t.negativePrompt, "all_negative_prompts": Array(repeating: t.negativePrompt, count: seeds.count),
                "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": Array(repeating: -1, count: seeds.count),
                "subseed_strength": 0, "width": t.width, "height": t.height, "sampler_name": t.samplerName,
                "cfg_scale": cfgScale, "steps": params.steps, "batch_size": t.batchSize, "n_iter": t.nIter,
                "sd_model_name": params.model, "sd_model_hash": NSNull(), "clip_skip": 1, "index_of_first_image": 0,
                "infotexts": infotexts, "all_labels": labels, "notes": t.notes,
                "queue_ms": (seconds(wait) * 100_000).rounded() / 100, "compute_ms": (seconds(compute) * 100_000).rounded() / 100,
                "batch_images": batch,
            ]
            // "info" is a JSON document inside a string, as A1111 sends it (clients json.loads it).
            let infoText = String(decoding: Self.encode(info), as: UTF8.self)
            var body = "{\"images\":["
            body += pngs.map { "\"" + Data($0).base64EncodedString() + "\"" }.joined(separator: ",")
            body += "],\"parameters\":" + t.parametersJSON + ",\"info\":" + jsonStringLiteral(infoText) + "}"
            return .json(Array(body.utf8))
        }
    }

    /// For each model, the request fields /v1/models says it takes (`fields`), or nil when the entry does not say.
    /// Read from the same JSON the page and clients see, so the two cannot disagree.
    func declaredFields() -> [String: Set<String>?] {
        guard let list = (try? JSONSerialization.jsonObject(with: Data(modelsJSON())) as? [String: Any])?["data"] as? [[String: Any]] else { return [:] }
        var out: [String: Set<String>?] = [:]
        for m in list {
            guard let id = m["id"] as? String else { continue }
            out[id] = (m["fields"] as? [String]).map(Set.init)
        }
        return out
    }

    /// The project's error envelope plus FastAPI's `detail`, which A1111 clients print.
    static func a1111Error(_ status: HTTPStatus, _ e: RequestError) -> HTTPResponse {
        let json = "{\"error\":{\"message\":\(jsonStringLiteral(e.message)),\"type\":\(jsonStringLiteral(e.type))},\"detail\":\(jsonStringLiteral(e.message))}"
        return .json(Array(json.utf8), status: status)
    }

    static func encode(_ object: Any) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("null".utf8))
    }
}

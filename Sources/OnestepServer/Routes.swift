// The HTTP API: routes, methods, and the translation between HTTP requests and generation jobs.
//   POST /v1/images/generations   OpenAI-shaped JSON in and out (b64_json images)
//   GET|POST /v1/generate         one PNG, seed in X-Seed (GET works from a browser address bar)
//   GET /v1/models, /v1/models/{id}, /healthz, /readyz, /metrics
import Foundation
import HTTP1
import OnestepCore
import Synchronization

final class Router: Sendable {
    let models: ModelRegistry
    let queue: BatchQueue
    let metrics: Metrics
    let options: ServerOptions
    let draining = Atomic<Bool>(false)
    let a1111 = A1111Settings()  // A1111Routes.swift
    let nextJobID = Atomic<UInt64>(1)

    init(models: ModelRegistry, queue: BatchQueue, metrics: Metrics, options: ServerOptions) {
        self.models = models
        self.queue = queue
        self.metrics = metrics
        self.options = options
    }

    /// Route table: path -> allowed methods. HEAD is allowed wherever GET is.
    static let routes: [String: [HTTPMethod]] = [
        "/v1/images/generations": [.POST],
        "/v1/generate": [.GET, .POST],
        "/v1/models": [.GET],
        "/healthz": [.GET],
        "/readyz": [.GET],
        "/metrics": [.GET],
    ].merging(ecosystemRoutes) { core, _ in core }  // playground and A1111 routes: A1111Routes.swift

    /// The route label used in metrics: a known path, or "other" (so scanners cannot blow up label cardinality).
    static func routeLabel(_ target: String?) -> String {
        guard let t = target else { return "unparsed" }
        let path = String(t.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        if path.hasPrefix(modelPrefix) { return modelPrefix + "{id}" }
        return routes[path] != nil ? path : "other"
    }

    /// `GET /v1/models/{id}`: one model, as the OpenAI API's models.retrieve answers.
    static let modelPrefix = "/v1/models/"

    func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let path = String(request.path)
        if path.hasPrefix(Self.modelPrefix) {
            guard request.method == .GET || request.method == .HEAD else {
                var r = HTTPResponse.error(.methodNotAllowed, message: "\(request.method) is not allowed on \(path); use GET")
                r.headers.add(name: "Allow", value: "GET, HEAD")
                return respond(responder, r)
            }
            let id = String(path.dropFirst(Self.modelPrefix.count)).removingPercentEncoding ?? ""
            guard let model = modelObject(id) else {
                return respond(responder, .error(.notFound, message: "The model '\(id)' does not exist; loaded: \(models.names.joined(separator: ", "))", type: "not_found_error"))
            }
            return respond(responder, .json(Array((try? JSONSerialization.data(withJSONObject: model, options: [.sortedKeys])) ?? Data())))
        }
        guard let allowed = Self.routes[path] else {
            respond(responder, .error(.notFound, message: "no route \(RequestError.quote(path)); routes: \(Self.routes.keys.sorted().joined(separator: ", "))", type: "not_found_error"))
            return
        }
        let method = request.method == .HEAD ? HTTPMethod.GET : request.method
        guard allowed.contains(method) else {
            var r = HTTPResponse.error(.methodNotAllowed, message: "\(RequestError.quote(request.method.rawValue)) is not allowed on \(RequestError.quote(path)); use \(allowed.map(\.rawValue).joined(separator: " or "))")
            let allow = allowed.contains(.GET) ? allowed.map(\.rawValue) + ["HEAD"] : allowed.map(\.rawValue)
            r.headers.add(name: "Allow", value: allow.joined(separator: ", "))
            respond(responder, r)
            return
        }
        switch path {
        case "/healthz": respond(responder, .json(Array("{\"status\":\"ok\"}".utf8)))
        case "/readyz":
            if draining.load(ordering: .acquiring) {
                respond(responder, .error(.serviceUnavailable, message: "draining: this server is shutting down", type: "draining"))
            } else {
                respond(responder, .json(Array("{\"status\":\"ready\",\"models\":\(models.names.count)}".utf8)))
            }
        case "/metrics":
            respond(responder, HTTPResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: Array(metrics.render().utf8)))
        case "/v1/models": respond(responder, .json(modelsJSON()))
        case "/v1/images/generations": generate(request, responder, openAI: true)
        case _ where Self.ecosystemRoutes[path] != nil: handleEcosystem(path, request, responder)
        default: generate(request, responder, openAI: false)
        }
    }

    func modelsJSON() -> [UInt8] {
        let data: [[String: Any]] = models.names.compactMap(modelObject)
        return Array((try? JSONSerialization.data(withJSONObject: ["object": "list", "data": data], options: [.sortedKeys])) ?? Data())
    }

    /// One entry of GET /v1/models (OpenAI's Model object: id, object, created, owned_by; then ours).
    /// `fields` lists the request fields the model takes: pages and the A1111 routes build their forms from it.
    func modelObject(_ name: String) -> [String: Any]? {
        guard let served = models.model(name) else { return nil }
        let sampler = served.sampler
        var d: [String: Any] = [
            "created": 0,
            "id": name, "object": "model", "owned_by": "onestep",
            "default_steps": sampler.defaultSteps, "min_steps": sampler.stepRange.lowerBound,
            "max_steps": sampler.stepRange.upperBound, "scheduler": type(of: sampler).className,
            "sampler_description": sampler.description, "default": name == models.defaultName,
        ]
        switch served {
        case .pixel(let p):
            d["kind"] = "pixel"
            d["image_size"] = p.imageSize
            d["channels"] = p.channels
            d["dtype"] = p.weightDType
            d["parameters"] = p.model.parameterCount
            d["sampler"] = p.sampler is ConsistencySampler ? "consistency" : p.sampler is EDMHeunSampler ? "edm_heun" : type(of: p.sampler).className
            if let note = p.samplerAssumption { d["sampler_assumed"] = note }
            d["classes"] = p.classNames ?? (p.numClasses.map { n in (0..<n).map(String.init) } ?? [])
            d["fields"] = p.fields
            if p.numClasses != nil { d["prompt_selects"] = "class" }
            // As text models say it: guidance over the null label, 1 (the conditional model) when a request sends none.
            if p.takesClassGuidance { (d["guidance"], d["default_guidance_scale"]) = ("classifier_free", 1.0) }
        case .text(let t):
            d["kind"] = "text-to-image"
            d["default_size"] = t.defaultImageSize.description
            d["image_size"] = t.defaultSize
            d["channels"] = 3
            d["sizes"] = t.sizeRule.describe
            d["sampler"] = type(of: t.sampler).className
            d["classes"] = [String]()
            d["fields"] = t.fields
            d["decoders"] = t.taesd == nil ? ["vae"] : ["vae", "taesd"]
            if !t.loras.isEmpty { d["loras"] = t.loras.map { ["file": URL(fileURLWithPath: $0.path).lastPathComponent, "scale": Double($0.scale)] } }
            switch t.guidance {
            case .none: d["guidance"] = "none"
            case .classifierFree(let g): d["guidance"] = "classifier_free"; d["default_guidance_scale"] = g
            case .embedding(let g): d["guidance"] = "embedding"; d["default_guidance_scale"] = g
            }
        }
        return d
    }

    func generate(_ request: HTTPRequest, _ responder: HTTPResponder, openAI: Bool) {
        let params: GenerationParams
        do {
            var raw: RawGenerationFields
            if request.method == .POST {
                // The body is read as JSON whatever Content-Type says: `curl -d '{...}'` sends form-urlencoded.
                raw = try RawGenerationFields.fromJSON(request.body)
            } else {
                raw = try RawGenerationFields.fromQuery(request.query.items)
            }
            params = try raw.validate(models: models, maxImages: options.maxImagesPerRequest, allowsN: openAI,
                                      randomSeed: { UInt64.random(in: 0...UInt64.max) })
        } catch {
            let status: HTTPStatus = error.type == "not_found_error" ? .notFound : .badRequest
            respond(responder, .error(status, message: error.message, type: error.type))
            return
        }
        enqueue(params, responder, id: nextJobID.add(1, ordering: .relaxed).oldValue,
                deadlineAdvice: "retry later or raise deadline_ms") { pngs, _, _, _ in
            var r: HTTPResponse
            if openAI {
                let data: [[String: Any]] = zip(pngs, params.images).enumerated().map { i, pair in
                    let (png, img) = pair
                    var item: [String: Any] = ["b64_json": Data(png).base64EncodedString(), "seed": img.seed]
                    if let l = img.label { item["label"] = l; item["label_name"] = params.labelName(l) }
                    if let r = params.resolvedFromPrompt { item["revised_prompt"] = r }
                    if i < params.text.count { item["revised_prompt"] = params.text[i].prompt }
                    return item
                }
                let body: [String: Any] = ["created": Int(Date().timeIntervalSince1970), "data": data]
                r = .json(Array((try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()))
            } else {
                r = HTTPResponse(status: .ok, contentType: "image/png", body: pngs[0])
                r.headers.add(name: "X-Seed", value: String(params.images[0].seed))
                if let l = params.images[0].label {
                    r.headers.add(name: "X-Label", value: String(l))
                    r.headers.add(name: "X-Label-Name", value: params.labelName(l))
                }
                if let p = params.resolvedFromPrompt { r.headers.add(name: "X-Prompt-Resolved-To", value: p) }
                if let size = params.size { r.headers.add(name: "X-Size", value: size.description) }
            }
            return r
        }
    }

    /// Queues a validated generation and answers with `render`'s response (timing headers added) once computed;
    /// refusals (queue full, draining, deadline) are answered alike on every route. `deadlineAdvice` ends the
    /// message of a request whose deadline passed in the queue (only the native routes have `deadline_ms`).
    func enqueue(_ params: GenerationParams, _ responder: HTTPResponder, id: UInt64, deadlineAdvice: String = "retry later",
                 render: @escaping @Sendable (_ pngs: [[UInt8]], _ wait: Duration, _ compute: Duration, _ batch: Int) -> HTTPResponse) {
        if draining.load(ordering: .acquiring) {
            reject(responder, reason: "draining", .error(.serviceUnavailable, message: "draining: this server is shutting down; retry on another replica", type: "draining"))
            return
        }
        let deadlineMs = min(params.deadlineMs ?? options.defaultDeadlineMs, options.maxDeadlineMs)
        let now = ContinuousClock.now
        let job = GenerationJob(id: id, model: params.model, steps: params.steps, images: params.images,
                                text: params.text, size: params.size, guidanceScale: params.guidanceScale, decoder: params.decoder,
                                deadline: now + .milliseconds(deadlineMs), enqueuedAt: now,
                                isCancelled: { responder.isCancelled }) { [self, metrics] outcome in
            switch outcome {
            case .done(let pngs, let wait, let compute, let batch):
                var r = render(pngs, wait, compute, batch)
                r.headers.add(name: "X-Queue-Ms", value: String(format: "%.2f", seconds(wait) * 1000))
                r.headers.add(name: "X-Compute-Ms", value: String(format: "%.2f", seconds(compute) * 1000))
                r.headers.add(name: "X-Batch-Images", value: String(batch))
                r.headers.add(name: "Cache-Control", value: "no-store")
                respond(responder, r)
            case .expired(let wait):
                var r = HTTPResponse.error(.serviceUnavailable, message: "deadline of \(deadlineMs) ms passed after \(Int(seconds(wait) * 1000)) ms in the queue; the server is overloaded, \(deadlineAdvice)", type: "deadline_exceeded")
                r.headers.add(name: "Retry-After", value: "1")
                respond(responder, r)
            case .failed(let message):
                metrics.increment("onestep_rejected_total", [("reason", "internal")])
                respond(responder, .error(.internalServerError, message: message))
            }
        }
        switch queue.submit(job) {
        case .accepted:
            responder.onCancel { [queue, metrics] in
                if queue.cancel(job) { metrics.increment("onestep_rejected_total", [("reason", "client_gone")]) }
            }
        case .queueFull(let retry):
            var r = HTTPResponse.error(.tooManyRequests, message: "queue full (\(queue.maxQueuedImages) images waiting); retry after \(retry) s", type: "queue_full")
            r.headers.add(name: "Retry-After", value: String(retry))
            reject(responder, reason: "queue_full", r)
        case .draining:
            reject(responder, reason: "draining", .error(.serviceUnavailable, message: "draining: this server is shutting down; retry on another replica", type: "draining"))
        }
    }

    func reject(_ responder: HTTPResponder, reason: String, _ response: HTTPResponse) {
        metrics.increment("onestep_rejected_total", [("reason", reason)])
        respond(responder, response)
    }

    /// Every answer goes through here: while draining it carries `Connection: close`, so keep-alive clients
    /// (a proxy's upstream pool) reconnect to another replica instead of reusing a connection to this one.
    func respond(_ responder: HTTPResponder, _ response: HTTPResponse) {
        var r = response
        if draining.load(ordering: .acquiring) { r.headers.add(name: "Connection", value: "close") }
        responder.respond(r)
    }
}

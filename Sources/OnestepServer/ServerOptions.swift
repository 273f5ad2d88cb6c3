// Everything an operator can set, as flags or ONESTEP_* environment variables (flags win), with defaults.
import CommandLineKit
import Foundation
import HTTP1
import OnestepCore

public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var modelsDirectory = "models"
    public var defaultModel: String? = nil
    /// Compute threads, each running whole batches: one per core. With one BLAS thread each this beat one
    /// worker with 2 BLAS threads on this 2-core machine (equal alone, far better when the other core is busy:
    /// OpenBLAS threads spin-wait for each other), and keeps batch-1 latency the same.
    public var workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// OpenBLAS threads per GEMM call.
    public var blasThreads = 1
    /// Cores that split each batch's layers between them (a thread team per worker; workers become
    /// workers / this). nil: chosen at start-up by timing one forward both ways (CoreSplit.swift).
    public var coresPerBatch: Int? = nil
    public var maxBatch = 16
    public var maxDelayMs = 2.0
    public var maxQueuedImages = 256
    public var maxImagesPerRequest = 16
    public var defaultDeadlineMs = 10_000
    public var maxDeadlineMs = 60_000
    public var maxConnections = 1024
    public var maxBodyBytes = 64 * 1024
    public var headerTimeoutMs = 10_000
    public var bodyTimeoutMs = 10_000
    public var idleTimeoutMs = 60_000
    public var drainTimeoutMs = 30_000
    /// After the drain: time for answers still being written before connections are cut (and reported).
    public var graceMs = 3_000
    /// Time without write progress before a connection whose client reads nothing is dropped.
    public var writeTimeoutMs = 30_000
    /// As Go does (it reads net.core.somaxconn, 4096 on current kernels): a burst of connects waits in the queue
    /// instead of having its SYNs dropped and retried a second later.
    public var backlog = 4096
    /// Requests per connection before it is closed (nginx's keepalive_requests).
    public var maxRequestsPerConnection = 1000
    /// Connections one client address may hold; 0 means no cap.
    public var maxConnectionsPerAddress = 0
    /// Connections accepted beyond --max-connections while all are busy, for /healthz, /readyz, /metrics.
    public var reserveConnections = 64
    public var accessLog = true
    /// Prompt embeddings kept by (model, prompt), least recently used evicted; 0 disables the cache.
    /// One SD embedding is 77 x 1024 floats (308 KB), so the default 256 holds about 80 MB at most.
    public var textEmbeddingCacheEntries = 256
    /// LoRAs fused into text-to-image models at load and TAESD folders loaded beside their decoders, per model.
    public var extras = ModelExtrasOptions()

    public init() {}

    /// name, help, environment variable, default (as text).
    public static let specs: [FlagSpec] = {
        let d = ServerOptions()
        return [
            FlagSpec("host", "address to bind [ONESTEP_HOST]", default: d.host),
            FlagSpec("port", "TCP port, 0 picks a free one [ONESTEP_PORT]", default: String(d.port)),
            FlagSpec("models", "folder of model folders, or one model folder [ONESTEP_MODELS]", default: d.modelsDirectory),
            FlagSpec("default-model", "model used when a request names none [ONESTEP_DEFAULT_MODEL]", default: "shapes16-cd-int8 if loaded, else the first by name"),
            FlagSpec("workers", "compute threads, each running whole batches [ONESTEP_WORKERS]", default: String(d.workers)),
            FlagSpec("threads", "OpenBLAS threads per GEMM [ONESTEP_THREADS]", default: String(d.blasThreads)),
            FlagSpec("cores-per-batch", "cores splitting one batch, or auto: measured at start-up [ONESTEP_CORES_PER_BATCH]", default: "auto"),
            FlagSpec("max-batch", "images per batch [ONESTEP_MAX_BATCH]", default: String(d.maxBatch)),
            FlagSpec("max-delay-ms", "longest wait to fill a batch [ONESTEP_MAX_DELAY_MS]", default: String(d.maxDelayMs)),
            FlagSpec("max-queue", "images queued before 429 [ONESTEP_MAX_QUEUE]", default: String(d.maxQueuedImages)),
            FlagSpec("default-deadline-ms", "deadline of a request that sets none [ONESTEP_DEFAULT_DEADLINE_MS]", default: String(d.defaultDeadlineMs)),
            FlagSpec("max-deadline-ms", "cap on a request's deadline_ms [ONESTEP_MAX_DEADLINE_MS]", default: String(d.maxDeadlineMs)),
            FlagSpec("max-connections", "open connections before 503 [ONESTEP_MAX_CONNECTIONS]", default: String(d.maxConnections)),
            FlagSpec("max-body-bytes", "request body limit, 413 above [ONESTEP_MAX_BODY_BYTES]", default: String(d.maxBodyBytes)),
            FlagSpec("header-timeout-ms", "time to send a request head, 408 after [ONESTEP_HEADER_TIMEOUT_MS]", default: String(d.headerTimeoutMs)),
            FlagSpec("body-timeout-ms", "time to send a body, 408 after [ONESTEP_BODY_TIMEOUT_MS]", default: String(d.bodyTimeoutMs)),
            FlagSpec("idle-timeout-ms", "keep-alive idle limit [ONESTEP_IDLE_TIMEOUT_MS]", default: String(d.idleTimeoutMs)),
            FlagSpec("write-timeout-ms", "time without write progress before a non-reading client is dropped [ONESTEP_WRITE_TIMEOUT_MS]", default: String(d.writeTimeoutMs)),
            FlagSpec("backlog", "kernel queue of connections not yet accepted [ONESTEP_BACKLOG]", default: String(d.backlog)),
            FlagSpec("max-requests-per-connection", "requests served on one connection before it closes [ONESTEP_MAX_REQUESTS_PER_CONNECTION]", default: String(d.maxRequestsPerConnection)),
            FlagSpec("max-connections-per-address", "connections one client address may hold, 0 = no cap [ONESTEP_MAX_CONNECTIONS_PER_ADDRESS]", default: String(d.maxConnectionsPerAddress)),
            FlagSpec("reserve-connections", "connections beyond --max-connections for /healthz /readyz /metrics [ONESTEP_RESERVE_CONNECTIONS]", default: String(d.reserveConnections)),
            FlagSpec("drain-timeout-ms", "on SIGTERM, time to finish queued work [ONESTEP_DRAIN_TIMEOUT_MS]", default: String(d.drainTimeoutMs)),
            FlagSpec("grace-ms", "after the drain, time to finish writing answers [ONESTEP_GRACE_MS]", default: String(d.graceMs)),
            FlagSpec("text-embedding-cache", "prompt embeddings kept, LRU; 0 disables [ONESTEP_TEXT_EMBEDDING_CACHE]", default: String(d.textEmbeddingCacheEntries)),
            FlagSpec("lora", "LoRA fused into a text-to-image model at load: [MODEL=]FILE[:SCALE], repeatable; MODEL may be left out with one model folder [ONESTEP_LORA, comma-separated]"),
            FlagSpec("taesd", "AutoencoderTiny (TAESD) folder loaded beside a model's decoder, chosen per request with \"decoder\": \"taesd\": [MODEL=]DIR, repeatable [ONESTEP_TAESD, comma-separated]"),
            FlagSpec("scheduler", "scheduler class a model runs with its scheduler_config.json values (e.g. TCDScheduler with a Hyper-SD / TCD LoRA, DDIMScheduler for a DDPM pixel model): [MODEL=]CLASS, repeatable [ONESTEP_SCHEDULER, comma-separated]"),
            FlagSpec("no-access-log", "do not print a line per request [ONESTEP_ACCESS_LOG=0]", isSwitch: true),
        ]
    }()

    /// Flags first, then ONESTEP_* variables, then defaults.
    public static func parse(_ args: [String], environment env: [String: String]) throws -> (ServerOptions, help: Bool) {
        let f = try ParsedFlags(args, specs: specs)
        return (try parse(f, environment: env), f.wantsHelp)
    }

    /// The options from flags already parsed against `specs`, then ONESTEP_* variables, then defaults.
    public static func parse(_ f: ParsedFlags, environment env: [String: String]) throws -> ServerOptions {
        var o = ServerOptions()
        func variable(_ name: String) -> String { "ONESTEP_" + name.uppercased().replacingOccurrences(of: "-", with: "_") }
        func text(_ name: String) -> String? {
            if f.has(name) { return f.string(name) }
            return env[variable(name)]
        }
        /// "--port abc" or, when the value came from the environment, "ONESTEP_PORT=abc" (a user who passed no flag
        /// looks for the variable).
        func given(_ name: String, _ s: String) -> String { f.has(name) ? "--\(name) \(s)" : "\(variable(name))=\(s)" }
        func int(_ name: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let s = text(name) else { return nil }
            guard let v = Int(s), range.contains(v) else {
                throw FlagError("\(given(name, s)): expected an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return v
        }
        o.host = text("host") ?? o.host
        o.port = try int("port", 0...65535) ?? o.port
        o.modelsDirectory = text("models") ?? o.modelsDirectory
        o.defaultModel = text("default-model")
        o.workers = try int("workers", 1...64) ?? o.workers
        o.blasThreads = try int("threads", 1...256) ?? o.blasThreads
        if text("cores-per-batch") != "auto" { o.coresPerBatch = try int("cores-per-batch", 1...256) }
        o.maxBatch = try int("max-batch", 1...256) ?? o.maxBatch
        if let s = text("max-delay-ms") {
            guard let v = Double(s), v >= 0, v <= 10_000 else { throw FlagError("\(given("max-delay-ms", s)): expected 0...10000") }
            o.maxDelayMs = v
        }
        o.maxQueuedImages = try int("max-queue", 1...1_000_000) ?? o.maxQueuedImages
        o.defaultDeadlineMs = try int("default-deadline-ms", 1...3_600_000) ?? o.defaultDeadlineMs
        o.maxDeadlineMs = try int("max-deadline-ms", 1...3_600_000) ?? o.maxDeadlineMs
        o.maxConnections = try int("max-connections", 1...1_000_000) ?? o.maxConnections
        o.maxBodyBytes = try int("max-body-bytes", 256...(64 << 20)) ?? o.maxBodyBytes
        o.headerTimeoutMs = try int("header-timeout-ms", 10...3_600_000) ?? o.headerTimeoutMs
        o.bodyTimeoutMs = try int("body-timeout-ms", 10...3_600_000) ?? o.bodyTimeoutMs
        o.idleTimeoutMs = try int("idle-timeout-ms", 10...3_600_000) ?? o.idleTimeoutMs
        o.drainTimeoutMs = try int("drain-timeout-ms", 0...3_600_000) ?? o.drainTimeoutMs
        o.graceMs = try int("grace-ms", 0...3_600_000) ?? o.graceMs
        o.writeTimeoutMs = try int("write-timeout-ms", 10...3_600_000) ?? o.writeTimeoutMs
        o.backlog = try int("backlog", 1...1_000_000) ?? o.backlog
        o.maxRequestsPerConnection = try int("max-requests-per-connection", 1...100_000_000) ?? o.maxRequestsPerConnection
        o.maxConnectionsPerAddress = try int("max-connections-per-address", 0...1_000_000) ?? o.maxConnectionsPerAddress
        o.reserveConnections = try int("reserve-connections", 0...1_000_000) ?? o.reserveConnections
        o.textEmbeddingCacheEntries = try int("text-embedding-cache", 0...1_000_000) ?? o.textEmbeddingCacheEntries
        o.accessLog = !(f.isSet("no-access-log") || env["ONESTEP_ACCESS_LOG"] == "0")
        func list(_ name: String) -> [String] {
            if f.has(name) { return f.all(name) }
            return (env[variable(name)] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        o.extras = try ModelExtrasOptions.parse(loras: list("lora"), taesd: list("taesd"), scheduler: list("scheduler"),
                                                flag: { f.has($0) ? "--\($0)" : variable($0) })
        guard o.defaultDeadlineMs <= o.maxDeadlineMs else {
            throw FlagError("--default-deadline-ms \(o.defaultDeadlineMs) is above --max-deadline-ms \(o.maxDeadlineMs)")
        }
        return o
    }

    var httpConfiguration: HTTPServer.Configuration {
        var limits = HTTPRequestParser.Limits()
        limits.maxBodyBytes = maxBodyBytes
        return HTTPServer.Configuration(host: host, port: port, backlog: backlog, maxConnections: maxConnections,
                                        reserveConnections: reserveConnections,
                                        reservedPaths: ["/healthz", "/readyz", "/metrics"],
                                        maxConnectionsPerAddress: maxConnectionsPerAddress,
                                        maxRequestsPerConnection: maxRequestsPerConnection,
                                        headerReadTimeout: .milliseconds(headerTimeoutMs),
                                        bodyReadTimeout: .milliseconds(bodyTimeoutMs),
                                        idleTimeout: .milliseconds(idleTimeoutMs),
                                        writeTimeout: .milliseconds(writeTimeoutMs), limits: limits)
    }
}

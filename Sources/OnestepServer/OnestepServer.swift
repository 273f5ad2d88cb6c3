// The server's lifecycle: load models, start compute workers and the HTTP loop, serve, and on SIGTERM/SIGINT
// drain (readiness off, no new work, queued and running work finished within the drain timeout) and exit 0.
// While draining, responses carry `Connection: close` and the listener stays open until the queue is empty, so
// /readyz answers 503 (not connection refused) and requests still routed here get a clean 503.
import Foundation
import HTTP1
import OnestepCore

public final class OnestepServer: Sendable {
    public let options: ServerOptions
    public let models: ModelRegistry
    public let metrics = Metrics()
    let queue: BatchQueue
    let workers: ComputeWorkers
    let router: Router
    let http: HTTPServer
    let log: @Sendable (String) -> Void

    public init(options: ServerOptions, models: ModelRegistry, log: @escaping @Sendable (String) -> Void = { print($0) }) {
        self.options = options
        self.models = models
        self.log = log
        BLAS.threads = options.blasThreads
        queue = BatchQueue(maxBatch: options.maxBatch, maxDelay: .microseconds(Int(options.maxDelayMs * 1000)),
                           maxQueuedImages: options.maxQueuedImages)
        let split = CoreSplit.choose(models: models, cores: options.workers, fixed: options.coresPerBatch)
        log(split.description)
        workers = ComputeWorkers(count: max(1, options.workers / split.coresPerBatch), coresPerBatch: split.coresPerBatch,
                                 queue: queue, models: models, metrics: metrics, embeddingCacheSize: options.textEmbeddingCacheEntries)
        router = Router(models: models, queue: queue, metrics: metrics, options: options)
        let metrics = self.metrics, accessLog = options.accessLog
        let router = self.router
        http = HTTPServer(configuration: options.httpConfiguration, onResponseWritten: { record in
            let route = Router.routeLabel(record.target)
            metrics.increment("onestep_http_requests_total", [("route", route), ("status", String(record.status.code))])
            metrics.observe("onestep_http_request_duration_seconds", [("route", route)], seconds(record.writtenAt - record.headReceivedAt))
            if accessLog {
                let q = record.responseHeaders["X-Queue-Ms"] ?? "-", c = record.responseHeaders["X-Compute-Ms"] ?? "-"
                log("\(record.remoteAddress) \(record.method?.rawValue ?? "-") \(record.target ?? "-") \(record.status.code) \(record.bytesWritten) queue_ms=\(q) compute_ms=\(c) total_ms=\(String(format: "%.2f", seconds(record.writtenAt - record.headReceivedAt) * 1000))")
            }
        }, handler: { request, responder in router.handle(request, responder) })
        describeMetrics()
    }

    func describeMetrics() {
        metrics.describe("onestep_http_requests_total", help: "HTTP requests answered, by route and status", type: "counter")
        metrics.describe("onestep_http_request_duration_seconds", help: "Time from request head to last response byte", type: "histogram", bounds: Metrics.latencyBuckets)
        metrics.describe("onestep_queue_wait_seconds", help: "Time a generation request waited for a batch", type: "histogram", bounds: Metrics.latencyBuckets)
        metrics.describe("onestep_batch_size_images", help: "Images per computed batch", type: "histogram", bounds: Metrics.batchBuckets)
        metrics.describe("onestep_compute_seconds", help: "Time to compute one batch (sampling + PNG)", type: "histogram", bounds: Metrics.latencyBuckets)
        metrics.describe("onestep_images_generated_total", help: "Images generated, by model", type: "counter")
        metrics.describe("onestep_rejected_total", help: "Generation requests not computed, by reason", type: "counter")
        metrics.describe("onestep_text_embedding_cache_hits_total", help: "Prompts whose text embedding came from the cache, by model", type: "counter")
        metrics.describe("onestep_text_embedding_cache_misses_total", help: "Prompts run through the text encoder, by model", type: "counter")
        for name in models.textModels.keys.sorted() {  // listed at 0 from the start, so dashboards see the series
            metrics.increment("onestep_text_embedding_cache_hits_total", [("model", name)], by: 0)
            metrics.increment("onestep_text_embedding_cache_misses_total", [("model", name)], by: 0)
        }
        // Weak captures: the HTTP server's callbacks hold the router and the metrics, so strong ones here would
        // make a cycle and a stopped server (every test server) would never be freed.
        metrics.gauge("onestep_queue_depth_images", help: "Images waiting for a batch") { [weak queue] in Double(queue?.depth ?? 0) }
        metrics.gauge("onestep_running_batches", help: "Batches being computed") { [weak queue] in Double(queue?.runningBatches ?? 0) }
        metrics.gauge("onestep_text_embedding_cache_entries", help: "Prompt embeddings held (at most --text-embedding-cache)") { [weak workers] in Double(workers?.embeddings.count ?? 0) }
        metrics.gauge("onestep_open_connections", help: "Open HTTP connections") { [weak http] in Double(http?.openConnections ?? 0) }
        metrics.gauge("onestep_pending_responses", help: "Requests accepted and not yet answered") { [weak http] in Double(http?.pendingResponses ?? 0) }
    }

    /// Starts workers and the HTTP loop. Returns once the port is bound.
    public func start() throws {
        workers.start()
        do { try http.start() } catch {
            for job in queue.stop() { job.complete(.failed("server failed to start")) }
            _ = workers.join(timeout: .seconds(5))
            throw ServerStartError(host: options.host, port: options.port, cause: error)
        }
        log("onestep-serve listening on http://\(options.host):\(http.port) with \(models.names.count) model(s) [\(models.names.joined(separator: ", "))], default \(models.defaultName); \(workers.count) worker(s) x \(workers.coresPerBatch) core(s) per batch x \(options.blasThreads) BLAS thread(s), max batch \(options.maxBatch), max delay \(options.maxDelayMs) ms, queue \(options.maxQueuedImages) images")
    }

    public var port: Int { http.port }

    /// What the last ``drainAndStop()`` could not deliver within the grace period (empty when all was written).
    public var droppedAtStop: HTTPServer.DropReport { http.dropped }

    /// Graceful drain: readiness off, refuse new work, finish queued and running work (bounded by the drain
    /// timeout), then give answers being written the grace period, then close. Returns true if the queued work
    /// finished in time; ``droppedAtStop`` says what the close cut off.
    @discardableResult
    public func drainAndStop() -> Bool {
        router.draining.store(true, ordering: .releasing)
        queue.beginDrain()
        let deadline = ContinuousClock.now + .milliseconds(options.drainTimeoutMs)
        while !queue.isIdle, ContinuousClock.now < deadline { usleep(2_000) }
        let finished = queue.isIdle
        // Answer anything still queued (only when the drain timed out) before closing connections.
        for job in queue.stop() { job.complete(.expired(queueWait: .now - job.enqueuedAt)) }
        // Responses just handed to the loop are written before connections close.
        http.shutdown(gracePeriod: .milliseconds(options.graceMs))
        _ = workers.join(timeout: .seconds(10))
        return finished
    }

    /// Routes SIGTERM and SIGINT to ``runUntilSignalled()`` from now on. Call before ``start()``: a signal that
    /// arrives once the port is open is then never lost, nor does it kill the process undrained.
    ///
    /// A plain `sigaction` handler posting a semaphore, not a `DispatchSourceSignal`: that needed the disposition
    /// set to SIG_IGN first and registers asynchronously on libdispatch's manager thread, so a signal arriving in
    /// between was ignored; the SIGTERM integration test once saw a server keep running with 12 images queued.
    /// A handler runs on whichever thread the kernel picks, so compute, BLAS and event-loop threads need no masks.
    public static func catchTerminationSignals() {
        _ = terminationSignal  // initialised here, never first inside the handler
        for sig in [SIGTERM, SIGINT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in sem_post(terminationSignal) }  // async-signal-safe
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(sig, &action, nil)
        }
    }

    /// Runs until SIGTERM or SIGINT, then drains. Returns the process exit code.
    public func runUntilSignalled() -> Int32 {
        Self.catchTerminationSignals()
        while sem_wait(terminationSignal) != 0 {}  // EINTR: wait again
        log("signal received: draining (\(queue.depth) images queued, up to \(options.drainTimeoutMs) ms)")
        let clean = drainAndStop()
        let dropped = droppedAtStop
        if !clean { log("drain timeout: queued work was answered 503") }
        if dropped.isEmpty {
            log(clean ? "drained; exiting" : "exiting")
        } else {
            log("grace period (\(options.graceMs) ms, --grace-ms) over: dropped \(dropped.connections) connection(s) with \(dropped.responses) answer(s) unanswered or unwritten, \(dropped.bytes) bytes unsent (clients not reading); exiting")
        }
        return 0
    }
}

/// Posted by the SIGTERM/SIGINT handler, awaited by `runUntilSignalled`.
nonisolated(unsafe) private let terminationSignal: UnsafeMutablePointer<sem_t> = {
    let s = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    sem_init(s, 0, 0)
    return s
}()

/// The server could not start listening: the port is in use, the address is not this host's, or not allowed.
/// Not a usage error (onestep-serve exits 1): the flags were well formed, the machine said no.
public struct ServerStartError: Error, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var cause: Error
    public var description: String {
        var advice = ""
        if let e = cause as? HTTPServerError {
            switch e.errno {
            case EADDRINUSE: advice = "; another process is listening on port \(port): stop it, or choose another --port (0 picks a free one)"
            case EADDRNOTAVAIL: advice = "; \(host) is not an address of this machine: use --host 127.0.0.1 or 0.0.0.0"
            case EACCES: advice = "; ports below 1024 need privileges: choose a --port of 1024 or more"
            default: break
            }
        }
        return "cannot listen on \(host):\(port): \(cause)\(advice)"
    }
}

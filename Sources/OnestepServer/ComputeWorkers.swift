// Compute threads: each takes a batch from the BatchQueue, runs the sampler and PNG encoding, and completes the
// batch's jobs. The HTTP event loop never computes; it only enqueues and is woken by the responders.
// A reaper answers queued work whose deadline passed while every worker was busy.
import Foundation
import OnestepCore

/// A text embedding cache key: the same prompt gives different embeddings under different text encoders.
public struct EmbeddingKey: Hashable, Sendable {
    public var model: String
    public var prompt: String
}

public final class ComputeWorkers: @unchecked Sendable {
    // Immutable after init; threads are only started and joined.
    let queue: BatchQueue
    let models: ModelRegistry
    let metrics: Metrics
    let count: Int
    /// Threads splitting each batch's layers (1: the worker computes alone).
    let coresPerBatch: Int
    /// Prompt embeddings (1, L, D) by (model, prompt), shared by every worker; LRU-bounded by --text-embedding-cache.
    let embeddings: LRUCache<EmbeddingKey, Tensor>
    private let group = DispatchGroup()
    private let reaperStop = DispatchSemaphore(value: 0)

    public init(count: Int, coresPerBatch: Int = 1, queue: BatchQueue, models: ModelRegistry, metrics: Metrics, embeddingCacheSize: Int = 256) {
        self.count = max(1, count)
        self.coresPerBatch = max(1, coresPerBatch)
        self.embeddings = LRUCache(capacity: embeddingCacheSize)
        self.queue = queue
        self.models = models
        self.metrics = metrics
    }

    public func start() {
        for i in 0..<count {
            group.enter()
            let t = Thread { [self] in
                workerLoop()
                group.leave()
            }
            t.name = "onestep-compute-\(i)"
            t.stackSize = 8 << 20
            t.start()  // not kept: a Thread holds its closure, which holds self, so keeping it would be a cycle
        }
        group.enter()
        let reaper = Thread { [self] in
            // Every 5 ms: deadlines are in the hundreds of ms, so this answers an expired request within 2% of it.
            while reaperStop.wait(timeout: .now() + .milliseconds(5)) == .timedOut {
                for job in queue.takeExpired() { expire(job) }
            }
            group.leave()
        }
        reaper.name = "onestep-reaper"
        reaper.start()
    }

    /// Waits for every worker to exit (after BatchQueue.stop or a finished drain).
    public func join(timeout: Duration) -> Bool {
        reaperStop.signal()
        return group.wait(timeout: .now() + .nanoseconds(Int(seconds(timeout) * 1e9))) == .success
    }

    private func expire(_ job: GenerationJob) {
        metrics.increment("onestep_rejected_total", [("reason", "deadline")])
        job.complete(.expired(queueWait: .now - job.enqueuedAt))
    }

    /// How much lower than the HTTP thread compute threads run (nice increment, Linux 0...19 scale).
    ///
    /// The HTTP thread answers the rejections (429, 503), health checks and metrics. With every core busy computing,
    /// at equal priority it waits for a time slice behind the workers, so shedding load becomes slow exactly when it
    /// matters: loadtest/faults/overload at 3x capacity measured 429s at p50 5-340 ms, p99 0.1-1.6 s on the shared
    /// 2-core VM, against p50 1.4-1.7 ms, p99 20-58 ms with compute at +10 (same runs, interleaved). Nice only
    /// weighs threads that compete: the workers still get every cycle the HTTP thread does not use.
    static let computeNiceIncrement: Int32 = 10

    /// Names the calling compute thread "onestep-compute" (visible in `top -H`, /proc) and lowers its priority by
    /// `computeNiceIncrement`. On Linux the nice value is per thread and PRIO_PROCESS with who = 0 means the
    /// calling thread only; lowering it needs no privilege.
    static func becomeComputeThread() {
        // pthread_setname_np is not visible from Swift, and Foundation's Thread.name reaches the OS only when it
        // wins a race with Thread.start; the thread's own comm file is the plain way.
        if let comm = fopen("/proc/thread-self/comm", "w") {
            fputs("onestep-compute", comm)
            fclose(comm)
        }
        let which = __priority_which_t(PRIO_PROCESS.rawValue)
        errno = 0
        let current = getpriority(which, 0)
        guard errno == 0 else { return }
        _ = setpriority(which, 0, min(19, current + computeNiceIncrement))
    }

    private func workerLoop() {
        Self.becomeComputeThread()
        // The team's helpers are created by this thread after its nice change, so they inherit it.
        if coresPerBatch > 1 { BufferPool.forCurrentThread.team = ThreadTeam(threads: coresPerBatch) }
        while true {
            let (batch, expired) = queue.nextBatch()
            for job in expired { expire(job) }
            if let batch { run(batch); continue }
            if expired.isEmpty { return }
        }
    }

    func run(_ batch: Batch) {
        let start = ContinuousClock.now
        // Jobs whose clients left after being taken from the queue are skipped, not computed.
        let live = batch.jobs.filter { job in
            if job.isCancelled() {
                metrics.increment("onestep_rejected_total", [("reason", "client_gone")])
                return false
            }
            return true
        }
        let images = live.reduce(0) { $0 + $1.images.count }
        defer { queue.finished(model: batch.model, images: images, elapsed: .now - start) }
        guard !live.isEmpty else { return }
        for job in live {
            metrics.observe("onestep_queue_wait_seconds", [], seconds(start - job.enqueuedAt))
        }
        let pngs: [[UInt8]]
        switch models.model(batch.model) {
        case nil:
            for job in live { job.complete(.failed("model \(batch.model) is not loaded")) }
            return
        case .pixel(let loaded)?:
            // Guidance 1 is the conditional model itself: no second forward, the same bytes as no guidance_scale.
            var pipeline = loaded
            if loaded.takesClassGuidance, batch.guidanceScale != 1 {
                do { pipeline = try loaded.withClassGuidance(batch.guidanceScale) } catch {
                    for job in live { job.complete(.failed("guidance_scale \(batch.guidanceScale): \(error)")) }
                    return
                }
            }
            let output = pipeline.generate(live.flatMap(\.images), steps: batch.steps)
            do { pngs = try ImagePipeline.pngs(output) } catch {
                for job in live { job.complete(.failed("PNG encoding failed: \(error)")) }
                return
            }
        case .text(let model)?:
            do { pngs = try generateText(model, batch, live) } catch {
                for job in live { job.complete(.failed("text-to-image generation failed: \(error)")) }
                return
            }
        }
        guard pngs.count == images else {  // a pipeline bug: answered as a 500, never a crash
            for job in live { job.complete(.failed("model \(batch.model) answered \(pngs.count) images for \(images) requests")) }
            return
        }
        let compute = ContinuousClock.now - start
        metrics.observe("onestep_batch_size_images", [], Double(images))
        metrics.observe("onestep_compute_seconds", [("model", batch.model)], seconds(compute))
        metrics.increment("onestep_images_generated_total", [("model", batch.model)], by: Double(images))
        var offset = 0
        for job in live {
            let mine = Array(pngs[offset..<(offset + job.images.count)])
            offset += job.images.count
            job.complete(.done(pngs: mine, queueWait: start - job.enqueuedAt, compute: compute, batchImages: images))
        }
    }

    /// One sampler run for the whole batch, with prompt embeddings from the cache. Each prompt is encoded alone
    /// (1, 77, D) and the batch's (N, 77, D) is stacked from those rows, so an image's conditioning never depends
    /// on which other prompts share its batch.
    func generateText(_ model: TextToImagePipeline, _ batch: Batch, _ live: [GenerationJob]) throws -> [[UInt8]] {
        let requests = live.flatMap(\.text)
        let size = batch.size ?? model.defaultImageSize
        let images = try model.generate(requests, steps: batch.steps, width: size.width, height: size.height,
                                        decoder: batch.decoder, textEmbeddings: { try self.promptEmbeddings(model, $0) })
        return try ImagePipeline.pngs(images)
    }

    /// (N, 77, D) for `prompts`: each row from the cache or the text encoder; counts hits and misses by model.
    func promptEmbeddings(_ model: TextToImagePipeline, _ prompts: [String]) throws -> Tensor {
        var rows: [Tensor] = []
        for prompt in prompts {
            let key = EmbeddingKey(model: model.name, prompt: prompt)
            if let e = embeddings.lookup(key) {
                metrics.increment("onestep_text_embedding_cache_hits_total", [("model", model.name)])
                rows.append(e)
                continue
            }
            metrics.increment("onestep_text_embedding_cache_misses_total", [("model", model.name)])
            let e = try model.encode([prompt])  // (1, 77, D)
            embeddings.insert(key, e)
            rows.append(e)
        }
        var data: [Float] = []
        data.reserveCapacity(rows.reduce(0) { $0 + $1.count })
        for r in rows { data += r.data }
        return Tensor(shape: [rows.count] + Array(rows[0].shape.dropFirst()), data: data)
    }
}

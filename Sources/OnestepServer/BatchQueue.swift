// The dynamic batcher (after Triton's dynamic batcher and queue policy): requests for the same model, step
// count, size and guidance scale (`BatchKey`: what one sampler run shares) are gathered into one batch of up to
// `maxBatch` images, or fewer once the oldest has waited `maxDelay`.
// Among batches that are ready, a free worker takes one of the model with the fewest batches running, then the
// oldest: with several models loaded, a slow one (a 1000-step DDPM teacher: seconds a batch) cannot hold every
// worker while a one-step model's requests wait behind it, and nothing is reserved, so one model alone still gets
// every worker.
// The queue is bounded in images; a full queue refuses at once (429) instead of letting latency grow without
// bound. Work whose deadline passes while queued is dropped (503), and work whose client left is removed.
import Foundation
import OnestepCore
import Synchronization

/// One HTTP request's worth of images: all the same model and steps, answered together.
public final class GenerationJob: Sendable {
    public let id: UInt64
    public let model: String
    public let steps: Int
    public let images: [GenerationRequest]
    /// Text-to-image models: prompt and negative prompt per image, parallel to `images` (empty for pixel models).
    public let text: [TextGenerationRequest]
    /// Text-to-image models: the size every image of the job has (nil: a pixel model's own size).
    public let size: ImageSize?
    /// Text-to-image models: the guidance scale (0 for pixel models and models without guidance).
    public let guidanceScale: Double
    /// Text-to-image models: which decoder turns the latents into pixels (the model's vae/ or its TAESD).
    public let decoder: DecoderChoice
    public let enqueuedAt: ContinuousClock.Instant
    public let deadline: ContinuousClock.Instant
    /// Called exactly once, from a compute thread or the reaper, with the outcome.
    let complete: @Sendable (JobOutcome) -> Void
    /// True once nobody waits for the answer (client gone): checked again just before compute.
    let isCancelled: @Sendable () -> Bool

    public init(id: UInt64, model: String, steps: Int, images: [GenerationRequest], text: [TextGenerationRequest] = [],
                size: ImageSize? = nil, guidanceScale: Double = 0, decoder: DecoderChoice = .model, deadline: ContinuousClock.Instant,
                enqueuedAt: ContinuousClock.Instant = .now, isCancelled: @escaping @Sendable () -> Bool = { false },
                complete: @escaping @Sendable (JobOutcome) -> Void) {
        self.isCancelled = isCancelled
        self.id = id
        self.model = model
        self.steps = steps
        self.images = images
        self.text = text
        self.size = size
        self.guidanceScale = guidanceScale
        self.decoder = decoder
        self.deadline = deadline
        self.enqueuedAt = enqueuedAt
        self.complete = complete
    }
}

public enum JobOutcome: Sendable {
    /// PNG bytes per image, in request order.
    case done(pngs: [[UInt8]], queueWait: Duration, compute: Duration, batchImages: Int)
    /// Dropped before compute because its deadline passed.
    case expired(queueWait: Duration)
    /// The batch failed (never expected; reported as 500).
    case failed(String)
}

public enum SubmitResult: Sendable, Equatable {
    case accepted
    /// The queue holds `maxQueuedImages` already; retry after roughly this many seconds.
    case queueFull(retryAfterSeconds: Int)
    case draining
}

/// What every image of a batch must share: one sampler run has one model, one step schedule, one latent shape and
/// one guidance scale, and one decoder decodes the batch's latents. Prompts, negative prompts and seeds differ
/// freely within a batch (they are per image). The scale is keyed by its bit pattern, so 7.5 and 7.50000001
/// never share a batch.
struct BatchKey: Hashable {
    var model: String
    var steps: Int
    var size: ImageSize?
    var guidanceBits: UInt64
    var decoder: DecoderChoice

    init(model: String, steps: Int, size: ImageSize? = nil, guidanceScale: Double = 0, decoder: DecoderChoice = .model) {
        (self.model, self.steps, self.size, self.guidanceBits, self.decoder) = (model, steps, size, guidanceScale.bitPattern, decoder)
    }

    init(_ job: GenerationJob) {
        self.init(model: job.model, steps: job.steps, size: job.size, guidanceScale: job.guidanceScale, decoder: job.decoder)
    }

    var guidanceScale: Double { Double(bitPattern: guidanceBits) }
}

/// A batch a worker runs: jobs of one key, at most maxBatch images (one larger job runs alone).
public struct Batch: Sendable {
    public var model: String
    public var steps: Int
    /// Text-to-image models: the batch's size and guidance scale (from its `BatchKey`).
    public var size: ImageSize? = nil
    public var guidanceScale: Double = 0
    /// Text-to-image models: the decoder of every image of the batch (from its `BatchKey`).
    public var decoder: DecoderChoice = .model
    public var jobs: [GenerationJob]
    public var imageCount: Int { jobs.reduce(0) { $0 + $1.images.count } }
}

public final class BatchQueue: @unchecked Sendable {
    // Guarded by `condition`'s lock: all mutable state below.
    private let condition = NSCondition()
    private var groups: [BatchKey: [GenerationJob]] = [:]
    private var queuedImages = 0
    private var draining = false
    private var stopped = false
    private var running = 0  // batches being computed
    private var runningByModel: [String: Int] = [:]

    public let maxBatch: Int
    public let maxDelay: Duration
    public let maxQueuedImages: Int
    /// Seconds of work one image takes, smoothed; used for Retry-After.
    private var secondsPerImage = 0.01

    public init(maxBatch: Int, maxDelay: Duration, maxQueuedImages: Int) {
        precondition(maxBatch >= 1 && maxQueuedImages >= 1, "batch and queue limits must be positive")
        self.maxBatch = maxBatch
        self.maxDelay = maxDelay
        self.maxQueuedImages = maxQueuedImages
    }

    /// Images waiting (not yet in a running batch).
    public var depth: Int { condition.lock(); defer { condition.unlock() }; return queuedImages }
    public var runningBatches: Int { condition.lock(); defer { condition.unlock() }; return running }

    public func submit(_ job: GenerationJob) -> SubmitResult {
        condition.lock()
        defer { condition.unlock() }
        if draining || stopped { return .draining }
        guard queuedImages + job.images.count <= maxQueuedImages else {
            let wait = Double(queuedImages) * secondsPerImage
            return .queueFull(retryAfterSeconds: max(1, Int(wait.rounded(.up))))
        }
        groups[BatchKey(job), default: []].append(job)
        queuedImages += job.images.count
        condition.broadcast()
        return .accepted
    }

    /// Removes a job that is still queued (its client disconnected). Returns false if it already left the queue.
    @discardableResult
    public func cancel(_ job: GenerationJob) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let key = BatchKey(job)
        guard let i = groups[key]?.firstIndex(where: { $0 === job }) else { return false }
        groups[key]!.remove(at: i)
        if groups[key]!.isEmpty { groups[key] = nil }
        queuedImages -= job.images.count
        return true
    }

    /// Removes and returns every queued job whose deadline has passed; the caller answers them.
    public func takeExpired(now: ContinuousClock.Instant = .now) -> [GenerationJob] {
        condition.lock()
        defer { condition.unlock() }
        return removeExpiredLocked(now: now)
    }

    private func removeExpiredLocked(now: ContinuousClock.Instant) -> [GenerationJob] {
        var expired: [GenerationJob] = []
        for (key, jobs) in groups {
            let keep = jobs.filter { $0.deadline > now }
            guard keep.count != jobs.count else { continue }
            expired += jobs.filter { $0.deadline <= now }
            groups[key] = keep.isEmpty ? nil : keep
        }
        queuedImages -= expired.reduce(0) { $0 + $1.images.count }
        return expired
    }

    /// Blocks until a batch is ready, and returns it with the jobs that expired meanwhile (for the caller to
    /// answer). Returns nil once the queue is stopped, or draining and empty.
    public func nextBatch() -> (Batch?, expired: [GenerationJob]) {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let now = ContinuousClock.now
            let expired = removeExpiredLocked(now: now)
            if !expired.isEmpty { return (nil, expired) }
            if stopped || (draining && groups.isEmpty) { return (nil, []) }
            if groups.isEmpty {
                condition.wait()
                continue
            }
            // Ready groups: full, or their head has waited maxDelay. Fewest running batches of the model first, then
            // the oldest head.
            let ready = groups.filter { _, jobs in
                draining || now >= jobs[0].enqueuedAt + maxDelay || jobs.reduce(0) { $0 + $1.images.count } >= maxBatch
            }
            if let (key, jobs) = ready.min(by: { a, b in
                let ra = runningByModel[a.key.model, default: 0], rb = runningByModel[b.key.model, default: 0]
                return ra != rb ? ra < rb : a.value[0].enqueuedAt < b.value[0].enqueuedAt
            }) {
                var taken: [GenerationJob] = []
                var count = 0
                var rest = jobs
                while let j = rest.first, taken.isEmpty || count + j.images.count <= maxBatch {
                    taken.append(j)
                    count += j.images.count
                    rest.removeFirst()
                }
                groups[key] = rest.isEmpty ? nil : rest
                queuedImages -= count
                running += 1
                runningByModel[key.model, default: 0] += 1
                return (Batch(model: key.model, steps: key.steps, size: key.size, guidanceScale: key.guidanceScale, decoder: key.decoder, jobs: taken), [])
            }
            // Nothing ready: sleep until the first head is due or the first deadline passes (or a submit wakes us).
            let due = groups.values.map { $0[0].enqueuedAt + maxDelay }.min()!
            let earliestDeadline = groups.values.flatMap { $0 }.map(\.deadline).min() ?? due
            _ = condition.wait(until: Date(timeIntervalSinceNow: seconds(min(due, earliestDeadline) - now) + 0.0002))
        }
    }

    /// A worker finished a batch of `model` (`images` computed in `elapsed`).
    public func finished(model: String, images: Int, elapsed: Duration) {
        condition.lock()
        running -= 1
        runningByModel[model, default: 1] -= 1
        if runningByModel[model] == 0 { runningByModel[model] = nil }
        let perImage = seconds(elapsed) / Double(max(1, images))
        secondsPerImage = 0.8 * secondsPerImage + 0.2 * perImage
        condition.broadcast()
        condition.unlock()
    }

    /// Stop taking work; queued work still runs, and workers stop waiting for more to fill a batch.
    public func beginDrain() {
        condition.lock()
        draining = true
        condition.broadcast()
        condition.unlock()
    }

    /// True once draining with nothing queued and nothing running.
    public var isIdle: Bool {
        condition.lock()
        defer { condition.unlock() }
        return groups.isEmpty && running == 0
    }

    /// Wakes every worker to exit; what is still queued is returned for the caller to answer.
    public func stop() -> [GenerationJob] {
        condition.lock()
        defer { condition.unlock() }
        stopped = true
        let left = groups.values.flatMap { $0 }
        groups = [:]
        queuedImages = 0
        condition.broadcast()
        return left
    }
}

@inline(__always)
func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

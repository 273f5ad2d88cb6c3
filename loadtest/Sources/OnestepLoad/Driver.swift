// The I/O loop: one HTTP client (the built-in one or libcurl's multi interface, see Transport.swift) driving one
// connection slot per request in flight, per thread. With
// `--threads T` (default: the core count) T such loops run side by side, each with its share of the connections
// (and, open loop, the requests i with i mod T == its lane, each at its own S_i); their results are merged into
// one set of histograms after the run.
//
// Open loop: every pass releases the requests whose intended time S_i has come (OpenLoopPacer), sends as many as
// there are free slots, lets libcurl work, records completions, and sleeps (epoll, in CurlMulti.poll) until the
// next S_i (or socket activity). A request that finds every slot busy waits in a FIFO queue; it keeps its S_i, so
// the wait shows in its corrected latency and, past `lateAfter`, in the "not sent on time" count.
// Closed loop: each free slot sends the next request at once (intended = actual send).
//
// End of run: sending stops when the schedule is exhausted (or, with a stalled server, `timeout` after its last
// S_i; requests still queued then are recorded as `unsent`). Requests in flight at that moment are waited for — each
// carries its own libcurl timeout — and reported as `inFlightAtEnd` / `completedAfterEnd`.
import Foundation
import PNGCodec
import Synchronization

/// Monotonic clock in nanoseconds.
@inline(__always) func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Set from the SIGINT handler: stop sending, drain, report.
let interruptRequested = Atomic<Bool>(false)

/// What the live line shows.
public struct ProgressSnapshot: Sendable {
    public var elapsed: Double
    public var phase: Phase
    public var sent: Int
    public var responses: Int
    public var errors: Int
    public var inFlight: Int
    public var queued: Int
    public var p50: Double
    public var p99: Double
}

/// A request handed to libcurl and not finished yet.
private struct InFlight {
    var index: Int
    var phase: Phase
    var urlIndex: Int
    var intended: UInt64
    var sent: UInt64
    /// `--abort-after` chose this request: a timeout is the planned disconnect, not an error.
    var abortPlanned = false
}

public final class LoadDriver {
    public let config: LoadConfig
    public private(set) var results: RunResults
    /// First message seen per error class, for the report.
    public private(set) var errorExamples: [ErrorClass: String] = [:]
    /// Called about once a second with the live figures.
    public var onProgress: ((ProgressSnapshot) -> Void)?
    /// What the `--idle-connections` / `--slowloris` clients saw; nil when there were none.
    public private(set) var backgroundReport: BackgroundReport?

    private let transport: HTTPTransport?
    /// This loop's lane of `lanes` (see the header); a coordinator of several threads has lanes == 1 and no slots.
    private let lane: Int
    private let lanes: Int
    /// Threads `run()` starts: 1 runs the loop here.
    private let threadCount: Int
    private var freeSlots: [Int] = []
    private var inFlight: [InFlight?]
    private var inFlightCount = 0
    private var drainStarted = false
    private var raw: RawWriter?
    private let fixedURLs: [String]
    private let fixedBody: [UInt8]?
    private let templated: Bool
    private var t0: UInt64 = 0
    private let minSleepMs: Int

    /// - Precondition: the config was validated (`LoadConfig` from `Arguments.parse`).
    public convenience init(config: LoadConfig, raw: RawWriter? = nil) {
        self.init(config: config, raw: raw, lane: 0, lanes: 1)
    }

    /// `lanes > 1`: one of the threads of a threaded run, owning its share of the slots and requests.
    init(config: LoadConfig, raw: RawWriter?, lane: Int, lanes: Int) {
        precondition(!config.request.urls.isEmpty, "need at least one URL")
        self.config = config
        self.lane = lane
        self.lanes = lanes
        let rate: Double? = { if case .openLoop(let r) = config.mode { return r } else { return nil } }()
        results = RunResults(lateAfterNanos: config.lateAfterNanos, requestedRate: rate)
        let totalSlots: Int
        switch config.mode {
        case .openLoop: totalSlots = config.connections
        case .closedLoop(let c): totalSlots = c
        }
        threadCount = lanes == 1 ? config.effectiveThreads : 1
        let slotCount = threadCount > 1 ? 0 : Self.share(totalSlots, lane: lane, of: lanes)
        let keepBody = config.expect != .none
        let r = config.request
        if slotCount == 0 {
            transport = nil
        } else if config.effectiveEngine == .builtin {
            transport = BuiltinHTTPTransport(slots: slotCount, method: r.method, headers: r.headers,
                                             timeout: config.timeout, keepBody: keepBody)
        } else {
            let connections = Swift.max(1, Self.share(config.connections, lane: lane, of: lanes))
            transport = CurlTransport(slots: slotCount, maxConnections: Swift.min(slotCount, connections),
                                      method: r.method, headers: r.headers, timeout: config.timeout, keepBody: keepBody)
        }
        freeSlots = Array((0..<slotCount).reversed())
        inFlight = Array(repeating: nil, count: slotCount)
        self.raw = raw
        templated = config.request.isTemplated
        fixedURLs = config.request.urls
        fixedBody = config.request.body
        minSleepMs = Int((config.minSleep * 1000).rounded(.up))
    }

    /// `total` split over `lanes`: the first `total mod lanes` lanes take one more.
    static func share(_ total: Int, lane: Int, of lanes: Int) -> Int {
        total / lanes + (lane < total % lanes ? 1 : 0)
    }

    private func now() -> UInt64 { monotonicNanos() &- t0 }

    /// Runs the whole test and returns what was recorded.
    public func run() -> RunResults {
        // Idle connections are all open before T0, so the measured traffic runs beside every one of them.
        let background = config.background.map { BackgroundClients(plan: $0) }
        background?.start()
        defer { backgroundReport = background?.stop() }
        t0 = monotonicNanos()
        results.startedAtUnix = Date().timeIntervalSince1970
        if threadCount > 1 { runThreads() } else { runLoop() }
        raw?.close()
        return results
    }

    private func runLoop() {
        switch config.mode {
        case .openLoop:
            guard let schedule = config.schedule else { preconditionFailure("open loop without a schedule") }
            runOpenLoop(schedule)
        case .closedLoop:
            runClosedLoop()
        }
    }

    /// Runs `threadCount` loops on their own threads from the same T0 and merges what they recorded.
    private func runThreads() {
        struct Lane: @unchecked Sendable { let driver: LoadDriver }  // each driver is touched by one thread at a time
        let drivers = (0..<threadCount).map { LoadDriver(config: config, raw: raw, lane: $0, lanes: threadCount) }
        for d in drivers { d.t0 = t0 }
        let group = DispatchGroup()
        for d in drivers {
            let lane = Lane(driver: d)
            group.enter()
            let thread = Thread {
                lane.driver.runLoop()
                group.leave()
            }
            thread.name = "onestep-load-\(d.lane)"
            thread.start()
        }
        group.wait()
        for d in drivers {
            if results.measuredStart == 0 { results.measuredStart = d.results.measuredStart }
            results.merge(d.results)
            errorExamples.merge(d.errorExamples) { first, _ in first }
        }
    }

    // MARK: Open loop

    private func runOpenLoop(_ schedule: OpenLoopSchedule) {
        var pacer = OpenLoopPacer(schedule: schedule, lane: lane, lanes: lanes)
        var queue: [Int] = []  // due, waiting for a free slot (FIFO: queueHead is the oldest)
        var queueHead = 0
        results.measuredStart = schedule.measuredStartOffset
        let lastIntended = schedule.totalCount > 0 ? schedule.intendedOffset(schedule.totalCount - 1) : 0
        let sendDeadline = lastIntended + UInt64(config.timeout * 1e9)
        var nextProgress: UInt64 = 1_000_000_000

        while true {
            var t = now()
            if !drainStarted {
                let stop = interruptRequested.load(ordering: .relaxed) || t > sendDeadline
                if !stop {
                    queue.append(contentsOf: pacer.releaseLane(upTo: t))
                    while queueHead < queue.count, let slot = freeSlots.popLast() {
                        let i = queue[queueHead]
                        queueHead += 1
                        start(index: i, phase: schedule.phase(of: i), intended: schedule.intendedOffset(i),
                              slot: slot, at: now())
                    }
                    if queueHead > 4096 && queueHead * 2 > queue.count {
                        queue.removeFirst(queueHead); queueHead = 0
                    }
                }
                if stop || (pacer.isFinished && queueHead == queue.count) {
                    // Whatever is still scheduled or queued will not go out.
                    let unsent = Array(queue[queueHead...]) + Array(pacer.unreleased)
                    for i in unsent {
                        results.record(Outcome(index: i, phase: schedule.phase(of: i), intended: schedule.intendedOffset(i),
                                               sent: t, done: t, status: 0, error: .unsent, errorKind: "unsent"))
                    }
                    beginDrain(at: t)
                }
            }
            transport!.perform()
            let finished = collect()
            if drainStarted && inFlightCount == 0 { break }
            t = now()
            if t >= nextProgress { report(progressAt: t, queued: queue.count - queueHead); nextProgress = t + 1_000_000_000 }
            if drainStarted && t > sendDeadline + UInt64(config.timeout * 1e9) + 1_000_000_000 {
                abandonInFlight(at: t)
                break
            }
            // Freed slots and waiting requests: go round again without sleeping.
            if finished > 0 && queueHead < queue.count && !freeSlots.isEmpty { continue }
            var waitMs = 100
            if !drainStarted, freeSlots.isEmpty == false || queueHead == queue.count, let dt = pacer.nanosUntilNext(from: t) {
                waitMs = Int(dt / 1_000_000)  // round down: better to wake early than to send late
            }
            waitMs = Swift.max(waitMs, minSleepMs)  // --min-sleep: give the core back instead of spinning
            transport!.poll(timeoutMs: waitMs)  // 0: only looks, so sockets are served while the pacer spins
        }
    }

    // MARK: Closed loop

    private func runClosedLoop() {
        let warmupNanos = UInt64(config.warmup * 1e9)
        let endNanos: UInt64? = config.requests == nil ? warmupNanos + UInt64((config.duration ?? 0) * 1e9) : nil
        var nextIndex = lane  // request indices of this lane: lane, lane + lanes, ... (unique over the threads)
        var measuredSent = 0
        let requests = config.requests.map { Self.share($0, lane: lane, of: lanes) }
        results.measuredStart = warmupNanos
        var nextProgress: UInt64 = 1_000_000_000
        while true {
            var t = now()
            if !drainStarted {
                let limitReached = requests.map { measuredSent >= $0 } ?? false
                if interruptRequested.load(ordering: .relaxed) || limitReached || (endNanos.map { t >= $0 } ?? false) {
                    beginDrain(at: t)
                } else {
                    while let slot = freeSlots.popLast() {
                        let phase: Phase = t < warmupNanos ? .warmup : .measured
                        if phase == .measured, let n = requests, measuredSent >= n {
                            freeSlots.append(slot); break
                        }
                        if phase == .measured { measuredSent += 1 }
                        start(index: nextIndex, phase: phase, intended: t, slot: slot, at: t)
                        nextIndex += lanes
                        t = now()
                    }
                }
            }
            transport!.perform()
            let finished = collect()
            if drainStarted && inFlightCount == 0 { break }
            t = now()
            if t >= nextProgress { report(progressAt: t, queued: 0); nextProgress = t + 1_000_000_000 }
            if finished > 0 && !drainStarted { continue }
            var waitMs = 100
            if let endNanos, !drainStarted, endNanos > t { waitMs = Swift.min(waitMs, Int((endNanos - t) / 1_000_000)) }
            if !drainStarted, t < warmupNanos { waitMs = Swift.min(waitMs, Int((warmupNanos - t) / 1_000_000)) }
            transport!.poll(timeoutMs: waitMs)
        }
    }

    // MARK: Per request

    private func start(index: Int, phase: Phase, intended: UInt64, slot: Int, at sent: UInt64) {
        let urlIndex = index % fixedURLs.count
        let abortMs = config.abort?.abortMilliseconds(forIndex: index)
        if templated {
            let seed = config.request.seedStart + index
            let url = Template.render(fixedURLs[urlIndex], seed: seed, index: index)
            let body = fixedBody.map { Array(Template.render(String(decoding: $0, as: UTF8.self), seed: seed, index: index).utf8) }
            transport!.start(slot: slot, url: url, body: body, timeoutMs: abortMs)
        } else {
            transport!.start(slot: slot, url: fixedURLs[urlIndex], body: fixedBody, timeoutMs: abortMs)
        }
        inFlight[slot] = InFlight(index: index, phase: phase, urlIndex: urlIndex, intended: intended, sent: sent,
                                  abortPlanned: abortMs != nil)
        inFlightCount += 1
    }

    /// Records every finished transfer and frees its slot; returns how many finished.
    private func collect() -> Int {
        let transport = transport!
        let completions = transport.completions()
        guard !completions.isEmpty else { return 0 }
        let done = now()
        for c in completions {
            guard let f = inFlight[c.slot] else { continue }
            transport.release(slot: c.slot)
            inFlight[c.slot] = nil
            inFlightCount -= 1
            freeSlots.append(c.slot)
            var status = 0
            var error = c.error
            var kind = c.kind
            var message = c.message
            var aborted: AbortStage?
            if error == .timeout && f.abortPlanned {
                // The planned disconnect: classify by how far the response had got, and count it apart.
                aborted = transport.responseCode(slot: c.slot) != 0 || transport.bodyBytes(slot: c.slot) > 0 ? .duringResponse : .beforeResponse
                error = nil
                kind = nil
                status = transport.responseCode(slot: c.slot)
            } else if error == nil {
                status = transport.responseCode(slot: c.slot)
                if !(200...399).contains(status) {
                    error = .status
                    kind = "http_\(status)"
                    message = "HTTP \(status)"
                } else if let problem = check(transport.body(slot: c.slot)) {
                    error = .invalid
                    kind = "bad_body"
                    message = problem
                }
            } else {
                status = transport.responseCode(slot: c.slot)  // may be set when headers arrived before a timeout
            }
            if let error, errorExamples[error] == nil { errorExamples[error] = message }
            let outcome = Outcome(index: f.index, phase: f.phase, urlIndex: f.urlIndex, intended: f.intended,
                                  sent: f.sent, done: done, status: status, error: error, bytes: transport.bodyBytes(slot: c.slot),
                                  errorKind: error == nil ? nil : kind, aborted: aborted)
            results.record(outcome)
            if drainStarted, aborted == nil, outcome.error == nil || outcome.error == .status || outcome.error == .invalid {
                results.completedAfterEnd += 1
            }
            raw?.write(outcome)
        }
        return completions.count
    }

    /// The `--expect` check of one body; nil when it passes.
    private func check(_ body: [UInt8]) -> String? {
        guard case .png(let w, let h) = config.expect else { return nil }
        do {
            let image = try PNG.decode(body)
            if let w, let h, image.width != w || image.height != h {
                return "PNG is \(image.width)x\(image.height), expected \(w)x\(h)"
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    private func beginDrain(at t: UInt64) {
        drainStarted = true
        results.sendingEnded = t
        results.inFlightAtEnd = inFlightCount
    }

    /// The drain ran out: whatever is still in flight is recorded as a timeout.
    private func abandonInFlight(at t: UInt64) {
        for s in inFlight.indices {
            guard let f = inFlight[s] else { continue }
            transport!.release(slot: s)
            inFlight[s] = nil
            let o = Outcome(index: f.index, phase: f.phase, urlIndex: f.urlIndex, intended: f.intended, sent: f.sent,
                            done: t, status: 0, error: .timeout, errorKind: "timeout")
            results.record(o)
            raw?.write(o)
        }
        inFlightCount = 0
    }

    private func report(progressAt t: UInt64, queued: Int) {
        guard let onProgress else { return }
        let inMeasured = t >= results.measuredStart
        let s = inMeasured ? results.measured : results.warmup
        onProgress(ProgressSnapshot(elapsed: Double(t) / 1e9, phase: inMeasured ? .measured : .warmup,
                                    sent: s.sent, responses: s.responses, errors: s.errors,
                                    inFlight: inFlightCount, queued: queued,
                                    p50: Double(s.corrected.value(atPercentile: 50)) / 1e6,
                                    p99: Double(s.corrected.value(atPercentile: 99)) / 1e6))
    }
}

/// `--raw FILE.csv`: one line per request, written as requests finish.
public final class RawWriter: @unchecked Sendable {
    private let file: UnsafeMutablePointer<FILE>
    /// Several `--threads` write lines; each line goes out whole.
    private let lock = NSLock()

    public static let header = "index,phase,url_index,intended_ms,sent_ms,done_ms,status,error,bytes,corrected_ms,uncorrected_ms,queueing_ms\n"

    /// Opens (truncates) `path`; nil when it cannot be written.
    public init?(path: String) {
        guard let f = fopen(path, "w") else { return nil }
        file = f
        fputs(RawWriter.header, file)
    }

    func write(_ o: Outcome) {
        func ms(_ ns: UInt64) -> String { String(format: "%.3f", Double(ns) / 1e6) }
        func msMicros(_ us: Int64) -> String { String(format: "%.3f", Double(us) / 1e3) }
        let line = "\(o.index),\(o.phase.rawValue),\(o.urlIndex),\(ms(o.intended)),\(ms(o.sent)),\(ms(o.done)),"
            + "\(o.status),\(o.error?.rawValue ?? o.aborted.map { "aborted_" + $0.rawValue } ?? ""),\(o.bytes),\(msMicros(o.correctedMicros)),"
            + "\(msMicros(o.uncorrectedMicros)),\(msMicros(o.queueingMicros))\n"
        lock.lock()
        fputs(line, file)
        lock.unlock()
    }

    func close() { fflush(file) }

    deinit { fclose(file) }
}

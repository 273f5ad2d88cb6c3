// Everything a run needs, after flags and the scenario file have been merged and checked.
import Foundation

/// How requests are paced.
public enum LoadMode: Sendable, Equatable {
    /// Constant rate, requests/s, independent of responses (latency from the intended send time).
    case openLoop(rate: Double)
    /// A fixed number of requests in flight, each sent as soon as the previous one on its slot finished.
    case closedLoop(concurrency: Int)
}

/// What every response body must be.
public enum ResponseExpectation: Sendable, Equatable, CustomStringConvertible {
    /// Any body is fine (only the status code is checked).
    case none
    /// A PNG that libpng decodes, optionally of exactly width x height pixels.
    case png(width: Int?, height: Int?)

    public var description: String {
        switch self {
        case .none: return "none"
        case .png(let w?, let h?): return "png:\(w)x\(h)"
        case .png: return "png"
        }
    }
}

/// The request sent each time; URL and body may hold `{{seed}}` / `{{index}}`.
public struct RequestTemplate: Sendable, Equatable {
    public var urls: [String]
    public var method: String = "GET"
    /// "Name: value" lines, sent as given.
    public var headers: [String] = []
    public var body: [UInt8]? = nil
    /// `{{seed}}` becomes seedStart + request index.
    public var seedStart: Int = 0

    public init(urls: [String], method: String = "GET", headers: [String] = [], body: [UInt8]? = nil,
                seedStart: Int = 0) {
        self.urls = urls; self.method = method; self.headers = headers; self.body = body; self.seedStart = seedStart
    }

    /// Whether anything varies per request (then URL and body are rendered for each one).
    public var isTemplated: Bool {
        urls.contains(where: Template.hasPlaceholder) || body.map { Template.hasPlaceholder(String(decoding: $0, as: UTF8.self)) } == true
    }
}

/// Expands the per-request placeholders.
public enum Template {
    static let placeholders = ["{{seed}}", "{{index}}"]

    public static func hasPlaceholder(_ s: String) -> Bool { placeholders.contains(where: s.contains) }

    /// Replaces `{{seed}}` with `seed` and `{{index}}` with `index`.
    public static func render(_ s: String, seed: Int, index: Int) -> String {
        guard s.contains("{{") else { return s }
        return s.replacingOccurrences(of: "{{seed}}", with: String(seed))
            .replacingOccurrences(of: "{{index}}", with: String(index))
    }
}

public struct LoadConfig: Sendable, Equatable {
    public var request: RequestTemplate
    public var mode: LoadMode
    /// Seconds of measured load (ignored when `requests` is set).
    public var duration: Double?
    /// Number of measured requests.
    public var requests: Int?
    /// Seconds of warmup before the measured part.
    public var warmup: Double = 0
    /// Per-request timeout, seconds (connect included).
    public var timeout: Double = 10
    /// Most requests in flight, which is also the most connections opened.
    public var connections: Int
    public var expect: ResponseExpectation = .none
    /// Lag past the intended send time after which a request is "not sent on time"; nil = one interval, >= 1 ms.
    public var lateAfter: Double? = nil
    public var thresholds: [Threshold] = []
    /// Most failed share of the measured requests before the run fails (exit 1); nil = no budget. Only applied
    /// when no `--fail-if` names error_rate. Default 1%: a run whose requests all failed is never green.
    public var errorBudget: Double? = LoadConfig.defaultErrorBudget
    public static let defaultErrorBudget: Double? = 0.01
    public var jsonPath: String? = nil
    public var rawPath: String? = nil
    public var plotPath: String? = nil
    /// Print the live line on stderr (only when stderr is a terminal).
    public var progress: Bool = true
    /// Print the long percentile spectrum in the text report.
    public var spectrum: Bool = true
    /// `--abort-after` / `--abort-fraction`: requests the client abandons on purpose (disconnect tests).
    public var abort: AbortPlan? = nil
    /// `--min-sleep`: the shortest wait of the open-loop pacer between passes. 0 (default) spins when the next S_i
    /// is under 1 ms away, which keeps a core busy at high rates; on a machine the server shares, 1ms gives that
    /// core back at the price of requests leaving up to about 1 ms after S_i (visible as queueing).
    public var minSleep: Double = 0
    /// `--threads`: I/O threads, each with its own libcurl multi handle and a share of the connections (and of
    /// the open-loop schedule, request i going to thread i mod T); their histograms are merged into one report.
    /// Never more than the connections.
    public var threads: Int = LoadConfig.defaultThreads
    public static var defaultThreads: Int { Swift.max(1, ProcessInfo.processInfo.activeProcessorCount) }
    /// The threads a run uses: `threads`, but no more than there are connection slots.
    public var effectiveThreads: Int {
        let slots: Int
        switch mode {
        case .openLoop: slots = connections
        case .closedLoop(let c): slots = c
        }
        return Swift.max(1, Swift.min(threads, slots, connections))
    }
    /// `--engine`: the HTTP client (Transport.swift); `auto` picks the built-in one when it can serve the URLs.
    public var engine: HTTPEngine = .auto
    /// `--idle-connections`, `--slowloris`: raw-socket clients held open beside the measured traffic.
    public var background: BackgroundPlan? = nil

    public init(request: RequestTemplate, mode: LoadMode, connections: Int) {
        self.request = request; self.mode = mode; self.connections = connections
    }

    /// The open-loop schedule, nil in closed loop.
    public var schedule: OpenLoopSchedule? {
        guard case .openLoop(let rate) = mode else { return nil }
        return OpenLoopSchedule(rate: rate, warmup: warmup, duration: duration, requests: requests)
    }

    public var lateAfterNanos: UInt64 {
        if let lateAfter { return UInt64(lateAfter * 1e9) }
        return schedule?.defaultLateAfterNanos ?? 1_000_000
    }
}

/// Parses human durations: "250ms", "1.5s", "2m", "1h", "500us"; a bare number uses `defaultUnit` (seconds).
public func parseDuration(_ text: String, defaultUnit: Double = 1) -> Double? {
    let units: [(String, Double)] = [("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    for (suffix, scale) in units where t.hasSuffix(suffix) {
        let number = t.dropLast(suffix.count)
        // "ms" also ends in "s": only accept when what is left is a plain number.
        if let v = Double(number), v.isFinite, v >= 0 { return v * scale }
    }
    if let v = Double(t), v.isFinite, v >= 0 { return v * defaultUnit }
    return nil
}

/// Parses "32x32" into (width, height).
func parseSize(_ text: String) -> (Int, Int)? {
    let parts = text.lowercased().split(separator: "x")
    guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]), w > 0, h > 0 else { return nil }
    return (w, h)
}

/// Parses `--expect`: "none", "png", "png:32x32".
func parseExpectation(_ text: String) -> ResponseExpectation? {
    let t = text.lowercased()
    if t == "none" { return ResponseExpectation.none }
    if t == "png" { return .png(width: nil, height: nil) }
    if t.hasPrefix("png:"), let (w, h) = parseSize(String(t.dropFirst(4))) { return .png(width: w, height: h) }
    return nil
}

/// Whether a URL is one of onestep-serve's image routes (then `--expect png` is the default).
func isImageRoute(_ url: String) -> Bool {
    let path = url.split(separator: "?", maxSplits: 1).first.map(String.init) ?? url
    return path.hasSuffix("/v1/generate") || path.lowercased().hasSuffix(".png")
}

// Command line and scenario file -> LoadConfig. Flags override the scenario; every bad value is a UsageError
// (exit code 2) whose message names the flag.
import Foundation

/// A scenario file: the same settings as the flags, in JSON (see loadtest/scenarios/*.json and the README).
public struct Scenario: Codable, Sendable, Equatable {
    public var urls: [String]?
    public var url: String?
    public var method: String?
    public var headers: [String: String]?
    /// Inline body, or "@path" (relative to the scenario file) to read it from a file.
    public var body: String?
    public var rate: Double?
    public var concurrency: Int?
    public var connections: Int?
    public var duration: String?
    public var requests: Int?
    public var warmup: String?
    public var timeout: String?
    public var expect: String?
    public var fail_if: [String]?
    public var seed_start: Int?
    public var late_after: String?
    /// "1%", "0.05" or "off" (see --error-budget).
    public var error_budget: String?
    public var threads: Int?
}

public enum Arguments {
    public static let usage = """
    Usage: onestep-load [options] URL [URL...]
           onestep-load --scenario FILE [options]

    Load modes (one of):
      --rate R               open loop: R requests/s at intended times T0 + i/R; latency counts from those times
      --concurrency C        closed loop: C requests in flight, each re-sent as soon as it completes
    Length (one of):
      --duration D           measured time, e.g. 30s, 2m (default 10s)
      --requests N           number of measured requests
    Options:
      --warmup D             warmup before the measured part, recorded separately (default 0s)
      --timeout D            per-request timeout, connect included (default 10s)
      --connections N        most requests in flight / connections (open loop default 16; closed loop: C)
      --late-after D         a request later than this behind its intended time is "not sent on time"
                             (default: one interval 1/R, at least 1ms)
      -X, --method M         HTTP method (default GET, or POST when a body is given)
      -H, --header 'K: V'    request header (repeatable)
      -d, --body TEXT|@FILE  request body, inline or read from FILE
      --seed-start N         {{seed}} in URLs and body becomes N + request index (default 0); {{index}} the index
      --scenario FILE        JSON file with any of the settings above (flags override it)
      --expect E             none | png | png:WxH — check every body (default png for /v1/generate and *.png URLs)
      --expect-size WxH      shorthand for --expect png:WxH
      --fail-if EXPR         fail (exit 1) when EXPR holds: p50..p99.99|max|mean OP latency, error_rate OP 1%,
                             rate OP req/s; OP is > >= < <=  (repeatable), e.g. --fail-if 'p99>250ms'
      --error-budget F       fail (exit 1) when more than F of the measured requests fail, 0..1 or % (default 1%;
                             `off` to allow any); not added when a --fail-if names error_rate
      --threads T            I/O threads (default: the core count), connections spread over them, one merged
                             report; at most --connections
      --engine E             HTTP client: auto (default: built-in for plain http://, else libcurl), builtin, curl
      --json FILE            write the full report as JSON
      --raw FILE.csv         write one CSV line per request
      --plot FILE.png        write the percentile spectrum and latency-over-time plot
      --no-spectrum          leave the detailed percentile spectrum out of the text report
      --min-sleep D          open loop: sleep at least D between passes instead of spinning (e.g. 1ms)
    Fault injection (reported apart from the measured traffic):
      --abort-after A[-B]    the client disconnects from each chosen request A..B after sending it
                             (e.g. 5ms-300ms); such requests count as aborted, not as errors
      --abort-fraction F     share of requests chosen for --abort-after, 0..1 or % (default 1)
      --idle-connections N   open N keep-alive connections before the run and hold them idle throughout
      --idle-path PATH       send one GET PATH on each idle connection first (default: connect only)
      --slowloris N          N connections sending a never-ending request head, one byte per interval;
                             each one the server cuts off reconnects
      --slowloris-interval D pause between two slowloris bytes (default 1s)
      --quiet                no live progress line (it only shows when stderr is a terminal anyway)
      -h, --help             this text
    Exit codes: 0 ok, 1 a --fail-if threshold or the error budget failed (a threshold on a metric with no
    samples fails as "no data"), 2 bad usage or unreadable input, 3 an output file
    could not be written.
    """

    /// Parses `args` (without the program name). Throws UsageError; `.help` when help was asked for.
    public static func parse(_ args: [String], currentDirectory: String = FileManager.default.currentDirectoryPath)
        throws -> Parsed
    {
        var scenario = Scenario()
        var scenarioDir = currentDirectory
        // The scenario comes first so flags can override it wherever they appear.
        if let i = args.firstIndex(of: "--scenario") {
            guard i + 1 < args.count else { throw UsageError("--scenario needs a file") }
            let path = args[i + 1]
            guard let data = FileManager.default.contents(atPath: path) else {
                throw UsageError("--scenario: cannot read \(path)")
            }
            do {
                scenario = try JSONDecoder().decode(Scenario.self, from: data)
            } catch {
                throw UsageError("--scenario \(path): not a valid scenario: \(error)")
            }
            scenarioDir = (path as NSString).deletingLastPathComponent
            if scenarioDir.isEmpty { scenarioDir = currentDirectory }
        }

        var urls = scenario.urls ?? scenario.url.map { [$0] } ?? []
        var urlsFromFlags: [String] = []
        var method = scenario.method
        var headers = (scenario.headers ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        var bodySpec = scenario.body
        var bodyDir = scenarioDir
        var rate = scenario.rate
        var concurrency = scenario.concurrency
        var connections = scenario.connections
        var duration = try scenario.duration.map { try seconds($0, "duration") }
        var requests = scenario.requests
        var warmup = try scenario.warmup.map { try seconds($0, "warmup") } ?? 0
        var timeout = try scenario.timeout.map { try seconds($0, "timeout") } ?? 10
        var lateAfter = try scenario.late_after.map { try seconds($0, "late_after") }
        var expectText = scenario.expect
        var failIf = scenario.fail_if ?? []
        var seedStart = scenario.seed_start ?? 0
        var threads = scenario.threads
        var engine = HTTPEngine.auto
        var errorBudget: Double? = try scenario.error_budget.map { try budget($0, "error_budget") } ?? LoadConfig.defaultErrorBudget
        var json: String?, raw: String?, plot: String?
        var quiet = false, spectrum = true
        var abortWindow: (Double, Double)?, abortFraction: Double?, minSleep: Double = 0
        var idleConnections = 0, idlePath: String?, slowloris = 0, slowlorisInterval: Double?
        var flagRate = false, flagConcurrency = false, flagDuration = false, flagRequests = false

        var i = 0
        func value(_ flag: String) throws -> String {
            guard i + 1 < args.count else { throw UsageError("\(flag) needs a value") }
            i += 1
            return args[i]
        }
        func positiveInt(_ flag: String) throws -> Int {
            let v = try value(flag)
            guard let n = Int(v), n > 0 else { throw UsageError("\(flag) must be a positive integer, got '\(v)'") }
            return n
        }
        while i < args.count {
            let a = args[i]
            switch a {
            case "-h", "--help": return .help
            case "--scenario": i += 1
            case "--rate":
                let v = try value(a)
                guard let r = Double(v), r > 0, r.isFinite else { throw UsageError("--rate must be a positive number of requests/s, got '\(v)'") }
                rate = r; flagRate = true
            case "--concurrency", "-c": concurrency = try positiveInt(a); flagConcurrency = true
            case "--connections": connections = try positiveInt(a)
            case "--duration": duration = try seconds(try value(a), a); flagDuration = true
            case "--requests", "-n": requests = try positiveInt(a); flagRequests = true
            case "--warmup": warmup = try seconds(try value(a), a)
            case "--timeout": timeout = try seconds(try value(a), a)
            case "--late-after": lateAfter = try seconds(try value(a), a)
            case "-X", "--method": method = try value(a).uppercased()
            case "-H", "--header":
                let h = try value(a)
                guard h.contains(":") else { throw UsageError("\(a) must look like 'Name: value', got '\(h)'") }
                headers.append(h)
            case "-d", "--body": bodySpec = try value(a); bodyDir = currentDirectory
            case "--seed-start":
                let v = try value(a)
                guard let n = Int(v) else { throw UsageError("--seed-start must be an integer, got '\(v)'") }
                seedStart = n
            case "--expect": expectText = try value(a)
            case "--expect-size":
                let v = try value(a)
                guard parseSize(v) != nil else { throw UsageError("--expect-size must look like 32x32, got '\(v)'") }
                expectText = "png:\(v)"
            case "--fail-if": failIf.append(try value(a))
            case "--error-budget": errorBudget = try budget(try value(a), a)
            case "--threads": threads = try positiveInt(a)
            case "--engine":
                let v = try value(a)
                guard let e = HTTPEngine(rawValue: v) else { throw UsageError("--engine must be auto, builtin or curl, got '\(v)'") }
                engine = e
            case "--json": json = try value(a)
            case "--raw": raw = try value(a)
            case "--plot": plot = try value(a)
            case "--quiet", "-q": quiet = true
            case "--no-spectrum": spectrum = false
            case "--min-sleep":
                minSleep = try seconds(try value(a), a)
                guard minSleep <= 0.1 else { throw UsageError("--min-sleep must be at most 100ms, got '\(args[i])'") }
            case "--abort-after":
                let v = try value(a)
                guard let w = AbortPlan.parseWindow(v) else {
                    throw UsageError("--abort-after must be a duration or a range like 5ms-300ms (bare numbers are ms), got '\(v)'")
                }
                abortWindow = w
            case "--abort-fraction":
                let v = try value(a)
                let f = v.hasSuffix("%") ? Double(v.dropLast()).map { $0 / 100 } : Double(v)
                guard let f, f > 0, f <= 1 else { throw UsageError("--abort-fraction must be in (0, 1] or (0%, 100%], got '\(v)'") }
                abortFraction = f
            case "--idle-connections":
                let v = try value(a)
                guard let n = Int(v), n >= 0 else { throw UsageError("--idle-connections must be a count >= 0, got '\(v)'") }
                idleConnections = n
            case "--idle-path":
                idlePath = try value(a)
                guard idlePath!.hasPrefix("/") else { throw UsageError("--idle-path must start with /, got '\(idlePath!)'") }
            case "--slowloris":
                let v = try value(a)
                guard let n = Int(v), n >= 0 else { throw UsageError("--slowloris must be a count >= 0, got '\(v)'") }
                slowloris = n
            case "--slowloris-interval":
                slowlorisInterval = try seconds(try value(a), a)
                guard slowlorisInterval! > 0 else { throw UsageError("--slowloris-interval must be more than 0") }
            default:
                if a.hasPrefix("-") { throw UsageError("unknown flag \(a) (see --help)") }
                urlsFromFlags.append(a)
            }
            i += 1
        }
        if !urlsFromFlags.isEmpty { urls = urlsFromFlags }
        // A flag picks the mode and length even when the scenario named the other one.
        if flagRate && !flagConcurrency { concurrency = nil }
        if flagConcurrency && !flagRate { rate = nil }
        if flagDuration && !flagRequests { requests = nil }
        if flagRequests && !flagDuration { duration = nil }

        guard !urls.isEmpty else { throw UsageError("no URL given (see --help)") }
        for u in urls where !(u.hasPrefix("http://") || u.hasPrefix("https://")) {
            throw UsageError("URL must start with http:// or https://, got '\(u)'")
        }
        let mode: LoadMode
        switch (rate, concurrency) {
        case (.some, .some): throw UsageError("give either --rate (open loop) or --concurrency (closed loop), not both")
        case (nil, nil): throw UsageError("give --rate R (open loop) or --concurrency C (closed loop)")
        case (let r?, nil): mode = .openLoop(rate: r)
        case (nil, let c?):
            guard c > 0 else { throw UsageError("--concurrency must be a positive integer") }
            mode = .closedLoop(concurrency: c)
        }
        if duration != nil && requests != nil { throw UsageError("give either --duration or --requests, not both") }
        if duration == nil && requests == nil { duration = 10 }
        if let d = duration, d <= 0 { throw UsageError("--duration must be more than 0") }
        guard timeout > 0 else { throw UsageError("--timeout must be more than 0") }

        var body: [UInt8]?
        if let spec = bodySpec {
            if spec.hasPrefix("@") {
                var path = String(spec.dropFirst())
                if !path.hasPrefix("/") { path = (bodyDir as NSString).appendingPathComponent(path) }
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw UsageError("--body: cannot read \(path)")
                }
                body = [UInt8](data)
            } else {
                body = Array(spec.utf8)
            }
        }
        let request = RequestTemplate(urls: urls, method: method ?? (body == nil ? "GET" : "POST"),
                                      headers: headers, body: body, seedStart: seedStart)
        let defaultConnections: Int
        switch mode {
        case .openLoop: defaultConnections = 16
        case .closedLoop(let c): defaultConnections = c
        }
        if let c = connections, c <= 0 { throw UsageError("--connections must be a positive integer") }
        var config = LoadConfig(request: request, mode: mode, connections: connections ?? defaultConnections)
        config.duration = duration
        config.requests = requests
        config.warmup = warmup
        config.timeout = timeout
        config.lateAfter = lateAfter
        if let e = expectText {
            guard let x = parseExpectation(e) else { throw UsageError("--expect must be none, png or png:WxH, got '\(e)'") }
            config.expect = x
        } else if urls.allSatisfy(isImageRoute) {
            config.expect = .png(width: nil, height: nil)
        }
        config.thresholds = try failIf.map { try Threshold(parsing: $0) }
        config.errorBudget = errorBudget
        if let t = threads {
            guard t >= 1, t <= 1024 else { throw UsageError("--threads must be 1...1024, got \(t)") }
            config.threads = t
        }
        config.engine = engine
        if engine == .builtin {
            if let u = urls.first(where: { HTTPURLParts($0) == nil }) {
                throw UsageError("--engine builtin speaks plain http:// only (no https, no user info in the URL), got '\(u)'; use --engine curl")
            }
            if case .closedLoop(let c) = mode, config.connections < c {
                throw UsageError("--engine builtin needs --connections >= --concurrency (one connection per request in flight); use --engine curl")
            }
        }
        config.jsonPath = json
        config.rawPath = raw
        config.plotPath = plot
        config.progress = !quiet
        config.spectrum = spectrum
        config.minSleep = minSleep
        if abortFraction != nil && abortWindow == nil { throw UsageError("--abort-fraction needs --abort-after") }
        if let (earliest, latest) = abortWindow {
            guard latest <= timeout else {
                throw UsageError("--abort-after \(formatSeconds(latest)) is beyond --timeout \(formatSeconds(timeout)); raise --timeout")
            }
            config.abort = AbortPlan(earliest: earliest, latest: latest, fraction: abortFraction ?? 1)
        }
        if idlePath != nil && idleConnections == 0 { throw UsageError("--idle-path needs --idle-connections N") }
        if slowlorisInterval != nil && slowloris == 0 { throw UsageError("--slowloris-interval needs --slowloris N") }
        if idleConnections > 0 || slowloris > 0 {
            guard let (host, port) = httpHostAndPort(urls[0]) else {
                throw UsageError("--idle-connections and --slowloris need a plain http:// first URL, got '\(urls[0])'")
            }
            var plan = BackgroundPlan(host: host, port: port)
            plan.idleConnections = idleConnections
            plan.idlePath = idlePath
            plan.slowloris = slowloris
            plan.slowlorisInterval = slowlorisInterval ?? 1
            config.background = plan
        }
        if case .openLoop(let r) = mode, config.schedule?.totalCount == 0 {
            throw UsageError("--rate \(r) with this duration schedules no request; raise --rate or --duration")
        }
        return .run(config)
    }

    public enum Parsed: Equatable {
        case help
        case run(LoadConfig)
    }

    /// Host and port of a plain http:// URL (templated paths allowed, which URLComponents would refuse).
    static func httpHostAndPort(_ url: String) -> (String, Int)? {
        guard url.hasPrefix("http://") else { return nil }
        let authority = url.dropFirst(7).prefix { $0 != "/" && $0 != "?" }
        var host = Substring(authority), port = 80
        if authority.hasPrefix("[") {  // [::1]:8080
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let rest = authority[authority.index(after: close)...]
            if rest.hasPrefix(":") { guard let p = Int(rest.dropFirst()) else { return nil }; port = p }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            guard let p = Int(authority[authority.index(after: colon)...]) else { return nil }
            port = p
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// "off" (nil), a fraction 0...1 or a percentage 0%...100%.
    private static func budget(_ text: String, _ flag: String) throws -> Double? {
        if text.lowercased() == "off" { return nil }
        let f = text.hasSuffix("%") ? Double(text.dropLast()).map { $0 / 100 } : Double(text)
        guard let f, f >= 0, f <= 1 else {
            throw UsageError("\(flag) must be a fraction 0..1, a percentage 0%..100% or off, got '\(text)'")
        }
        return f
    }

    private static func seconds(_ text: String, _ flag: String) throws -> Double {
        guard let v = parseDuration(text) else {
            throw UsageError("\(flag) must be a duration like 30s, 500ms, 2m, got '\(text)'")
        }
        return v
    }
}

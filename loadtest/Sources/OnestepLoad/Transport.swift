// What the driver needs from an HTTP client: start a request on a connection slot, wait for socket activity,
// and hear which slots finished and how. Two implementations:
//   BuiltinHTTPTransport (NativeHTTP.swift): plain http://, one keep-alive connection per slot, our own epoll loop
//     and response parser; the default, because libcurl's per-request work (handle re-add, URL parse, header
//     matching, allocations) cost ~8 us of user CPU per request against wrk's ~0.4 us, which on a shared 2-core
//     machine halved the requests/s onestep-load could drive (loadtest/bench-vs-wrk).
//   CurlTransport (Curl.swift): libcurl's multi interface, for https://, proxies, and `--engine curl`.
import Foundation

/// How a finished transfer ended, as the HTTP client saw it.
struct TransferCompletion {
    var slot: Int
    /// nil when the transfer succeeded at the HTTP level (the status code is judged by the caller).
    var error: ErrorClass?
    /// The finer cause of `error` ("refused", "reset", "timeout"...), nil on success.
    var kind: String?
    var message: String
}

/// One HTTP client driving a fixed set of connection slots; each slot carries at most one request at a time.
/// Used from one thread only.
protocol HTTPTransport: AnyObject {
    /// Sends a request on `slot` (which must be free). `timeoutMs`, when given, replaces the usual per-request
    /// timeout for this request only (`--abort-after`).
    func start(slot: Int, url: String, body: [UInt8]?, timeoutMs: Int?)
    /// Forgets the request of `slot` after its completion was collected, or abandons it.
    func release(slot: Int)
    /// Fires due timeouts without blocking.
    func perform()
    /// Waits for socket activity for at most `timeoutMs` (0: just looks), handles it, then fires due timeouts.
    func poll(timeoutMs: Int)
    /// Transfers that finished since the last call.
    func completions() -> [TransferCompletion]
    /// The HTTP status of the slot's last response, 0 when no response head arrived.
    func responseCode(slot: Int) -> Int
    /// Response body bytes received on the slot's last request (decoded when chunked).
    func bodyBytes(slot: Int) -> Int
    /// The body itself, when the transport was asked to keep bodies (`--expect png`); empty otherwise.
    func body(slot: Int) -> [UInt8]
}

/// `--engine`: which HTTP client sends the requests.
public enum HTTPEngine: String, Sendable, Equatable, CaseIterable {
    /// The built-in client when it can serve every URL (plain http://, no proxy in the environment) with one
    /// connection per request in flight, else libcurl.
    case auto
    /// The built-in HTTP/1.1 client (NativeHTTP.swift).
    case builtin
    /// libcurl's multi interface (Curl.swift).
    case curl
}

extension LoadConfig {
    /// The client a run uses: `engine`, with `auto` resolved (see `HTTPEngine.auto`).
    public var effectiveEngine: HTTPEngine {
        switch engine {
        case .builtin, .curl: return engine
        case .auto:
            guard BuiltinHTTPTransport.supports(urls: request.urls) else { return .curl }
            // The built-in client has one connection per request in flight; fewer connections need libcurl's pool.
            if case .closedLoop(let c) = mode, connections < c { return .curl }
            // libcurl honours these; the built-in client does not speak to proxies, so it steps aside.
            let env = ProcessInfo.processInfo.environment
            let proxied = ["http_proxy", "ALL_PROXY", "all_proxy"].contains { !(env[$0] ?? "").isEmpty }
            return proxied ? .curl : .builtin
        }
    }
}

// A thin wrapper over libcurl's multi interface: the only file that imports CCurl.
// One `CurlEasy` per connection slot is reused request after request, so libcurl keeps its connection alive
// (HTTP/1.1 keep-alive); `CurlMulti` caps the connections it opens and reports finished transfers by slot index,
// which each easy handle carries in CURLOPT_PRIVATE.
//
// `CurlMulti` drives libcurl event by event (curl_multi_socket_action on an epoll set that libcurl's socket callback
// maintains), not with curl_multi_perform/curl_multi_poll, which visit every transfer on every wake-up: with 300
// requests waiting in a server's queue that cost onestep-load half a core at 3,000 req/s, taken from the server it
// measures when both run on one machine (loadtest/faults/overload).
import CCurl
import Foundation

/// libcurl's global state, set up once per process before the first handle.
private let curlGlobalInit: Void = { _ = curl_global_init(3) }()  // CURL_GLOBAL_ALL (SSL | WIN32)

/// One reusable transfer: fixed method and headers, URL and body set per request, body collected or just counted.
final class CurlEasy {
    let handle: UnsafeMutableRawPointer
    let slot: Int
    private var headerList: UnsafeMutablePointer<curl_slist>?
    /// Received body (only when `keepBody`), and its length either way.
    var body: [UInt8] = []
    var bodyBytes = 0
    let keepBody: Bool
    /// The per-request timeout set at init, in ms; `prepare` restores it after a request that used its own.
    private let defaultTimeoutMs: Int
    private var currentTimeoutMs: Int
    /// True once this request was sent again on a new connection (CurlTransport.completions).
    var retried = false

    /// - Precondition: libcurl can allocate a handle (it fails only when out of memory).
    init(slot: Int, method: String, headers: [String], timeout: Double, keepBody: Bool) {
        _ = curlGlobalInit
        guard let h = curl_easy_init() else { preconditionFailure("curl_easy_init failed (out of memory)") }
        handle = h
        self.slot = slot
        self.keepBody = keepBody
        let ms = Swift.max(1, Int(timeout * 1000))
        defaultTimeoutMs = ms
        currentTimeoutMs = ms
        _ = onestep_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = onestep_easy_setopt_long(h, CURLOPT_TCP_NODELAY, 1)
        _ = onestep_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, ms)
        _ = onestep_easy_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, ms)
        _ = onestep_easy_setopt_long(h, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        _ = onestep_easy_setopt_ptr(h, CURLOPT_PRIVATE, UnsafeRawPointer(bitPattern: slot + 1))
        _ = onestep_easy_setopt_str(h, CURLOPT_USERAGENT, "onestep-load")
        // RFC 9110 §10.1.1: without this, libcurl sends "Expect: 100-continue" for larger bodies and waits.
        headerList = curl_slist_append(headerList, "Expect:")
        for line in headers { headerList = curl_slist_append(headerList, line) }
        _ = onestep_easy_setopt_ptr(h, CURLOPT_HTTPHEADER, UnsafeRawPointer(headerList))
        switch method.uppercased() {
        case "GET": _ = onestep_easy_setopt_long(h, CURLOPT_HTTPGET, 1)
        case "HEAD": _ = onestep_easy_setopt_long(h, CURLOPT_NOBODY, 1)
        case "POST": _ = onestep_easy_setopt_long(h, CURLOPT_POST, 1)
        default:
            _ = onestep_easy_setopt_long(h, CURLOPT_POST, 1)
            _ = onestep_easy_setopt_str(h, CURLOPT_CUSTOMREQUEST, method)
        }
        _ = onestep_easy_setopt_write_cb(h) { data, size, count, user in
            let n = size * count
            guard let user else { return n }
            let easy = Unmanaged<CurlEasy>.fromOpaque(user).takeUnretainedValue()
            easy.bodyBytes += n
            if easy.keepBody, let data {
                data.withMemoryRebound(to: UInt8.self, capacity: n) {
                    easy.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n))
                }
            }
            return n
        }
        _ = onestep_easy_setopt_ptr(h, CURLOPT_WRITEDATA, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        curl_easy_cleanup(handle)
        curl_slist_free_all(headerList)
    }

    /// Sets the URL and (when not nil) the request body, and clears the previous response. `timeoutMs`, when
    /// given, replaces the usual timeout for this request only (`--abort-after`: libcurl gives up and closes the
    /// connection at that moment, which is exactly a client that disconnects).
    func prepare(url: String, body: [UInt8]?, timeoutMs: Int? = nil) {
        let wanted = timeoutMs.map { Swift.max(1, $0) } ?? defaultTimeoutMs
        if wanted != currentTimeoutMs {
            _ = onestep_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, wanted)
            currentTimeoutMs = wanted
        }
        _ = onestep_easy_setopt_str(handle, CURLOPT_URL, url)
        if let body {
            _ = onestep_easy_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            body.withUnsafeBytes { _ = onestep_easy_setopt_ptr(handle, CURLOPT_COPYPOSTFIELDS, $0.baseAddress) }
        }
        self.body.removeAll(keepingCapacity: true)
        bodyBytes = 0
        retried = false
    }

    /// New connections the last transfer opened: 0 when it ran on a kept-alive one.
    var newConnections: Int {
        var n = 0
        _ = onestep_easy_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &n)
        return n
    }

    /// The HTTP status of the last response, 0 when none arrived.
    var responseCode: Int {
        var code = 0
        _ = onestep_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &code)
        return code
    }
}

/// A multi handle driving the easy handles of the connection slots.
final class CurlMulti {
    private let multi: UnsafeMutableRawPointer
    /// The sockets libcurl asked to watch (its socket callback keeps this set up to date).
    private let epollFD: Int32
    /// When libcurl next wants curl_multi_socket_action(CURL_SOCKET_TIMEOUT), monotonic ns; nil: no timer.
    fileprivate var timerDeadline: UInt64?
    private var readyFDs = [Int32](repeating: 0, count: 256)
    private var readyEvents = [Int32](repeating: 0, count: 256)

    /// - Precondition: `maxConnections >= 1`.
    init(maxConnections: Int) {
        precondition(maxConnections >= 1, "need at least one connection")
        _ = curlGlobalInit
        guard let m = curl_multi_init() else { preconditionFailure("curl_multi_init failed (out of memory)") }
        multi = m
        epollFD = onestep_epoll_create()
        precondition(epollFD >= 0, "epoll_create1 failed: errno \(errno)")
        _ = onestep_multi_setopt_long(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, maxConnections)
        _ = onestep_multi_setopt_long(m, CURLMOPT_MAX_HOST_CONNECTIONS, maxConnections)
        _ = onestep_multi_setopt_long(m, CURLMOPT_MAXCONNECTS, maxConnections)
        _ = onestep_multi_setopt_long(m, CURLMOPT_PIPELINING, 0)  // HTTP/1.1, one request per connection at a time
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = onestep_multi_setopt_socket_cb(m) { _, socket, what, userp, _ in
            guard let userp else { return 0 }
            _ = onestep_epoll_watch(Unmanaged<CurlMulti>.fromOpaque(userp).takeUnretainedValue().epollFD, socket, what)
            return 0
        }
        _ = onestep_multi_setopt_ptr(m, CURLMOPT_SOCKETDATA, me)
        _ = onestep_multi_setopt_timer_cb(m) { _, timeoutMs, userp in
            guard let userp else { return 0 }
            let multi = Unmanaged<CurlMulti>.fromOpaque(userp).takeUnretainedValue()
            multi.timerDeadline = timeoutMs < 0 ? nil : monotonicNanos() &+ UInt64(timeoutMs) &* 1_000_000
            return 0
        }
        _ = onestep_multi_setopt_ptr(m, CURLMOPT_TIMERDATA, me)
    }

    deinit {
        // curl_multi_cleanup calls the socket callback; it must not reach this object while it is being freed.
        _ = onestep_multi_setopt_ptr(multi, CURLMOPT_SOCKETDATA, nil)
        _ = onestep_multi_setopt_ptr(multi, CURLMOPT_TIMERDATA, nil)
        curl_multi_cleanup(multi)
        close(epollFD)
    }

    func add(_ easy: CurlEasy) { _ = curl_multi_add_handle(multi, easy.handle) }
    func remove(_ easy: CurlEasy) { _ = curl_multi_remove_handle(multi, easy.handle) }

    /// Runs libcurl's due timers without blocking: new transfers start this way (adding a handle sets a timer
    /// of 0), and timeouts fire.
    func perform() {
        var rounds = 0
        while let deadline = timerDeadline, deadline <= monotonicNanos(), rounds < 16 {
            timerDeadline = nil
            socketAction(-1, 0)  // CURL_SOCKET_TIMEOUT
            rounds += 1
        }
    }

    /// Waits for socket activity for at most `timeoutMs` (less when libcurl's timer is due sooner), hands every
    /// ready socket to libcurl, then runs the due timers.
    func poll(timeoutMs: Int) {
        var wait = Swift.max(0, timeoutMs)
        if let deadline = timerDeadline {
            let now = monotonicNanos()
            wait = deadline <= now ? 0 : Swift.min(wait, Int((deadline - now + 999_999) / 1_000_000))
        }
        let ready = onestep_epoll_wait(epollFD, &readyFDs, &readyEvents, Int32(readyFDs.count), Int32(clamping: wait))
        for i in 0..<Swift.max(0, Int(ready)) { socketAction(readyFDs[i], readyEvents[i]) }
        perform()
    }

    private func socketAction(_ socket: Int32, _ events: Int32) {
        var running: Int32 = 0
        _ = curl_multi_socket_action(multi, socket, events, &running)
    }

    /// Transfers that finished since the last call.
    func completions() -> [TransferCompletion] {
        var done: [TransferCompletion] = []
        var left: Int32 = 0
        while let msg = curl_multi_info_read(multi, &left) {
            guard onestep_msg_is_done(msg) != 0, let easy = msg.pointee.easy_handle else { continue }
            var priv: UnsafeMutableRawPointer?
            _ = onestep_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &priv)
            guard let priv else { continue }
            let code = onestep_msg_result(msg)
            var message = "", kind: String?
            if code != CURLE_OK {
                var osErrno = 0
                _ = onestep_easy_getinfo_long(easy, CURLINFO_OS_ERRNO, &osErrno)
                kind = Self.errorKind(code, osErrno: Int32(osErrno))
                message = String(cString: curl_easy_strerror(code)) + (osErrno != 0 ? " (\(String(cString: strerror(Int32(osErrno)))))" : "")
            }
            done.append(TransferCompletion(slot: Int(bitPattern: priv) - 1, error: classify(code), kind: kind,
                                       message: message))
        }
        return done
    }

    /// The cause of a failed transfer in one word, so a report can tell a server that refused connections
    /// (not listening), reset them (closed with unread input, or crashed), closed them without an answer, or
    /// never answered (timeout). `osErrno` is libcurl's CURLINFO_OS_ERRNO, 0 when it has none.
    static func errorKind(_ code: CURLcode, osErrno: Int32) -> String {
        switch code {
        case CURLE_COULDNT_CONNECT:
            switch osErrno {
            case ECONNREFUSED: return "refused"
            case ETIMEDOUT: return "connect_timeout"
            case ECONNRESET: return "reset"
            default: return "connect_failed"
            }
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: return "dns"
        case CURLE_SSL_CONNECT_ERROR: return "tls"
        case CURLE_OPERATION_TIMEDOUT: return "timeout"
        case CURLE_SEND_ERROR, CURLE_RECV_ERROR:
            switch osErrno {
            case ECONNRESET: return "reset"
            case EPIPE: return "broken_pipe"
            default: return code == CURLE_SEND_ERROR ? "send_failed" : "recv_failed"
            }
        case CURLE_GOT_NOTHING: return "empty_reply"
        case CURLE_PARTIAL_FILE: return "short_body"
        // A response that is not HTTP/1.x: libcurl reports HTTP/0.9 (which it refuses) as an unsupported protocol.
        // URLs are checked to be http(s) before the run, so during it this code means that.
        case CURLE_WEIRD_SERVER_REPLY, CURLE_UNSUPPORTED_PROTOCOL: return "malformed"
        default: return "curl_\(code.rawValue)"
        }
    }

    private func classify(_ code: CURLcode) -> ErrorClass? {
        switch code {
        case CURLE_OK: return nil
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_SSL_CONNECT_ERROR:
            return .connect
        case CURLE_OPERATION_TIMEDOUT: return .timeout
        case CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE: return .read
        case CURLE_WEIRD_SERVER_REPLY, CURLE_UNSUPPORTED_PROTOCOL, CURLE_BAD_CONTENT_ENCODING, CURLE_HTTP2,
             CURLE_HTTP2_STREAM: return .invalid
        default: return .other
        }
    }
}

/// The libcurl engine behind `HTTPTransport`: one reusable easy handle per slot on one multi handle.
final class CurlTransport: HTTPTransport {
    private let multi: CurlMulti
    private let easies: [CurlEasy]

    init(slots: Int, maxConnections: Int, method: String, headers: [String], timeout: Double, keepBody: Bool) {
        multi = CurlMulti(maxConnections: maxConnections)
        easies = (0..<slots).map {
            CurlEasy(slot: $0, method: method, headers: headers, timeout: timeout, keepBody: keepBody)
        }
    }

    func start(slot: Int, url: String, body: [UInt8]?, timeoutMs: Int?) {
        easies[slot].prepare(url: url, body: body, timeoutMs: timeoutMs)
        multi.add(easies[slot])
    }
    func release(slot: Int) { multi.remove(easies[slot]) }
    func perform() { multi.perform() }
    func poll(timeoutMs: Int) { multi.poll(timeoutMs: timeoutMs) }
    /// Finished transfers, except the ones sent again: a request on a kept-alive connection that the server had
    /// closed (reset, broken pipe or nothing back, no response byte) goes once more on a new connection, the
    /// built-in engine's rule (NativeHTTP.retry). libcurl retries some of these itself, but not a close that lands
    /// after its send (it reports "empty reply"; 2 of 40 under load in EngineTests).
    func completions() -> [TransferCompletion] {
        multi.completions().filter { c in
            let easy = easies[c.slot]
            guard let kind = c.kind, ["empty_reply", "reset", "broken_pipe"].contains(kind), !easy.retried,
                  easy.newConnections == 0, easy.responseCode == 0, easy.bodyBytes == 0 else { return true }
            easy.retried = true
            multi.remove(easy)
            multi.add(easy)
            return false
        }
    }
    func responseCode(slot: Int) -> Int { easies[slot].responseCode }
    func bodyBytes(slot: Int) -> Int { easies[slot].bodyBytes }
    func body(slot: Int) -> [UInt8] { easies[slot].body }
}

/// An edge-triggered epoll set for the built-in client (NativeHTTP.swift), here because this file is the one
/// importer of CCurl, whose shim carries the epoll calls Swift's Glibc module leaves out.
final class EpollSet {
    private let fd: Int32
    private var tokens = [UInt64](repeating: 0, count: 256)
    private var events = [Int32](repeating: 0, count: 256)

    /// - Precondition: the process can create an epoll instance (fails only out of file descriptors).
    init() {
        fd = onestep_epoll_create()
        precondition(fd >= 0, "epoll_create1 failed: errno \(errno)")
    }

    deinit { close(fd) }

    /// Watches `socket` for input, output and hang-up, edge-triggered, reporting `token` with its events.
    func add(_ socket: Int32, token: UInt64) -> Bool { onestep_epoll_add_token(fd, socket, token) == 0 }

    /// Waits at most `timeoutMs` (0: only looks) and calls `body(token, events)` for each ready socket; events
    /// are 1 readable, 2 writable, 4 error or hang-up.
    func wait(timeoutMs: Int, _ body: (UInt64, Int32) -> Void) {
        let n = tokens.withUnsafeMutableBufferPointer { t in
            events.withUnsafeMutableBufferPointer { e in
                onestep_epoll_wait_tokens(fd, t.baseAddress, e.baseAddress, Int32(t.count), Int32(clamping: timeoutMs))
            }
        }
        for i in 0..<Swift.max(0, Int(n)) { body(tokens[i], events[i]) }
    }
}

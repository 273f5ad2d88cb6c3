// The built-in HTTP/1.1 client: one keep-alive TCP connection per slot, non-blocking sockets on an edge-triggered
// epoll set, request bytes built once per distinct URL and body, responses framed by HTTPResponseParser straight
// from one receive buffer (bodies are only counted unless `--expect` needs them). Per request that is one send and
// one recv (wrk's count), no allocation on the fixed-URL path, and no per-request epoll_ctl.
//
// It reports failures in libcurl's words (same ErrorClass, same kinds, similar messages), so reports and tests
// do not depend on the engine: refused / connect_timeout / connect_failed / dns (connect), timeout, reset /
// broken_pipe / empty_reply / short_body / recv_failed / send_failed (read), malformed (invalid).
// Like libcurl, a request that finds its reused keep-alive connection closed by the server before any response
// byte (the server's idle timeout raced the send) is retried once on a new connection.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where a plain http:// URL points: what to connect to and what to put in the request line and Host header.
struct HTTPURLParts: Equatable {
    var host: String
    var port: Int
    /// host[:port] as written in the URL, for the Host header.
    var authority: String
    /// Path and query ("/" when the URL has none), fragment removed.
    var target: String

    /// nil when `url` is not a plain `http://host[:port][/path][?query]` URL (https, user info, bad port).
    init?(_ url: String) {
        guard url.utf8.count > 7, url.prefix(7).lowercased() == "http://" else { return nil }
        let rest = url.dropFirst(7)
        let authEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let auth = rest[..<authEnd]
        guard !auth.isEmpty, !auth.contains("@"), !auth.contains("{") else { return nil }
        var target = String(rest[authEnd...])
        if let hash = target.firstIndex(of: "#") { target = String(target[..<hash]) }
        if !target.hasPrefix("/") { target = "/" + target }
        var host = Substring(auth), portText: Substring?
        if auth.hasPrefix("[") {
            guard let close = auth.firstIndex(of: "]") else { return nil }
            host = auth[auth.index(after: auth.startIndex)..<close]
            let after = auth[auth.index(after: close)...]
            if !after.isEmpty { guard after.hasPrefix(":") else { return nil }; portText = after.dropFirst() }
        } else if let colon = auth.lastIndex(of: ":") {
            host = auth[..<colon]
            portText = auth[auth.index(after: colon)...]
        }
        var port = 80
        if let portText, !portText.isEmpty {
            guard let p = Int(portText), (1...65535).contains(p) else { return nil }
            port = p
        }
        guard !host.isEmpty else { return nil }
        self.host = String(host)
        self.port = port
        authority = String(auth)
        self.target = target
    }
}

final class BuiltinHTTPTransport: HTTPTransport {
    /// Whether the built-in client can send to every one of `urls` (plain http://; templates only in path/query).
    static func supports(urls: [String]) -> Bool { urls.allSatisfy { HTTPURLParts($0) != nil } }

    /// One slot's connection and request.
    private final class Slot {
        var fd: Int32 = -1
        /// Bumped whenever `fd` changes, so epoll events of a closed socket are ignored.
        var generation: UInt32 = 0
        /// The endpoint `fd` is connected to, -1 when none.
        var connectedEndpoint = -1
        var connecting = false
        /// The request went out on a connection an earlier request used.
        var reused = false
        var retried = false
        var active = false
        var endpoint = -1
        var request: [UInt8] = []
        var sent = 0
        var deadline: UInt64 = 0
        var parser = HTTPResponseParser()
        var body: [UInt8] = []
        /// The URL and body `request` was built from, so the fixed-URL path builds it once.
        var requestURL: String?
        var requestBody: [UInt8]?
    }

    /// A resolved host:port.
    private struct Endpoint {
        var address: sockaddr_storage
        var length: socklen_t
        var family: Int32
        /// Set when the name did not resolve.
        var failure: String?
    }

    private let slots: [Slot]
    private var endpoints: [Endpoint] = []
    private var endpointIndex: [String: Int] = [:]
    private let epoll = EpollSet()
    private var finished: [TransferCompletion] = []
    /// Earliest deadline of an active request (may be stale-early: then perform() just rescans).
    private var nextDeadline: UInt64 = .max
    private let buffer: UnsafeMutableRawBufferPointer
    private let method: String
    private let headRequest: Bool
    private let keepBody: Bool
    private let defaultTimeoutNanos: UInt64
    /// User header lines to send, and the lowercased names the user set or removed (they replace the defaults).
    private let userHeaderLines: [String]
    private let userHeaderNames: Set<String>

    init(slots count: Int, method: String, headers: [String], timeout: Double, keepBody: Bool) {
        slots = (0..<count).map { _ in Slot() }
        buffer = .allocate(byteCount: 64 * 1024, alignment: 64)
        self.method = method.uppercased()
        headRequest = self.method == "HEAD"
        self.keepBody = keepBody
        defaultTimeoutNanos = UInt64(Swift.max(1, Int(timeout * 1000))) * 1_000_000
        // libcurl's CURLOPT_HTTPHEADER rules: "Name: value" is sent and replaces a default header of that name,
        // "Name:" only removes the default, "Name;" sends the header with an empty value.
        var lines: [String] = [], names: Set<String> = []
        for h in headers {
            let nameEnd = h.firstIndex(where: { $0 == ":" || $0 == ";" }) ?? h.endIndex
            let name = h[..<nameEnd].trimmingCharacters(in: .whitespaces)
            names.insert(name.lowercased())
            guard nameEnd < h.endIndex else { continue }
            let value = h[h.index(after: nameEnd)...].trimmingCharacters(in: .whitespaces)
            if h[nameEnd] == ";" { if value.isEmpty { lines.append("\(name):") } } else if !value.isEmpty { lines.append(h) }
        }
        userHeaderLines = lines
        userHeaderNames = names
    }

    deinit {
        for s in slots where s.fd >= 0 { close(s.fd) }
        buffer.deallocate()
    }

    // MARK: HTTPTransport

    func start(slot index: Int, url: String, body: [UInt8]?, timeoutMs: Int?) {
        let s = slots[index]
        if s.requestURL != url || s.requestBody != body { build(s, url: url, body: body) }
        s.active = true
        s.retried = false
        s.sent = 0
        s.parser.reset(headRequest: headRequest)
        s.body.removeAll(keepingCapacity: true)
        let timeout = timeoutMs.map { UInt64(Swift.max(1, $0)) * 1_000_000 } ?? defaultTimeoutNanos
        s.deadline = monotonicNanos() &+ timeout
        nextDeadline = Swift.min(nextDeadline, s.deadline)
        if s.endpoint < 0 {
            finish(index, .connect, "connect_failed", "URL not understood: \(url)", close: false)
        } else if s.fd >= 0 && s.connectedEndpoint == s.endpoint {
            s.reused = true
            send(index)
        } else {
            closeConnection(s)
            s.reused = false
            connect(index)
        }
    }

    func release(slot index: Int) {
        let s = slots[index]
        if s.active {  // abandoned mid-request: the connection holds an unread answer
            s.active = false
            closeConnection(s)
        }
    }

    func perform() {
        guard nextDeadline != .max else { return }
        let now = monotonicNanos()
        guard now >= nextDeadline else { return }
        var next = UInt64.max
        for (i, s) in slots.enumerated() where s.active {
            if s.deadline <= now {
                finish(i, .timeout, "timeout", s.connecting ? "Connection timed out" : "Timeout was reached", close: true)
            } else {
                next = Swift.min(next, s.deadline)
            }
        }
        nextDeadline = next
    }

    func poll(timeoutMs: Int) {
        var wait = finished.isEmpty ? Swift.max(0, timeoutMs) : 0
        if nextDeadline != .max {
            let now = monotonicNanos()
            wait = nextDeadline <= now ? 0 : Swift.min(wait, Int((nextDeadline - now + 999_999) / 1_000_000))
        }
        epoll.wait(timeoutMs: wait) { token, events in handle(token: token, events: events) }
        perform()
    }

    func completions() -> [TransferCompletion] {
        guard !finished.isEmpty else { return [] }
        defer { finished.removeAll(keepingCapacity: true) }
        return finished
    }

    func responseCode(slot: Int) -> Int { slots[slot].parser.status }
    func bodyBytes(slot: Int) -> Int { slots[slot].parser.bodyBytes }
    func body(slot: Int) -> [UInt8] { slots[slot].body }

    // MARK: Requests

    /// The request bytes for `url` and `body`, in the order and with the defaults libcurl uses.
    private func build(_ s: Slot, url: String, body: [UInt8]?) {
        s.requestURL = url
        s.requestBody = body
        guard let parts = HTTPURLParts(url) else { s.endpoint = -1; s.request = []; return }
        s.endpoint = endpoint(host: parts.host, port: parts.port)
        var head = "\(method) \(parts.target) HTTP/1.1\r\n"
        if !userHeaderNames.contains("host") { head += "Host: \(parts.authority)\r\n" }
        if !userHeaderNames.contains("user-agent") { head += "User-Agent: onestep-load\r\n" }
        if !userHeaderNames.contains("accept") { head += "Accept: */*\r\n" }
        for line in userHeaderLines { head += line + "\r\n" }
        if let body {
            if !userHeaderNames.contains("content-length") { head += "Content-Length: \(body.count)\r\n" }
            if !userHeaderNames.contains("content-type") { head += "Content-Type: application/x-www-form-urlencoded\r\n" }
        }
        head += "\r\n"
        s.request = Array(head.utf8) + (body ?? [])
    }

    private func endpoint(host: String, port: Int) -> Int {
        let key = "\(host):\(port)"
        if let i = endpointIndex[key] { return i }
        var e = Endpoint(address: sockaddr_storage(), length: 0, family: AF_INET, failure: nil)
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        if rc == 0, let first = list {
            e.family = first.pointee.ai_family
            e.length = first.pointee.ai_addrlen
            withUnsafeMutableBytes(of: &e.address) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
            }
            freeaddrinfo(list)
        } else {
            e.failure = "Couldn't resolve host name (\(host): \(String(cString: gai_strerror(rc))))"
        }
        endpoints.append(e)
        endpointIndex[key] = endpoints.count - 1
        return endpoints.count - 1
    }

    private func connect(_ index: Int) {
        let s = slots[index]
        let e = endpoints[s.endpoint]
        if let failure = e.failure { finish(index, .connect, "dns", failure, close: false); return }
        let fd = socket(e.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { finish(index, .connect, "connect_failed", "socket(): \(String(cString: strerror(errno)))", close: false); return }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = e.address
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, e.length) }
        }
        let err = errno
        if rc != 0 && err != EINPROGRESS {
            close(fd)
            connectFailed(index, errno: err)
            return
        }
        s.generation &+= 1
        s.fd = fd
        s.connectedEndpoint = s.endpoint
        s.connecting = rc != 0
        guard epoll.add(fd, token: UInt64(index) << 32 | UInt64(s.generation)) else {
            finish(index, .connect, "connect_failed", "epoll_ctl: \(String(cString: strerror(errno)))", close: true)
            return
        }
        if !s.connecting { send(index) }
    }

    private func connectFailed(_ index: Int, errno err: Int32) {
        let kind: String
        switch err {
        case ECONNREFUSED: kind = "refused"
        case ETIMEDOUT: kind = "connect_timeout"
        case ECONNRESET: kind = "reset"
        default: kind = "connect_failed"
        }
        finish(index, .connect, kind, "Couldn't connect to server (\(String(cString: strerror(err))))", close: true)
    }

    /// Writes what is left of the request; on EAGAIN the socket's next writable edge continues it.
    private func send(_ index: Int) {
        let s = slots[index]
        while s.sent < s.request.count {
            let n = s.request.withUnsafeBytes { b in
                Glibc.send(s.fd, b.baseAddress! + s.sent, b.count - s.sent, Int32(MSG_NOSIGNAL))
            }
            if n > 0 { s.sent += n; continue }
            let err = errno
            if n < 0 && err == EINTR { continue }
            if n < 0 && (err == EAGAIN || err == EWOULDBLOCK) { return }
            if retry(index) { return }
            if answeredBeforeSendFailed(index) { return }
            finish(index, .read, err == EPIPE ? "broken_pipe" : err == ECONNRESET ? "reset" : "send_failed",
                   "Send failure: \(String(cString: strerror(err)))", close: true)
            return
        }
    }

    /// A server may answer (413, 400...) and close before it has read the whole request; the send then fails
    /// but the answer is in the receive queue. True when a complete response was read and reported.
    private func answeredBeforeSendFailed(_ index: Int) -> Bool {
        let s = slots[index]
        let keep = keepBody
        while true {
            let n = recv(s.fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            guard n > 0 else { return false }
            let piece = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            switch s.parser.feed(piece, onBody: { bytes in if keep { s.body.append(contentsOf: bytes) } }) {
            case .complete:
                finish(index, nil, nil, "", close: true)
                return true
            case .malformed: return false
            case .needMore: continue
            }
        }
    }

    /// A reused connection the server had closed before any response byte: once per request, a fresh one.
    private func retry(_ index: Int) -> Bool {
        let s = slots[index]
        guard s.reused, !s.retried, s.parser.bytesSeen == 0 else { return false }
        closeConnection(s)
        s.retried = true
        s.reused = false
        s.sent = 0
        connect(index)
        return true
    }

    private func handle(token: UInt64, events: Int32) {
        let index = Int(token >> 32)
        guard index < slots.count else { return }
        let s = slots[index]
        guard s.fd >= 0, s.generation == UInt32(truncatingIfNeeded: token) else { return }
        guard s.active else {
            // An idle keep-alive connection became readable: the server closed it (or sent what nobody asked for).
            // A late edge of the last response's bytes (already read) is not that: peek before closing.
            if events & 5 != 0 {
                var byte: UInt8 = 0
                let n = recv(s.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                if n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { closeConnection(s) }
            }
            return
        }
        if s.connecting {
            guard events & 6 != 0 else { return }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { connectFailed(index, errno: err); return }
            s.connecting = false
        }
        if s.sent < s.request.count {
            send(index)
            guard s.active, s.fd >= 0, !s.connecting else { return }
        }
        receive(index, hungUp: events & 4 != 0)
    }

    /// Reads until the response is complete, the socket is drained, or the connection ended. `hungUp`: the event
    /// said the peer closed, so read on to the end of stream even after a short read.
    private func receive(_ index: Int, hungUp: Bool) {
        let s = slots[index]
        let keep = keepBody
        while true {
            let n = recv(s.fd, buffer.baseAddress, buffer.count, 0)
            if n > 0 {
                let piece = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                let result = s.parser.feed(piece) { bytes in if keep { s.body.append(contentsOf: bytes) } }
                switch result {
                case .needMore:
                    // A short read drained the socket: the next arrival raises a new edge. A close that came with
                    // the data raises none, so then read on to the end of stream.
                    if n < buffer.count && !hungUp { return }
                case .complete(let consumed):
                    // An answer that came before the whole request went out (413 to a large body) leaves the
                    // connection mid-request: it cannot carry another one.
                    finish(index, nil, nil, "", close: consumed < n || !s.parser.keepAlive || s.sent < s.request.count)
                    return
                case .malformed(let problem):
                    finish(index, .invalid, "malformed", "Weird server reply (\(problem))", close: true)
                    return
                }
            } else if n == 0 {
                switch s.parser.endOfStream() {
                case .complete: finish(index, nil, nil, "", close: true)
                case .nothing:
                    if retry(index) { return }
                    finish(index, .read, "empty_reply", "Server returned nothing (no headers, no data)", close: true)
                case .partial:
                    finish(index, .read, "short_body", "Transferred a partial file (connection closed mid-response)", close: true)
                }
                return
            } else {
                let err = errno
                if err == EINTR { continue }
                if err == EAGAIN || err == EWOULDBLOCK { return }
                if s.parser.bytesSeen == 0 && retry(index) { return }
                finish(index, .read, err == ECONNRESET ? "reset" : "recv_failed",
                       "Recv failure: \(String(cString: strerror(err)))", close: true)
                return
            }
        }
    }

    private func finish(_ index: Int, _ error: ErrorClass?, _ kind: String?, _ message: String, close: Bool) {
        let s = slots[index]
        s.active = false
        if close { closeConnection(s) }
        finished.append(TransferCompletion(slot: index, error: error, kind: kind, message: message))
    }

    private func closeConnection(_ s: Slot) {
        guard s.fd >= 0 else { return }
        Glibc.close(s.fd)  // also takes it out of the epoll set
        s.fd = -1
        s.connecting = false
        s.connectedEndpoint = -1
        s.generation &+= 1
    }
}

// A small HTTP/1.1 server for the loopback tests: Glibc sockets, one thread per connection, keep-alive,
// a fixed delay before every response and an optional one-time stall (the coordinated-omission demonstration).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class TestServer: Sendable {
    struct Behavior: Sendable {
        /// Sleep before every response, seconds.
        var delay: Double = 0
        /// The request number (1-based, counted across connections) that stalls, and for how long.
        var stallAtRequest: Int? = nil
        var stallSeconds: Double = 0
        var body: [UInt8] = Array("ok\n".utf8)
        var contentType = "text/plain"
        var status = 200
        /// Close each connection as soon as a request arrived, without answering (an "empty reply").
        var closeWithoutResponse = false
        /// Answer 408 and close when a request head is still incomplete this long after its first byte
        /// (what onestep-serve's --header-timeout-ms does to slowloris clients).
        var headTimeout: Double? = nil
        /// Sent verbatim instead of the usual response (framing tests of the client: chunked, cut short, malformed).
        var rawResponse: [UInt8]? = nil
        /// Close the connection after each response although it said keep-alive (the server's idle close racing
        /// the client's next request).
        var closeAfterResponse = false
        /// Answer as soon as the head is in, without reading the body, then close the way servers do (shut the
        /// write side, discard what still comes for up to a second, close): a 413 to a body over a limit.
        var answerBeforeBody = false
        /// With `answerBeforeBody`: close at once instead, unread body and all (the kernel then resets the
        /// connection, and the client's send fails with the answer already in its receive queue).
        var closeAbruptly = false
    }

    private struct State {
        var requests = 0
        var connections = 0
        /// The last request's head and body, as received.
        var lastRequest: [UInt8] = []
        var clients: Set<Int32> = []
        var stopped = false
    }

    let port: UInt16
    private let listener: Int32
    private let behavior: Behavior
    // An NSLock (a pthread mutex underneath), not Synchronization.Mutex: ThreadSanitizer (scripts/sanitize) sees
    // pthread locking but not the standard library's futex-based Mutex on Linux.
    private let lock = NSLock()
    nonisolated(unsafe) private var stateStorage = State()
    private func withState<R>(_ body: (inout State) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&stateStorage)
    }

    var requestCount: Int { withState { $0.requests } }
    var connectionCount: Int { withState { $0.connections } }
    var lastRequest: String { withState { String(decoding: $0.lastRequest, as: UTF8.self) } }

    init(_ behavior: Behavior = Behavior()) throws {
        self.behavior = behavior
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 256) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = UInt16(bigEndian: addr.sin_port)
        listener = fd
        let t = Thread { [self] in acceptLoop() }
        t.start()
    }

    var url: String { "http://127.0.0.1:\(port)" }

    func stop() {
        let clients = withState { s -> [Int32] in
            s.stopped = true
            return Array(s.clients)  // a copy of the elements made under the lock, not a shared set buffer
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for c in clients { shutdown(c, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop() {
        while true {
            let c = accept(listener, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            var one: Int32 = 1
            setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let stopped = withState { s -> Bool in
                if !s.stopped { s.clients.insert(c); s.connections += 1 }
                return s.stopped
            }
            if stopped { close(c); return }
            let t = Thread { [self] in serve(c) }
            t.start()
        }
    }

    /// Reads requests off one connection and answers each (keep-alive until the client closes).
    private func serve(_ fd: Int32) {
        defer {
            withState { _ = $0.clients.remove(fd) }
            close(fd)
        }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        if behavior.headTimeout != nil {
            // Short reads, so the head's age is checked even while bytes keep trickling in.
            var tv = timeval(tv_sec: 0, tv_usec: 20_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        while true {
            // Headers.
            var headerEnd: Int?
            var headStarted: Date?
            while headerEnd == nil {
                headerEnd = find(separator, in: buffer)
                if headerEnd != nil { break }
                if let limit = behavior.headTimeout, let started = headStarted, Date().timeIntervalSince(started) > limit {
                    let timeout = Array("HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
                    _ = timeout.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    return
                }
                let n = read(fd, &chunk, chunk.count)
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { continue }
                if n <= 0 { return }
                if headStarted == nil { headStarted = Date() }
                buffer.append(contentsOf: chunk[0..<n])
            }
            guard let end = headerEnd else { return }
            let head = String(decoding: buffer[0..<end], as: UTF8.self).lowercased()
            var contentLength = 0
            for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
                contentLength = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? 0
            }
            if behavior.answerBeforeBody {
                let bytes = behavior.rawResponse ?? Array("HTTP/1.1 \(behavior.status) X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
                _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if behavior.closeAbruptly { return }
                shutdown(fd, Int32(SHUT_WR))
                var tv = timeval(tv_sec: 1, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                while read(fd, &chunk, chunk.count) > 0 {}
                return
            }
            let total = end + 4 + contentLength
            while buffer.count < total {
                let n = read(fd, &chunk, chunk.count)
                if n <= 0 { return }
                buffer.append(contentsOf: chunk[0..<n])
            }
            let request = Array(buffer[0..<total])
            buffer.removeFirst(total)

            let number = withState { s -> Int in s.requests += 1; s.lastRequest = request; return s.requests }
            if behavior.closeWithoutResponse { return }
            if number == behavior.stallAtRequest { Thread.sleep(forTimeInterval: behavior.stallSeconds) }
            if behavior.delay > 0 { Thread.sleep(forTimeInterval: behavior.delay) }
            let response = "HTTP/1.1 \(behavior.status) X\r\nContent-Type: \(behavior.contentType)\r\n"
                + "Content-Length: \(behavior.body.count)\r\nConnection: keep-alive\r\n\r\n"
            var bytes = behavior.rawResponse ?? (Array(response.utf8) + behavior.body)
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                sent += n
            }
            bytes.removeAll()
            if head.contains("connection: close") || behavior.closeAfterResponse || behavior.rawResponse != nil { return }
        }
    }

    private func find(_ needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if Array(hay[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }
}

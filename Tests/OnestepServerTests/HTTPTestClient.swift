// A small blocking HTTP/1.1 client over Glibc sockets: keep-alive, raw (pipelined or malformed) bytes, and
// Content-Length responses. The tests talk to the real server through it, byte by byte.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HTTP1

struct TestResponse {
    var status: Int
    /// Header names lowercased.
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    /// The body as a JSON object (nil if it is not one).
    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
    /// `error.message` of the project's error envelope.
    var errorMessage: String? { (json?["error"] as? [String: Any])?["message"] as? String }
    var errorType: String? { (json?["error"] as? [String: Any])?["type"] as? String }
}

struct TestClientError: Error, CustomStringConvertible {
    let description: String
}

final class HTTPTestClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var isOpen = true

    /// Connects to 127.0.0.1:`port`; reads time out after `timeout` seconds so a broken server fails, not hangs.
    init(port: Int, timeout: Int = 20) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestClientError(description: "socket failed: errno \(errno)") }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard status == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestClientError(description: "connect to 127.0.0.1:\(port) failed: errno \(e)")
        }
    }

    deinit { close() }

    func close() {
        guard isOpen else { return }
        isOpen = false
        Glibc.close(fd)
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count <= 0 { return }
            sent += count
        }
    }

    /// Reads more bytes; false on EOF, error or timeout.
    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<count])
        return true
    }

    /// Reads one response (skipping `100 Continue`); nil on EOF or timeout first.
    func readResponse(isHead: Bool = false) -> TestResponse? {
        while true {
            guard let response = readOneResponse(isHead: isHead) else { return nil }
            if response.status != 100 { return response }
        }
    }

    private func readOneResponse(isHead: Bool) -> TestResponse? {
        var headEnd: Int?
        while headEnd == nil {
            if let end = findHeadEnd() { headEnd = end } else if !fill() { return nil }
        }
        guard let headEnd else { return nil }
        let headText = String(decoding: buffer[0..<headEnd], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        let statusLine = lines.removeFirst().split(separator: " ")
        let status = statusLine.count > 1 ? Int(statusLine[1]) ?? 0 : 0
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        buffer.removeFirst(headEnd)
        let length = (isHead || status == 100) ? 0 : Int(headers["content-length"] ?? "0") ?? 0
        while buffer.count < length { if !fill() { return nil } }
        let body = Array(buffer[0..<length])
        buffer.removeFirst(length)
        return TestResponse(status: status, headers: headers, body: body)
    }

    private func findHeadEnd() -> Int? {
        guard buffer.count >= 4 else { return nil }
        for i in 0...(buffer.count - 4)
        where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    /// True if the server closes the connection (EOF or reset) within the read timeout.
    func isClosedByServer() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return true }
            if count < 0 { return errno == ECONNRESET }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }

    /// Sends `request` and reads its response.
    func roundTrip(_ request: String, isHead: Bool = false) -> TestResponse? {
        send(request)
        return readResponse(isHead: isHead)
    }

    func get(_ target: String, headers: String = "") -> TestResponse? {
        roundTrip(HTTPTestClient.get(target, headers: headers))
    }

    func post(_ target: String, json: String, headers: String = "") -> TestResponse? {
        roundTrip(HTTPTestClient.post(target, json: json, headers: headers))
    }

    static func get(_ target: String, headers: String = "") -> String {
        "GET \(target) HTTP/1.1\r\nHost: test\r\n\(headers)\r\n"
    }

    static func post(_ target: String, json: String, headers: String = "") -> String {
        "POST \(target) HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\(headers)\r\n\(json)"
    }

    /// One request on a fresh connection.
    static func once(port: Int, _ request: String, isHead: Bool = false) throws -> TestResponse? {
        let client = try HTTPTestClient(port: port)
        return client.roundTrip(request, isHead: isHead)
    }
}

/// Runs `body(i)` for i in 0..<count on `count` threads at once (not a thread pool: every client is really
/// concurrent) and returns the results in index order.
func concurrently<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
    let results = Locked<[Int: T]>([:])
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let thread = Thread {
            let r = body(i)
            results.withLock { $0[i] = r }
            group.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    group.wait()
    return results.withLock { r in (0..<count).map { r[$0]! } }
}

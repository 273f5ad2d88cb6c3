// An incremental HTTP/1.1 response parser for the built-in client (NativeHTTP.swift): bytes in as they arrive,
// in pieces of any size, no clock and no sockets, so every framing rule is tested on its own
// (Tests/OnestepLoadTests/HTTPResponseParserTests.swift).
//
// Framing follows RFC 9112 §6.3: a response to HEAD, a 1xx, 204 or 304 has no body; otherwise
// `Transfer-Encoding: chunked` wins over `Content-Length`; with neither, the body runs until the server closes.
// Interim 1xx responses (100 Continue, 103 Early Hints) are skipped and the final response parsed after them.
// Body bytes are handed to a closure straight from the receive buffer (no copy unless the caller keeps them).

/// Where a response stands after some bytes.
enum HTTPParseResult: Equatable {
    /// More bytes are needed.
    case needMore
    /// The response ended after `consumed` bytes of the last piece; any bytes after that are not part of it.
    case complete(consumed: Int)
    /// The bytes are not an HTTP/1.x response; the message says where it went wrong.
    case malformed(String)
}

/// How a response stood when the server closed the connection.
enum HTTPEndOfStream: Equatable {
    /// The body was delimited by the close: the response is complete.
    case complete
    /// Not one byte had arrived ("empty reply").
    case nothing
    /// Part of the response arrived (head or body cut short).
    case partial
}

struct HTTPResponseParser {
    private enum State: Equatable {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data; `remaining` bytes of it still to skip.
        case chunkEnd(remaining: Int)
        case trailers
        case untilClose
        case done
    }

    /// Longest response head (status line + headers) accepted, bytes.
    static let maxHeadBytes = 64 * 1024
    /// Longest chunk-size or trailer line accepted, bytes.
    static let maxLineBytes = 8 * 1024

    private var state = State.head
    /// The head (or the current chunk-size / trailer line) collected so far across pieces.
    private var line: [UInt8] = []
    private var isHeadRequest = false
    /// Bytes seen of this response (interim 1xx responses included).
    private(set) var bytesSeen = 0
    /// The final response's status; 0 until its head is complete.
    private(set) var status = 0
    /// Whether the connection may carry another request after this response.
    private(set) var keepAlive = true
    /// Decoded body bytes so far.
    private(set) var bodyBytes = 0

    init() { line.reserveCapacity(512) }

    /// Starts a new response; `headRequest`: it answers HEAD (no body whatever the headers say).
    mutating func reset(headRequest: Bool) {
        state = .head
        line.removeAll(keepingCapacity: true)
        isHeadRequest = headRequest
        bytesSeen = 0
        status = 0
        keepAlive = true
        bodyBytes = 0
    }

    /// Consumes `data` (the next piece of the stream); `onBody` gets each run of decoded body bytes.
    mutating func feed(_ data: UnsafeRawBufferPointer, onBody: (UnsafeRawBufferPointer) -> Void) -> HTTPParseResult {
        var i = 0
        let n = data.count
        bytesSeen += n
        while i < n {
            switch state {
            case .head:
                // Collect up to the blank line that ends the head.
                let start = i
                var end: Int?
                while i < n {
                    let b = data[i]
                    i += 1
                    if b == 10 && endsHead(afterAppending: data, from: start, to: i) { end = i; break }
                }
                line.append(contentsOf: UnsafeRawBufferPointer(rebasing: data[start..<i]))
                if end == nil {
                    if line.count > Self.maxHeadBytes { return .malformed("response head longer than \(Self.maxHeadBytes) bytes") }
                    return .needMore
                }
                if let problem = parseHead() { return .malformed(problem) }
                line.removeAll(keepingCapacity: true)
            case .fixedBody(let remaining):
                let take = Swift.min(remaining, n - i)
                onBody(UnsafeRawBufferPointer(rebasing: data[i..<(i + take)]))
                bodyBytes += take
                i += take
                state = remaining == take ? .done : .fixedBody(remaining: remaining - take)
            case .untilClose:
                onBody(UnsafeRawBufferPointer(rebasing: data[i..<n]))
                bodyBytes += n - i
                i = n
            case .chunkData(let remaining):
                let take = Swift.min(remaining, n - i)
                onBody(UnsafeRawBufferPointer(rebasing: data[i..<(i + take)]))
                bodyBytes += take
                i += take
                state = remaining == take ? .chunkEnd(remaining: 2) : .chunkData(remaining: remaining - take)
            case .chunkEnd(let remaining):
                // RFC 9112 §7.1: chunk-data is followed by CRLF (a bare LF is tolerated, as most clients do).
                let b = data[i]
                i += 1
                if b == 10 { state = .chunkSize } else if b == 13 && remaining == 2 { state = .chunkEnd(remaining: 1) } else {
                    return .malformed("chunk data not followed by CRLF")
                }
            case .chunkSize, .trailers:
                let b = data[i]
                i += 1
                if b != 10 {
                    line.append(b)
                    if line.count > Self.maxLineBytes { return .malformed("chunk-size or trailer line longer than \(Self.maxLineBytes) bytes") }
                    continue
                }
                if line.last == 13 { line.removeLast() }
                if state == .trailers {
                    if line.isEmpty { state = .done } else { line.removeAll(keepingCapacity: true) }
                    continue
                }
                guard let size = Self.chunkSize(line) else { return .malformed("bad chunk size line") }
                line.removeAll(keepingCapacity: true)
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .done:
                break
            }
            if state == .done { return .complete(consumed: i) }
        }
        if state == .done { return .complete(consumed: i) }
        return .needMore
    }

    /// What the response was when the stream ended.
    func endOfStream() -> HTTPEndOfStream {
        if state == .untilClose || state == .done { return .complete }
        return bytesSeen == 0 ? .nothing : .partial
    }

    // MARK: Head

    /// Whether the head collected so far plus data[start..<end] (which ends in LF) ends in an empty line.
    private func endsHead(afterAppending data: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Bool {
        // The byte before this LF, skipping one CR: another LF means an empty line.
        func byte(_ back: Int) -> UInt8? {
            let k = end - 1 - back
            if k >= start { return data[k] }
            let j = line.count + (k - start)
            return j >= 0 ? line[j] : nil
        }
        guard let b1 = byte(1) else { return false }
        if b1 == 10 { return true }
        return b1 == 13 && byte(2) == 10
    }

    /// Reads the status line and the framing headers of `line`; sets the next state. nil, or what is wrong.
    private mutating func parseHead() -> String? {
        // Status line: HTTP/1.x SP 3DIGIT [SP reason] (RFC 9112 §4).
        let h = line
        guard h.count >= 12, h[0] == 72, h[1] == 84, h[2] == 84, h[3] == 80, h[4] == 47, h[5] == 49, h[6] == 46,
              h[8] == 32, (48...57).contains(h[9]), (48...57).contains(h[10]), (48...57).contains(h[11])
        else { return "status line is not 'HTTP/1.x NNN ...'" }
        let code = Int(h[9] - 48) * 100 + Int(h[10] - 48) * 10 + Int(h[11] - 48)
        var keep = h[7] == 49  // HTTP/1.1 keeps the connection by default, 1.0 does not
        var length: Int?
        var chunked = false
        // Header lines, each "name: value" ending in (CR)LF.
        var p = 0
        while p < h.count && h[p] != 10 { p += 1 }
        p += 1
        while p < h.count {
            var e = p
            while e < h.count && h[e] != 10 { e += 1 }
            var lineEnd = e
            if lineEnd > p && h[lineEnd - 1] == 13 { lineEnd -= 1 }
            if lineEnd == p { break }  // the empty line
            guard let colon = h[p..<lineEnd].firstIndex(of: 58) else { return "header line without ':'" }
            var v = colon + 1
            while v < lineEnd && (h[v] == 32 || h[v] == 9) { v += 1 }
            var ve = lineEnd
            while ve > v && (h[ve - 1] == 32 || h[ve - 1] == 9) { ve -= 1 }
            let name = h[p..<colon], value = h[v..<ve]
            if Self.equalsLower(name, "content-length") {
                guard !value.isEmpty, value.count <= 18, value.allSatisfy({ (48...57).contains($0) }) else {
                    return "bad Content-Length"
                }
                let n = value.reduce(0) { $0 * 10 + Int($1 - 48) }
                if let length, length != n { return "conflicting Content-Length headers" }
                length = n
            } else if Self.equalsLower(name, "transfer-encoding") {
                chunked = Self.endsWithLower(value, "chunked")
            } else if Self.equalsLower(name, "connection") {
                if Self.containsLower(value, "close") { keep = false } else if Self.containsLower(value, "keep-alive") { keep = true }
            }
            p = e + 1
        }
        if (100...199).contains(code) && code != 101 {
            return nil  // interim response: the final one follows (state stays .head)
        }
        status = code
        keepAlive = keep
        if isHeadRequest || code == 204 || code == 304 || code == 101 {
            state = .done
            if code == 101 { keepAlive = false }
        } else if chunked {
            state = .chunkSize
        } else if let length {
            state = length == 0 ? .done : .fixedBody(remaining: length)
        } else {
            state = .untilClose
            keepAlive = false
        }
        return nil
    }

    /// The size of a chunk-size line "1a;ext=1" (hex, extensions ignored); nil when it is not one.
    static func chunkSize(_ line: [UInt8]) -> Int? {
        var size = 0, digits = 0
        for b in line {
            let d: Int
            switch b {
            case 48...57: d = Int(b) - 48
            case 97...102: d = Int(b) - 87
            case 65...70: d = Int(b) - 55
            case 59, 32, 9: return digits > 0 ? size : nil  // ";" starts extensions (BWS allowed before it)
            default: return nil
            }
            digits += 1
            if digits > 15 { return nil }
            size = size * 16 + d
        }
        return digits > 0 ? size : nil
    }

    private static func lower(_ b: UInt8) -> UInt8 { (65...90).contains(b) ? b + 32 : b }

    static func equalsLower(_ bytes: ArraySlice<UInt8>, _ word: StaticString) -> Bool {
        guard bytes.count == word.utf8CodeUnitCount else { return false }
        let w = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        return zip(bytes, w).allSatisfy { lower($0) == $1 }
    }

    static func containsLower(_ bytes: ArraySlice<UInt8>, _ word: StaticString) -> Bool {
        let w = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        guard bytes.count >= w.count else { return false }
        var s = bytes.startIndex
        while s + w.count <= bytes.endIndex {
            if zip(bytes[s..<(s + w.count)], w).allSatisfy({ lower($0) == $1 }) { return true }
            s += 1
        }
        return false
    }

    static func endsWithLower(_ bytes: ArraySlice<UInt8>, _ word: StaticString) -> Bool {
        let w = word.utf8CodeUnitCount
        guard bytes.count >= w else { return false }
        return equalsLower(bytes[(bytes.endIndex - w)...], word)
    }
}

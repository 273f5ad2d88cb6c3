// An incremental HTTP/1.1 request decoder: feed it bytes as they arrive, take complete requests out.
//
// Grammar and framing follow RFC 9112 (HTTP/1.1 message syntax) and RFC 9110 (semantics). The parser knows
// nothing about sockets, so every rule here is tested by feeding raw request strings.
//
// Bodies come framed by `Content-Length` or by `Transfer-Encoding: chunked` (RFC 9112 §7.1, decoded in
// HTTPRequestParser+Chunked.swift), both under the same `maxBodyBytes`; any other transfer coding gets 501, both
// framings at once 400 (a request smuggling vector, RFC 9112 §6.1, §11.2).
// Limitations (deliberate): obsolete line folding is refused with 400 (RFC 9112 §5.2 allows that); authority-form
// targets (CONNECT) are refused with 400.

/// Decodes pipelined HTTP/1.x requests from a byte stream.
///
/// ```swift
/// var parser = HTTPRequestParser(limits: .init())
/// parser.append(bytesFromSocket)
/// while let request = try parser.nextRequest() { handle(request) }
/// ```
/// After a thrown ``HTTPParseError`` the parser stays failed and throws it again: the stream has no recoverable
/// request boundary, so the connection must answer with the error's status and close.
public struct HTTPRequestParser: Sendable {
    /// Size limits; each one exceeded has its own error and status.
    public struct Limits: Sendable, Equatable {
        /// Longest request line (method, target, version) accepted; longer gets 414.
        public var maxRequestLineBytes: Int
        /// Largest header section (every field line after the request line) accepted; larger gets 431.
        public var maxHeaderBytes: Int
        /// Most header fields accepted; more gets 431.
        public var maxHeaderCount: Int
        /// Largest `Content-Length` accepted; larger gets 413 before any body byte is read.
        public var maxBodyBytes: Int

        public init(maxRequestLineBytes: Int = 8 * 1024, maxHeaderBytes: Int = 16 * 1024,
                    maxHeaderCount: Int = 100, maxBodyBytes: Int = 16 * 1024 * 1024) {
            precondition(maxRequestLineBytes > 0 && maxHeaderBytes > 0 && maxHeaderCount > 0 && maxBodyBytes >= 0,
                         "parser limits must be positive")
            self.maxRequestLineBytes = maxRequestLineBytes
            self.maxHeaderBytes = maxHeaderBytes
            self.maxHeaderCount = maxHeaderCount
            self.maxBodyBytes = maxBodyBytes
        }
    }

    /// Where the decoder is within the current request.
    private enum State: Sendable {
        /// Looking for the blank line that ends the head. Offsets are relative to `readIndex` so that compacting
        /// the buffer does not invalidate them: `scanned` bytes were searched, the current line starts at
        /// `lineStart`, and the request line ended at `requestLineEnd` (nil until its LF is seen).
        case head(scanned: Int, lineStart: Int, requestLineEnd: Int?)
        /// The head is parsed; `request` waits for `request.body` to reach its `Content-Length`.
        case body(request: HTTPRequest, length: Int, expectsContinue: Bool)
        /// The head is parsed and the body is chunked: `decoder` says where within the chunk framing we are; the
        /// decoded bytes so far are in `chunkedBody` (kept out of the enum so appending does not copy them).
        case chunked(request: HTTPRequest, decoder: ChunkedDecoder, expectsContinue: Bool)
        /// A request was refused; the stream cannot be resynchronised.
        case failed(HTTPParseError)
    }

    public let limits: Limits
    var buffer: [UInt8] = []
    /// Index of the first byte of `buffer` not yet consumed by a returned request.
    var readIndex = 0
    private var state: State = .head(scanned: 0, lineStart: 0, requestLineEnd: nil)
    /// The decoded body of the chunked request being read.
    var chunkedBody: [UInt8] = []

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Appends bytes received from the peer.
    public mutating func append<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
        compactIfWorthwhile()
        buffer.append(contentsOf: bytes)
    }

    /// Appends bytes received from the peer straight from a read buffer.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compactIfWorthwhile()
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received and not yet returned as part of a request.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// Whether some of the next request has arrived (so its header or body timeout applies, not the idle one).
    public var hasPartialRequest: Bool {
        switch state {
        case .body, .chunked, .failed: return true
        case .head: return bufferedByteCount > 0
        }
    }

    /// Whether reading more from the socket could help: the pending body is incomplete, or less than
    /// `readAhead` bytes are buffered. A connection stops reading otherwise, so a client that pipelines without
    /// reading its answers fills its own socket buffers, not the server's memory.
    public func wantsInput(readAhead: Int) -> Bool {
        switch state {
        case .failed: return false
        case .body(_, let length, _): return bufferedByteCount < length + readAhead
        case .chunked: return true  // consumed as it is decoded; bounded by maxBodyBytes and the body timeout
        case .head: return bufferedByteCount < readAhead
        }
    }

    /// Whether the head of the next request is complete and its body is still arriving.
    public var isReadingBody: Bool {
        switch state {
        case .body, .chunked: return true
        default: return false
        }
    }

    /// True when the pending request sent `Expect: 100-continue` and waits for an interim `100 Continue` before
    /// sending its body (RFC 9110 §10.1.1). Call ``acknowledgeContinue()`` once it has been written.
    public var expectsContinue: Bool {
        switch state {
        case .body(_, _, true), .chunked(_, _, true): return true
        default: return false
        }
    }

    public mutating func acknowledgeContinue() {
        switch state {
        case .body(let request, let length, true):
            state = .body(request: request, length: length, expectsContinue: false)
        case .chunked(let request, let decoder, true):
            state = .chunked(request: request, decoder: decoder, expectsContinue: false)
        default:
            break
        }
    }

    /// Returns the next complete request, nil if more bytes are needed, or throws why the stream is unusable.
    ///
    /// - Parameter now: recorded as ``HTTPRequest/headReceivedAt`` when this call completes a head.
    public mutating func nextRequest(now: ContinuousClock.Instant = .now) throws(HTTPParseError) -> HTTPRequest? {
        while true {
            switch state {
            case .failed(let error):
                throw error
            case .head(let scanned, let lineStart, let requestLineEnd):
                guard let headLength = try findEndOfHead(scanned: scanned, lineStart: lineStart,
                                                         requestLineEnd: requestLineEnd) else { return nil }
                let head = buffer[readIndex..<(readIndex + headLength)]
                let parsed: (request: HTTPRequest, length: BodyLength, expectsContinue: Bool)
                do {
                    parsed = try readHead(head, now: now)
                } catch {
                    state = .failed(error)
                    throw error
                }
                readIndex += headLength
                switch parsed.length {
                case .fixed(let length):
                    state = .body(request: parsed.request, length: length, expectsContinue: parsed.expectsContinue)
                case .chunked:
                    chunkedBody = []
                    state = .chunked(request: parsed.request, decoder: ChunkedDecoder(),
                                     expectsContinue: parsed.expectsContinue)
                }
            case .body(var request, let length, _):
                guard bufferedByteCount >= length else { return nil }
                request.body = Array(buffer[readIndex..<(readIndex + length)])
                readIndex += length
                state = .head(scanned: 0, lineStart: 0, requestLineEnd: nil)
                return request
            case .chunked(var request, var decoder, let expectsContinue):
                let done: Bool
                do {
                    done = try decodeChunks(&decoder)
                } catch {
                    state = .failed(error)
                    throw error
                }
                guard done else {
                    state = .chunked(request: request, decoder: decoder, expectsContinue: expectsContinue)
                    return nil
                }
                request.body = chunkedBody
                chunkedBody = []
                state = .head(scanned: 0, lineStart: 0, requestLineEnd: nil)
                return request
            }
        }
    }

    // MARK: - Finding the head

    /// Scans for the empty line ending the head (RFC 9112 §2.1), enforcing the request-line and header limits as
    /// bytes arrive so that an endless line is refused without buffering it all. Returns the head length
    /// including the final line break, or nil (with progress saved in `state`) if it has not arrived yet.
    private mutating func findEndOfHead(scanned: Int, lineStart: Int, requestLineEnd: Int?)
        throws(HTTPParseError) -> Int? {
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before the request line
        // (some clients send an extra CRLF after a POST body).
        if scanned == 0 {
            while readIndex < buffer.count, buffer[readIndex] == 13 || buffer[readIndex] == 10 { readIndex += 1 }
        }
        var lineStart = lineStart
        var requestLineEnd = requestLineEnd
        var position = scanned
        let available = buffer.count - readIndex
        var headLength: Int?
        buffer.withUnsafeBufferPointer { bytes in
            let base = readIndex
            while position < available {
                if bytes[base + position] == 10 {
                    var lineEnd = position
                    if lineEnd > lineStart, bytes[base + lineEnd - 1] == 13 { lineEnd -= 1 }
                    if requestLineEnd == nil {
                        requestLineEnd = lineEnd
                    } else if lineEnd == lineStart {
                        headLength = position + 1
                        return
                    }
                    lineStart = position + 1
                }
                position += 1
            }
        }
        // Limits are checked on what has been scanned, complete head or not, so the verdict does not depend on
        // how the bytes were split into reads.
        if let requestLineEnd {
            if requestLineEnd > limits.maxRequestLineBytes { try fail(.requestLineTooLong) }
            // The header section runs from the end of the request line to the blank line (exclusive).
            if (headLength ?? position) - requestLineEnd > limits.maxHeaderBytes + 4 { try fail(.headersTooLarge) }
        } else if position - (position > 0 && buffer[readIndex + position - 1] == 13 ? 1 : 0) > limits.maxRequestLineBytes {
            // A CR scanned last may be the first half of the line's CRLF, which a complete line does not count;
            // counting it here refused a line of exactly the limit when its CR and LF came in separate reads.
            try fail(.requestLineTooLong)
        }
        if let headLength { return headLength }
        state = .head(scanned: position, lineStart: lineStart, requestLineEnd: requestLineEnd)
        return nil
    }

    mutating func fail(_ error: HTTPParseError) throws(HTTPParseError) -> Never {
        state = .failed(error)
        throw error
    }

    /// Drops consumed bytes once they dominate the buffer, so a long keep-alive connection does not grow it.
    private mutating func compactIfWorthwhile() {
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex > 4096 && readIndex * 2 > buffer.count {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
    }
}

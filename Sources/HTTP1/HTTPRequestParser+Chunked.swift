// Decoding a `Transfer-Encoding: chunked` request body (RFC 9112 §7.1) incrementally, under the same
// `maxBodyBytes` as a `Content-Length` body. Trailer fields are read and ignored (RFC 9112 §7.1.2 allows a
// recipient to discard them). curl sends this framing whenever it reads a body from a pipe (`-d @-`, `-T -`).

/// How a request's body is framed, from its head.
enum BodyLength: Equatable, Sendable {
    /// `Content-Length` (0 when there is none).
    case fixed(Int)
    /// `Transfer-Encoding: chunked`: the length is known only when the last chunk arrives.
    case chunked
}

/// Where the decoder stands within the chunk framing. Offsets are relative to the parser's `readIndex`, so
/// compacting the buffer between reads does not invalidate them; bytes are consumed as soon as they are decoded.
struct ChunkedDecoder: Sendable {
    enum Stage: Sendable {
        /// Reading `chunk-size [ chunk-ext ] CRLF`; `scanned` bytes of the line were searched for its LF.
        case size(scanned: Int)
        /// Copying `remaining` bytes of chunk data.
        case data(remaining: Int)
        /// Expecting the CRLF that ends a chunk's data.
        case dataEnd
        /// After the last (zero-size) chunk: trailer field lines up to an empty line; `scanned` bytes of the
        /// current line were searched, `total` bytes of trailers consumed so far.
        case trailers(scanned: Int, total: Int)
    }

    var stage: Stage = .size(scanned: 0)

    /// Longest chunk-size line accepted (the size and its extensions); longer is refused with 400. nginx and
    /// Node refuse far shorter extension sections; 4 KiB leaves room for any real client.
    static let maxSizeLineBytes = 4096
}

extension HTTPRequestParser {
    /// Decodes as much of the chunked body as the buffer holds, appending data to `chunkedBody`. Returns true once
    /// the last chunk and the trailer section have been consumed.
    mutating func decodeChunks(_ decoder: inout ChunkedDecoder) throws(HTTPParseError) -> Bool {
        while true {
            switch decoder.stage {
            case .size(let scanned):
                guard let lineEnd = findLineFeed(from: scanned) else {
                    if bufferedByteCount > ChunkedDecoder.maxSizeLineBytes { try fail(.malformed("chunk size line too long")) }
                    decoder.stage = .size(scanned: bufferedByteCount)
                    return false
                }
                if lineEnd > ChunkedDecoder.maxSizeLineBytes { try fail(.malformed("chunk size line too long")) }
                let size = try readChunkSize(buffer[readIndex..<(readIndex + lineEnd)])
                readIndex += lineEnd + 1
                if size == 0 {
                    decoder.stage = .trailers(scanned: 0, total: 0)
                } else {
                    // The same limit as a Content-Length body, checked before any of the chunk is stored.
                    if size > limits.maxBodyBytes - chunkedBody.count { try fail(.bodyTooLarge) }
                    decoder.stage = .data(remaining: size)
                }
            case .data(let remaining):
                let take = min(remaining, bufferedByteCount)
                guard take > 0 else { return false }
                chunkedBody.append(contentsOf: buffer[readIndex..<(readIndex + take)])
                readIndex += take
                decoder.stage = take == remaining ? .dataEnd : .data(remaining: remaining - take)
            case .dataEnd:
                // CRLF; a bare LF is accepted as elsewhere in the message (RFC 9112 §2.2).
                guard bufferedByteCount >= 1 else { return false }
                if buffer[readIndex] == 10 {
                    readIndex += 1
                } else {
                    guard bufferedByteCount >= 2 else {
                        if buffer[readIndex] != 13 { try fail(.malformed("chunk data longer than its size")) }
                        return false
                    }
                    guard buffer[readIndex] == 13, buffer[readIndex + 1] == 10 else {
                        try fail(.malformed("chunk data longer than its size"))
                    }
                    readIndex += 2
                }
                decoder.stage = .size(scanned: 0)
            case .trailers(let scanned, let total):
                guard let lineEnd = findLineFeed(from: scanned) else {
                    if total + bufferedByteCount > limits.maxHeaderBytes + 2 { try fail(.headersTooLarge) }
                    decoder.stage = .trailers(scanned: bufferedByteCount, total: total)
                    return false
                }
                if total + lineEnd > limits.maxHeaderBytes { try fail(.headersTooLarge) }
                let isEmpty = lineEnd == 0 || (lineEnd == 1 && buffer[readIndex] == 13)
                readIndex += lineEnd + 1
                if isEmpty { return true }  // end of the trailer section: the body is complete
                decoder.stage = .trailers(scanned: 0, total: total + lineEnd + 1)
            }
        }
    }

    /// The offset (from `readIndex`) of the next LF at or after `from`, or nil.
    private func findLineFeed(from: Int) -> Int? {
        var position = readIndex + from
        while position < buffer.count {
            if buffer[position] == 10 { return position - readIndex }
            position += 1
        }
        return nil
    }

    /// `chunk-size = 1*HEXDIG`, then optional `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`,
    /// which is ignored once it is known to hold no control characters. `line` excludes the LF (a CR before it
    /// is dropped here).
    private func readChunkSize(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> Int {
        var line = line
        if line.last == 13 { line = line.dropLast() }
        var size = 0
        var digits = 0
        var index = line.startIndex
        while index < line.endIndex, let value = hexValue(line[index]) {
            let (shifted, overflow) = size.multipliedReportingOverflow(by: 16)
            guard !overflow else { throw .malformed("chunk size overflows") }
            size = shifted + value
            digits += 1
            index += 1
        }
        guard digits > 0 else { throw .malformed("invalid chunk size") }
        var rest = line[index...]
        while let first = rest.first, first == 32 || first == 9 { rest = rest.dropFirst() }
        if let first = rest.first {
            guard first == UInt8(ascii: ";") else { throw .malformed("invalid chunk size") }
            // Extensions are not interpreted, but CR, NUL and other controls inside them mean a broken frame.
            guard !rest.contains(where: { ($0 < 32 && $0 != 9) || $0 == 127 }) else {
                throw .malformed("invalid chunk extension")
            }
        }
        return size
    }

    private func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - UInt8(ascii: "A")) + 10
        default: return nil
        }
    }
}

// Fuzz target: HTTPRequestParser (Sources/HTTP1/HTTPRequestParser*.swift) on arbitrary byte streams.
//
// Input layout: byte 0 is a control byte, the rest is the stream a client sends on one connection (so a seed
// holds one or several pipelined requests). The control byte picks
//   bit 7      the limits: the server's defaults, or tiny ones so the 414/431/413 paths are reached by
//              short inputs;
//   bits 0-6   the seed of the chunk split: how the stream is cut into the reads the socket would return.
//
// The stream is parsed twice, whole and in those chunks, calling nextRequest() after every chunk as the
// connection does. Besides "no crash", the target checks what the parser promises:
//   - the requests and the final verdict do not depend on how the bytes were split into reads;
//   - a request's body is exactly its Content-Length, an HTTP/1.1 request has exactly one Host;
//   - after an error the parser stays failed with the same error.
import HTTP1

/// What a request looked like, without the arrival time (which differs between the two parses).
private struct RequestSummary: Equatable {
    var method: String
    var target: String
    var version: HTTPVersion
    var headers: [String]
    var body: [UInt8]
    var keepAlive: Bool

    init(_ request: HTTPRequest) {
        method = request.method.rawValue
        target = request.target
        version = request.version
        headers = request.headers.map { "\($0.name): \($0.value)" }
        body = request.body
        keepAlive = request.keepAlive
    }
}

/// Everything a connection would observe from one stream.
private struct ParseOutcome: Equatable {
    var requests: [RequestSummary] = []
    var error: HTTPParseError?
    /// Bytes left in the parser once the stream ended without error (a partial request).
    var leftover = 0
}

private let tinyLimits = HTTPRequestParser.Limits(maxRequestLineBytes: 40, maxHeaderBytes: 96, maxHeaderCount: 4,
                                                  maxBodyBytes: 64)

/// Feeds `stream` in reads of the given lengths (the last read takes whatever remains).
private func parse(_ stream: [UInt8], readLengths: [Int], limits: HTTPRequestParser.Limits) -> ParseOutcome {
    var parser = HTTPRequestParser(limits: limits)
    var outcome = ParseOutcome()
    var offset = 0
    var reads = readLengths.makeIterator()
    repeat {
        let length = min(reads.next() ?? stream.count, stream.count - offset)
        stream[offset..<(offset + length)].withUnsafeBytes { parser.append($0) }
        offset += length
        do {
            while let request = try parser.nextRequest() {
                checkRequest(request, limits: limits)
                outcome.requests.append(RequestSummary(request))
            }
            // A server answers 100 Continue here; the parser must then wait for the body as before.
            if parser.expectsContinue { parser.acknowledgeContinue() }
            fuzzInvariant(!parser.expectsContinue, "expectsContinue survived acknowledgeContinue()")
        } catch {
            // After an error the split parse stops reading, so what is left buffered is not comparable.
            outcome.error = error
            checkStaysFailed(&parser, error)
            return outcome
        }
    } while offset < stream.count
    outcome.leftover = parser.bufferedByteCount
    return outcome
}

/// The promises a returned request keeps, and the accessors handlers call on it.
private func checkRequest(_ request: HTTPRequest, limits: HTTPRequestParser.Limits) {
    let lengths = request.headers.values(for: "Content-Length")
    if lengths.isEmpty {
        fuzzInvariant(request.body.isEmpty, "body of \(request.body.count) bytes without Content-Length")
    } else {
        let first = lengths[0].split(separator: ",").first.map { $0.trimmingASCIISpaces } ?? ""
        fuzzInvariant(Int(first) == request.body.count,
                      "body of \(request.body.count) bytes for Content-Length \(lengths)")
    }
    fuzzInvariant(request.body.count <= limits.maxBodyBytes, "body over the limit was accepted")
    fuzzInvariant(request.version == .http1_0 || request.headers.values(for: "Host").count == 1,
                  "HTTP/1.1 request without exactly one Host was accepted")
    fuzzInvariant(!request.headers.contains("Transfer-Encoding"), "Transfer-Encoding was accepted")
    fuzzInvariant(request.target.utf8.count <= limits.maxRequestLineBytes, "request line over the limit was accepted")
    // What routing and handlers read: path, query pairs, header lookups.
    _ = request.path
    for item in request.query { _ = item.name.utf8.count + item.value.utf8.count }
    _ = request.headers["Content-Type"]
    _ = request.headers.containsToken("close", in: "Connection")
}

private func checkStaysFailed(_ parser: inout HTTPRequestParser, _ error: HTTPParseError) {
    parser.append(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
    do {
        let request = try parser.nextRequest()
        fuzzInvariant(false, "parser returned \(String(describing: request)) after failing with \(error)")
    } catch let again {
        fuzzInvariant(again == error, "parser failed with \(error), then with \(again)")
    }
    // Every error maps to a 4xx/5xx status and a message for the JSON error body.
    fuzzInvariant((400..<600).contains(error.status.code) && !error.message.isEmpty, "error \(error) has no status")
}

private extension Substring {
    var trimmingASCIISpaces: Substring {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" { text.removeLast() }
        return text
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequestParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzBytes(data, size)
    guard let control = input.first else { return 0 }
    let stream = Array(input.dropFirst())
    let limits = control & 0x80 != 0 ? tinyLimits : HTTPRequestParser.Limits()

    // Read lengths from 1 byte up to a maximum that itself varies with the seed, so both byte-at-a-time
    // delivery and a few large reads are tried.
    var random = FuzzRandom(seed: UInt64(control & 0x7F))
    let maxRead = [1, 2, 3, 7, 16, 64, 512][random.below(7)]
    var readLengths: [Int] = []
    var total = 0
    while total < stream.count {
        let length = 1 + random.below(maxRead)
        readLengths.append(length)
        total += length
    }

    let whole = parse(stream, readLengths: [stream.count], limits: limits)
    let split = parse(stream, readLengths: readLengths, limits: limits)
    fuzzInvariant(whole == split, """
        reads of up to \(maxRead) bytes changed the outcome:
          whole: \(whole.requests.count) requests, error \(String(describing: whole.error)), leftover \(whole.leftover)
          split: \(split.requests.count) requests, error \(String(describing: split.error)), leftover \(split.leftover)
        """)
    return 0
}

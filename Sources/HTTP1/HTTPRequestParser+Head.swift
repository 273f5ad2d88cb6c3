// Reading a complete request head: request line (RFC 9112 §3), field lines (RFC 9112 §5), then the framing and
// connection semantics derived from them (RFC 9112 §6, §9).

extension HTTPRequestParser {
    /// Parses `head` (request line through the empty line) into a request without body, its body length, and
    /// whether the client waits for `100 Continue`.
    func readHead(_ head: ArraySlice<UInt8>, now: ContinuousClock.Instant)
        throws(HTTPParseError) -> (request: HTTPRequest, length: BodyLength, expectsContinue: Bool) {
        var lines = splitLines(head)
        guard !lines.isEmpty else { throw .malformed("empty request") }
        let (method, target, version) = try readRequestLine(lines.removeFirst())
        let headers = try readFieldLines(lines)
        let length = try readBodyLength(headers, version: version)

        // RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without exactly one Host field.
        if version == .http1_1 && headers.values(for: "Host").count != 1 {
            throw .malformed("HTTP/1.1 requests need exactly one Host header")
        }
        return (
            HTTPRequest(method: method, target: target, version: version, headers: headers, body: [],
                        keepAlive: makeKeepAlive(version: version, headers: headers), headReceivedAt: now),
            length,
            makeExpectsContinue(version: version, headers: headers, length: length)
        )
    }

    /// Splits the head into lines, dropping each CR before LF. A bare LF is accepted as a line terminator
    /// (RFC 9112 §2.2 MAY); the final empty line is dropped.
    private func splitLines(_ head: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = head.startIndex
        for index in head.indices where head[index] == 10 {
            var lineEnd = index
            if lineEnd > lineStart, head[lineEnd - 1] == 13 { lineEnd -= 1 }
            if lineEnd > lineStart { lines.append(head[lineStart..<lineEnd]) }
            lineStart = index + 1
        }
        return lines
    }

    // MARK: - Request line

    /// `request-line = method SP request-target SP HTTP-version` (RFC 9112 §3), single spaces, no extras.
    private func readRequestLine(_ line: ArraySlice<UInt8>)
        throws(HTTPParseError) -> (HTTPMethod, String, HTTPVersion) {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("request line must be: method SP target SP version") }
        let (methodBytes, targetBytes, versionBytes) = (parts[0], parts[1], parts[2])

        guard !methodBytes.isEmpty, methodBytes.allSatisfy(isTokenByte) else { throw .malformed("invalid method") }
        let method = HTTPMethod(String(decoding: methodBytes, as: UTF8.self))
        let version = try readVersion(versionBytes)
        let target = try readTarget(targetBytes, method: method)
        return (method, target, version)
    }

    /// `HTTP-version = "HTTP/" DIGIT "." DIGIT` (RFC 9112 §2.3). Well-formed but other than 1.0/1.1 → 505.
    private func readVersion(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) -> HTTPVersion {
        let text = Array(bytes)
        guard text.count == 8, text[0..<5].elementsEqual("HTTP/".utf8), isDigit(text[5]),
              text[6] == UInt8(ascii: "."), isDigit(text[7]) else {
            throw .malformed("invalid HTTP version")
        }
        switch (text[5], text[7]) {
        case (UInt8(ascii: "1"), UInt8(ascii: "1")): return .http1_1
        case (UInt8(ascii: "1"), UInt8(ascii: "0")): return .http1_0
        default: throw .unsupportedVersion
        }
    }

    /// Accepts origin-form (`/path?query`), asterisk-form for OPTIONS, and absolute-form, which RFC 9112 §3.2.2
    /// says a server MUST accept; absolute-form is reduced to its path and query for routing.
    private func readTarget(_ bytes: ArraySlice<UInt8>, method: HTTPMethod) throws(HTTPParseError) -> String {
        // RFC 3986 allows only visible ASCII in a URI; anything else (controls, raw UTF-8, DEL) is malformed.
        guard !bytes.isEmpty, bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .malformed("invalid request target")
        }
        let target = String(decoding: bytes, as: UTF8.self)
        if target.hasPrefix("/") { return target }
        if target == "*" && method == .OPTIONS { return target }
        let lowered = target.lowercased()
        for scheme in ["http://", "https://"] where lowered.hasPrefix(scheme) {
            let afterScheme = target.dropFirst(scheme.count)
            guard let pathStart = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
            let rest = afterScheme[pathStart...]
            return rest.hasPrefix("?") ? "/" + rest : String(rest)
        }
        throw .malformed("request target must be a path")
    }

    // MARK: - Field lines

    /// `field-line = field-name ":" OWS field-value OWS` (RFC 9112 §5).
    private func readFieldLines(_ lines: [ArraySlice<UInt8>]) throws(HTTPParseError) -> HTTPHeaders {
        guard lines.count <= limits.maxHeaderCount else { throw .headersTooLarge }
        var headers = HTTPHeaders()
        for line in lines {
            // RFC 9112 §5.2: obsolete line folding may be rejected with 400.
            if let first = line.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
                throw .malformed("obsolete header line folding is not accepted")
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .malformed("header without colon") }
            let name = line[line.startIndex..<colon]
            // RFC 9112 §5.1: no whitespace between name and colon; such a request MUST be rejected with 400.
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { throw .malformed("invalid header name") }
            var value = line[(colon + 1)...]
            while let first = value.first, first == 32 || first == 9 { value = value.dropFirst() }
            while let last = value.last, last == 32 || last == 9 { value = value.dropLast() }
            // RFC 9110 §5.5: CR, LF and NUL are never allowed inside a field value.
            guard !value.contains(where: { $0 == 0 || $0 == 13 || $0 == 10 }) else {
                throw .malformed("invalid character in header value")
            }
            headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
        }
        return headers
    }

    // MARK: - Framing and connection semantics

    /// How the body is framed (RFC 9112 §6.3): `Transfer-Encoding: chunked`, else `Content-Length`, else none.
    private func readBodyLength(_ headers: HTTPHeaders, version: HTTPVersion) throws(HTTPParseError) -> BodyLength {
        let lengths = headers.values(for: "Content-Length")
        let codings = headers.values(for: "Transfer-Encoding")
        guard codings.isEmpty else {
            // RFC 9112 §6.1: a request with both is a smuggling vector; the server MAY reject it, and does.
            if !lengths.isEmpty { throw .malformed("both Content-Length and Transfer-Encoding") }
            // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing.
            if version == .http1_0 { throw .malformed("Transfer-Encoding in an HTTP/1.0 request") }
            let names = codings.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }
                .map { trimmed($0).lowercased() }
            guard !names.contains(where: \.isEmpty) else { throw .malformed("empty transfer coding") }
            // Unknown codings (or gzip, which we do not decode) → 501; chunked must come once and last (§6.3 4).
            if let other = names.first(where: { $0 != "chunked" }) { throw .unsupportedTransferEncoding(other) }
            guard names.count == 1 else { throw .malformed("chunked applied more than once") }
            return .chunked
        }
        guard !lengths.isEmpty else { return .fixed(0) }
        // RFC 9112 §6.3 item 5 / RFC 9110 §8.6: a list of identical values (`5, 5` or repeated fields) may be
        // taken as one; differing or non-numeric values are unrecoverable framing errors.
        var length: Int?
        for element in lengths.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            let digits = trimmed(element)
            // 18 digits cannot overflow Int64, and no limit we would configure comes close.
            guard !digits.isEmpty, digits.count <= 18, digits.utf8.allSatisfy(isDigit), let value = Int(digits) else {
                throw .malformed("invalid Content-Length")
            }
            if let length, length != value { throw .malformed("conflicting Content-Length values") }
            length = value
        }
        let bodyLength = length ?? 0
        if bodyLength > limits.maxBodyBytes { throw .bodyTooLarge }
        return .fixed(bodyLength)
    }

    /// RFC 9112 §9.3: HTTP/1.1 is persistent unless `close`; HTTP/1.0 only if it sends `keep-alive`.
    private func makeKeepAlive(version: HTTPVersion, headers: HTTPHeaders) -> Bool {
        if headers.containsToken("close", in: "Connection") { return false }
        switch version {
        case .http1_1: return true
        case .http1_0: return headers.containsToken("keep-alive", in: "Connection")
        }
    }

    /// RFC 9110 §10.1.1: `Expect: 100-continue` matters only for HTTP/1.1 requests that have a body to send.
    private func makeExpectsContinue(version: HTTPVersion, headers: HTTPHeaders, length: BodyLength) -> Bool {
        guard version == .http1_1, length != .fixed(0), let expect = headers["Expect"] else { return false }
        return HTTPHeaders.namesEqual(trimmed(expect[...]), "100-continue")
    }
}

/// `tchar` from RFC 9110 §5.6.2: the characters of methods and field names.
@inline(__always)
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
         UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
         UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

@inline(__always)
func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

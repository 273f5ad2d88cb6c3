// The response a handler hands to its responder, with helpers for JSON and the project's error shape.

/// A complete response: status, header fields and body bytes.
///
/// The server owns message framing, so it writes `Content-Length` and `Connection` itself and ignores any such
/// fields set here (a handler cannot get framing wrong). It adds `Date` unless one is set (RFC 9110 §6.6.1).
/// A `Connection: close` field set here is honoured: the connection closes after this response.
public struct HTTPResponse: Sendable {
    public var status: HTTPStatus
    public var headers: HTTPHeaders
    public var body: [UInt8]

    public init(status: HTTPStatus = .ok, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A response with a body and its `Content-Type`.
    public init(status: HTTPStatus = .ok, contentType: String, body: [UInt8]) {
        self.init(status: status, headers: ["Content-Type": contentType], body: body)
    }

    /// A `text/plain; charset=utf-8` response.
    public static func text(_ text: String, status: HTTPStatus = .ok) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(text.utf8))
    }

    /// An `application/json` response from already-encoded JSON bytes.
    public static func json(_ jsonBytes: [UInt8], status: HTTPStatus = .ok) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json", body: jsonBytes)
    }

    /// The error shape every Onestep endpoint answers with:
    /// `{"error": {"message": "...", "type": "..."}}` (the OpenAI-style envelope clients already parse).
    ///
    /// - Parameters:
    ///   - type: a short machine-readable class such as `invalid_request_error`; defaults from the status.
    public static func error(_ status: HTTPStatus, message: String, type: String? = nil) -> HTTPResponse {
        let errorType = type ?? defaultErrorType(for: status)
        let json = "{\"error\":{\"message\":\(jsonStringLiteral(message)),\"type\":\(jsonStringLiteral(errorType))}}"
        return .json(Array(json.utf8), status: status)
    }

    /// The response the server sends for a request it could not parse.
    public static func error(_ parseError: HTTPParseError) -> HTTPResponse {
        .error(parseError.status, message: parseError.message)
    }

    static func defaultErrorType(for status: HTTPStatus) -> String {
        switch status.code {
        case 408: return "timeout_error"
        case 413, 414, 431: return "request_too_large"
        case 429, 503: return "overloaded_error"
        case 400..<500: return "invalid_request_error"
        default: return "server_error"
        }
    }
}

/// Encodes `text` as a JSON string literal with the escapes RFC 8259 §7 requires (quote, backslash, controls).
///
/// Hand-written rather than via `JSONEncoder` so this module needs no Foundation; it is used for short messages.
public func jsonStringLiteral(_ text: String) -> String {
    var out = "\""
    out.reserveCapacity(text.utf8.count + 2)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    out += "\""
    return out
}

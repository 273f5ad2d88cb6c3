// Why a request could not be parsed, and which status answers each reason.

/// A request the parser refuses. Each case maps to one response status (``status``); after any of them the
/// connection is closed, because the parser can no longer tell where the next request would begin.
public enum HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request line exceeded ``HTTPRequestParser/Limits/maxRequestLineBytes`` (414, RFC 9112 §3).
    case requestLineTooLong
    /// The header section exceeded its byte or field-count limit (431, RFC 6585 §5).
    case headersTooLarge
    /// `Content-Length` exceeded ``HTTPRequestParser/Limits/maxBodyBytes`` (413, RFC 9110 §15.5.14).
    case bodyTooLarge
    /// A transfer coding other than `chunked` (501, RFC 9112 §6.1); the name, quoted at most a short prefix.
    case unsupportedTransferEncoding(String)
    /// A well-formed version other than HTTP/1.0 or HTTP/1.1 (505, RFC 9110 §15.6.6).
    case unsupportedVersion
    /// Anything else that breaks the grammar of RFC 9112 (400); the text says what, for the error body.
    case malformed(String)

    public var status: HTTPStatus {
        switch self {
        case .requestLineTooLong: return .uriTooLong
        case .headersTooLarge: return .requestHeaderFieldsTooLarge
        case .bodyTooLarge: return .contentTooLarge
        case .unsupportedTransferEncoding: return .notImplemented
        case .unsupportedVersion: return .httpVersionNotSupported
        case .malformed: return .badRequest
        }
    }

    /// A message suitable for the JSON error body sent to the client.
    public var message: String {
        switch self {
        case .requestLineTooLong: return "request line too long"
        case .headersTooLarge: return "request header fields too large"
        case .bodyTooLarge: return "request body too large"
        case .unsupportedTransferEncoding(let coding):
            return "transfer coding \"\(coding.prefix(32))\" is not supported; send the body chunked or with Content-Length"
        case .unsupportedVersion: return "only HTTP/1.0 and HTTP/1.1 are supported"
        case .malformed(let reason): return reason
        }
    }

    public var description: String { "\(status.code): \(message)" }
}

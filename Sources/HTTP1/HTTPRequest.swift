// The request model handed to handlers: method, target, version, headers and body.
//
// Everything here is a plain value (`Sendable`), so a handler may move a request to a compute thread freely.

/// An HTTP request method (RFC 9110 §9).
///
/// A struct rather than an enum: methods are an open set of tokens (RFC 9110 §9.1), and the server must be able to
/// carry an unknown one to the handler, which then answers 405 or 501 as it sees fit.
public struct HTTPMethod: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The method token exactly as received; methods are case-sensitive (RFC 9110 §9.1).
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }

    public static let GET = HTTPMethod("GET")
    public static let HEAD = HTTPMethod("HEAD")
    public static let POST = HTTPMethod("POST")
    public static let PUT = HTTPMethod("PUT")
    public static let DELETE = HTTPMethod("DELETE")
    public static let OPTIONS = HTTPMethod("OPTIONS")
    public static let PATCH = HTTPMethod("PATCH")

    public var description: String { rawValue }
}

/// The protocol version of a request. Only HTTP/1.0 and HTTP/1.1 are accepted; the parser answers anything else
/// that is well formed with 505 (RFC 9110 §15.6.6).
public enum HTTPVersion: Hashable, Sendable, CustomStringConvertible {
    case http1_0
    case http1_1

    public var description: String {
        switch self {
        case .http1_0: return "HTTP/1.0"
        case .http1_1: return "HTTP/1.1"
        }
    }
}

/// A complete request: head and body, as produced by ``HTTPRequestParser``.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    /// The request target as received (RFC 9112 §3.2), for example `/v1/images?seed=3`. For an absolute-form
    /// target (`http://host/path`) this is reduced to its path and query, which is what routing needs.
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders
    /// The body bytes, exactly `Content-Length` of them (empty when the request has no body).
    public var body: [UInt8]
    /// Whether the client allows the connection to stay open after this exchange (RFC 9112 §9.3):
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    public var keepAlive: Bool
    /// When the last byte of the request head arrived (the start of the server's latency measurement).
    public var headReceivedAt: ContinuousClock.Instant

    public init(
        method: HTTPMethod, target: String, version: HTTPVersion = .http1_1, headers: HTTPHeaders = HTTPHeaders(),
        body: [UInt8] = [], keepAlive: Bool = true, headReceivedAt: ContinuousClock.Instant = .now
    ) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
        self.headReceivedAt = headReceivedAt
    }

    /// The target up to (not including) `?`, still percent-encoded: routes compare against it verbatim.
    public var path: Substring {
        guard let question = target.firstIndex(of: "?") else { return target[...] }
        return target[..<question]
    }

    /// The raw query after `?`, or nil when the target has none.
    public var rawQuery: Substring? {
        guard let question = target.firstIndex(of: "?") else { return nil }
        return target[target.index(after: question)...]
    }

    /// The query parsed as `application/x-www-form-urlencoded` pairs, percent-decoded.
    public var query: HTTPQuery { HTTPQuery(parsing: rawQuery ?? "") }
}

// Turning a response into bytes on the wire (RFC 9112 §4 status line, §6 framing) and the Date header format.

#if canImport(Glibc)
import Glibc
#endif

/// What the serializer must know about the request being answered, beyond the response itself.
struct ResponseFraming {
    /// HEAD responses carry the headers a GET would, `Content-Length` included, but no body (RFC 9110 §9.3.2).
    var isHeadRequest: Bool
    /// Whether the connection stays open after this response (decided by the connection, not the handler).
    var keepAlive: Bool
    /// HTTP/1.0 clients need an explicit `Connection: keep-alive` to keep the connection (RFC 9112 §9.3).
    var requestVersion: HTTPVersion
}

extension HTTPResponse {
    /// Whether the handler asked for the connection to close after this response.
    var requestsClose: Bool { headers.containsToken("close", in: "Connection") }

    /// Appends the status line, header section and (unless HEAD or a bodiless status) the body to `buffer`.
    ///
    /// We always answer as HTTP/1.1, which an HTTP/1.0 client must accept (RFC 9110 §6.2: a server sends its
    /// highest minor version that the client's major version supports).
    func serialize(into buffer: inout [UInt8], framing: ResponseFraming, date: String) {
        buffer.append(contentsOf: "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n".utf8)
        var sawDate = false
        for field in headers {
            // The server owns framing: a handler's Content-Length / Transfer-Encoding / Connection could only
            // contradict what is actually written (RFC 9112 §6.3 makes such contradictions fatal to the client).
            if HTTPHeaders.namesEqual(field.name, "Content-Length")
                || HTTPHeaders.namesEqual(field.name, "Transfer-Encoding")
                || HTTPHeaders.namesEqual(field.name, "Connection") {
                continue
            }
            // RFC 9110 §5.5: a field value must not contain CR or LF; dropping such a field prevents response
            // splitting if a handler ever echoes client input into a header.
            if field.value.utf8.contains(where: { $0 == 13 || $0 == 10 })
                || field.name.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == UInt8(ascii: ":") }) {
                continue
            }
            if HTTPHeaders.namesEqual(field.name, "Date") { sawDate = true }
            buffer.append(contentsOf: field.name.utf8)
            buffer.append(contentsOf: ": ".utf8)
            buffer.append(contentsOf: field.value.utf8)
            buffer.append(contentsOf: "\r\n".utf8)
        }
        if !sawDate {
            buffer.append(contentsOf: "Date: \(date)\r\n".utf8)
        }
        if !status.forbidsBody {
            buffer.append(contentsOf: "Content-Length: \(body.count)\r\n".utf8)
        }
        if !framing.keepAlive {
            buffer.append(contentsOf: "Connection: close\r\n".utf8)
        } else if framing.requestVersion == .http1_0 {
            buffer.append(contentsOf: "Connection: keep-alive\r\n".utf8)
        }
        buffer.append(contentsOf: "\r\n".utf8)
        if !framing.isHeadRequest && !status.forbidsBody {
            buffer.append(contentsOf: body)
        }
    }

    /// The bytes of this response as a standalone message (used by tests and the 503 rejection path).
    func serialized(framing: ResponseFraming, date: String = HTTPDate.now()) -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(128 + body.count)
        serialize(into: &buffer, framing: framing, date: date)
        return buffer
    }
}

/// The IMF-fixdate format of the `Date` field (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
enum HTTPDate {
    private static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func now() -> String { format(secondsSinceEpoch: Int(time(nil))) }

    /// Formats with `gmtime_r`, which is thread-safe and locale-independent (unlike `strftime` with `%a`).
    static func format(secondsSinceEpoch: Int) -> String {
        var seconds = time_t(secondsSinceEpoch)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func twoDigits(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let weekday = weekdays[Int(parts.tm_wday) % 7]
        let month = months[Int(parts.tm_mon) % 12]
        return "\(weekday), \(twoDigits(parts.tm_mday)) \(month) \(parts.tm_year + 1900) "
            + "\(twoDigits(parts.tm_hour)):\(twoDigits(parts.tm_min)):\(twoDigits(parts.tm_sec)) GMT"
    }
}

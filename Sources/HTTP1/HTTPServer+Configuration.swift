// Everything an operator can tune about the server, with defaults suited to a small image-generation service.

extension HTTPServer {
    /// Listening address, capacity and timeouts.
    ///
    /// Timeouts, and what happens when each expires:
    /// - ``headerReadTimeout``: from the first byte of a request until its head is complete → 408, close.
    /// - ``bodyReadTimeout``: from the end of the head until the body is complete → 408, close.
    /// - ``idleTimeout``: a kept-alive connection with nothing in flight and no new byte → closed quietly.
    ///   A freshly accepted connection that sends nothing is treated the same way.
    /// - ``writeTimeout``: a response the client does not read for this long → connection dropped.
    /// - ``lingerTimeout``: after the last response of a closing connection, how long unread client bytes are
    ///   discarded before the socket is closed (closing with unread input makes the kernel send RST, which can
    ///   destroy the response before the client reads it; RFC 9112 §9.6 describes this "lingering close").
    /// There is no server-side deadline while a request waits for its handler: that is the handler's policy.
    public struct Configuration: Sendable {
        /// Numeric address or host name to bind (`0.0.0.0`, `::`, `127.0.0.1`, `localhost`).
        public var host: String
        /// TCP port; 0 lets the kernel pick a free one, reported by ``HTTPServer/port``.
        public var port: Int
        /// Length of the kernel's queue of not-yet-accepted connections (`listen(2)` backlog).
        public var backlog: Int
        /// Connections served at once. Beyond it, a new connection is accepted, answered
        /// `503 Service Unavailable` with `Connection: close`, and closed; at most as many again are kept in that
        /// refusing state, and anything beyond is closed without a response.
        public var maxConnections: Int
        /// Requests per connection handed to the handler and not yet answered; further pipelined requests wait
        /// in the socket buffer.
        public var maxPipelinedRequests: Int
        public var headerReadTimeout: Duration
        public var bodyReadTimeout: Duration
        public var idleTimeout: Duration
        public var writeTimeout: Duration
        public var lingerTimeout: Duration
        /// Request-line, header and body size limits (414, 431, 413).
        public var limits: HTTPRequestParser.Limits

        public init(
            host: String = "127.0.0.1",
            port: Int = 8080,
            backlog: Int = 512,
            maxConnections: Int = 512,
            maxPipelinedRequests: Int = 16,
            headerReadTimeout: Duration = .seconds(10),
            bodyReadTimeout: Duration = .seconds(30),
            idleTimeout: Duration = .seconds(60),
            writeTimeout: Duration = .seconds(30),
            lingerTimeout: Duration = .seconds(2),
            limits: HTTPRequestParser.Limits = HTTPRequestParser.Limits()
        ) {
            precondition((0...65535).contains(port), "port must be 0...65535")
            precondition(maxConnections > 0 && maxPipelinedRequests > 0 && backlog > 0,
                         "connection and pipelining limits must be positive")
            self.host = host
            self.port = port
            self.backlog = backlog
            self.maxConnections = maxConnections
            self.maxPipelinedRequests = maxPipelinedRequests
            self.headerReadTimeout = headerReadTimeout
            self.bodyReadTimeout = bodyReadTimeout
            self.idleTimeout = idleTimeout
            self.writeTimeout = writeTimeout
            self.lingerTimeout = lingerTimeout
            self.limits = limits
        }

        /// How often deadlines are checked: a quarter of the shortest timeout, between 5 ms and 250 ms, so a
        /// timeout fires at most 25% late without waking an idle server more than four times a second.
        var sweepInterval: Duration {
            let shortest = [headerReadTimeout, bodyReadTimeout, idleTimeout, writeTimeout, lingerTimeout].min()
                ?? .seconds(1)
            return min(max(shortest / 4, .milliseconds(5)), .milliseconds(250))
        }
    }
}

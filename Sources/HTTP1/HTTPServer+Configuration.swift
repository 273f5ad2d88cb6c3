// Everything an operator can tune about the server, with defaults suited to a small image-generation service.

extension HTTPServer {
    /// Listening address, capacity and timeouts.
    ///
    /// Timeouts, and what happens when each expires:
    /// - ``headerReadTimeout``: from the accept (first request) or the first byte (later requests) until the
    ///   head is complete → 408, close. A fresh connection that sends nothing at all is closed quietly then.
    /// - ``bodyReadTimeout``: from the end of the head until the body is complete → 408, close.
    /// - ``idleTimeout``: a kept-alive connection with nothing in flight and no new byte → closed quietly.
    /// - ``writeTimeout``: this long without any write progress while an answer is queued (the client reads
    ///   nothing) → connection dropped. A client reading slowly but steadily is never cut off (nginx's
    ///   `send_timeout`).
    /// - ``lingerTimeout``: after the last response of a closing connection, how long unread client bytes are
    ///   discarded before the socket is closed (closing with unread input makes the kernel send RST, which can
    ///   destroy the response before the client reads it; RFC 9112 §9.6 describes this "lingering close").
    /// There is no server-side deadline while a request waits for its handler: that is the handler's policy.
    public struct Configuration: Sendable {
        /// Numeric address or host name to bind (`0.0.0.0`, `::`, `127.0.0.1`, `localhost`).
        public var host: String
        /// TCP port; 0 lets the kernel pick a free one, reported by ``HTTPServer/port``.
        public var port: Int
        /// Length of the kernel's queue of not-yet-accepted connections (`listen(2)` backlog; the kernel caps
        /// it at `net.core.somaxconn`).
        public var backlog: Int
        /// Connections served at once. When a new one arrives with this many open, the longest-idle connection
        /// that has no request under way (kept-alive and waiting, or accepted and silent) is closed to make room.
        /// If every one is busy, the new connection is a reserve one (see ``reserveConnections``).
        public var maxConnections: Int
        /// Connections accepted beyond ``maxConnections`` while all of those are busy. Each may make one request:
        /// a path in ``reservedPaths`` (health checks, metrics) is served, anything else answered
        /// `503 Service Unavailable`, then closed. Beyond the reserve, a connection is answered 503 at once and
        /// closed; even out of descriptors, a spare one is used to say 503 rather than leaving clients unanswered.
        public var reserveConnections: Int
        /// Paths (without query) a reserve connection may ask for.
        public var reservedPaths: Set<String>
        /// Most connections one client address may hold (0: no cap, like nginx's `limit_conn`). Beyond it, a
        /// connection is answered 503 at once. Behind a proxy every client shares the proxy's address.
        public var maxConnectionsPerAddress: Int
        /// Requests served on one connection before it is closed (the last answer says `Connection: close`), like
        /// nginx's `keepalive_requests`.
        public var maxRequestsPerConnection: Int
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
            backlog: Int = 4096,
            maxConnections: Int = 512,
            reserveConnections: Int = 64,
            reservedPaths: Set<String> = [],
            maxConnectionsPerAddress: Int = 0,
            maxRequestsPerConnection: Int = 1000,
            headerReadTimeout: Duration = .seconds(10),
            bodyReadTimeout: Duration = .seconds(30),
            idleTimeout: Duration = .seconds(60),
            writeTimeout: Duration = .seconds(30),
            lingerTimeout: Duration = .seconds(2),
            limits: HTTPRequestParser.Limits = HTTPRequestParser.Limits()
        ) {
            precondition((0...65535).contains(port), "port must be 0...65535")
            precondition(maxConnections > 0 && maxRequestsPerConnection > 0 && backlog > 0,
                         "connection and request limits must be positive")
            precondition(reserveConnections >= 0 && maxConnectionsPerAddress >= 0, "limits must not be negative")
            self.host = host
            self.port = port
            self.backlog = backlog
            self.maxConnections = maxConnections
            self.reserveConnections = reserveConnections
            self.reservedPaths = reservedPaths
            self.maxConnectionsPerAddress = maxConnectionsPerAddress
            self.maxRequestsPerConnection = maxRequestsPerConnection
            self.headerReadTimeout = headerReadTimeout
            self.bodyReadTimeout = bodyReadTimeout
            self.idleTimeout = idleTimeout
            self.writeTimeout = writeTimeout
            self.lingerTimeout = lingerTimeout
            self.limits = limits
        }

        /// Bytes of further requests a connection reads ahead while one is being served; past this it stops
        /// reading until the answer is written, so pipelined requests wait in the client's socket buffers.
        static let readAhead = 64 * 1024

        /// How often deadlines are checked: a quarter of the shortest timeout, between 5 ms and 250 ms, so a
        /// timeout fires at most 25% late without waking an idle server more than four times a second.
        var sweepInterval: Duration {
            let shortest = [headerReadTimeout, bodyReadTimeout, idleTimeout, writeTimeout, lingerTimeout].min()
                ?? .seconds(1)
            return min(max(shortest / 4, .milliseconds(5)), .milliseconds(250))
        }
    }
}

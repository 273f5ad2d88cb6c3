// The public face of the server: configuration, lifecycle (start, drain, stop) and gauges.
//
// One event-loop thread owns every socket (epoll, level-triggered); handlers run on it and may answer later from
// any thread through their `HTTPResponder`. See EventLoop.swift for the loop and HTTPConnection.swift for the
// per-connection state machine.

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An HTTP/1.1 server on POSIX sockets and one epoll thread.
///
/// ```swift
/// let server = HTTPServer(configuration: .init(host: "127.0.0.1", port: 0)) { request, responder in
///     queue.enqueue(request) { result in responder.respond(.json(result)) }   // answered later, any thread
///     responder.onCancel { queue.drop(request) }
/// }
/// try server.start()
/// print("listening on", server.port)
/// ```
///
/// ## Ordering
/// Pipelined requests on one connection are served one at a time, in order: the next is handed to the handler once
/// the previous answer is written to the socket (RFC 9112 §9.3.2). A client that stops reading stops being served,
/// and holds at most one answer and ``Configuration/readAhead`` bytes of requests in the server's memory.
///
/// ## Shutdown
/// ``beginDrain()`` closes the listening socket, closes idle connections, lets requests already received finish
/// (their responses carry `Connection: close`), and the loop exits when the last connection closes.
/// ``waitUntilStopped(timeout:)`` blocks until then; ``stop()`` closes everything at once, cancelling pending
/// requests. ``shutdown(gracePeriod:)`` combines the two.
public final class HTTPServer: Sendable {
    /// Called on the event-loop thread for every request. Must return quickly; answer through the responder.
    public typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void
    /// Called on the event-loop thread when the last byte of a response was handed to the kernel. Must be quick.
    public typealias ResponseWrittenHook = @Sendable (HTTPExchangeRecord) -> Void

    public let configuration: Configuration
    let handler: Handler
    let onResponseWritten: ResponseWrittenHook?
    let gauges = Gauges()

    private struct Lifecycle {
        var mailbox: LoopMailbox?
        var port = 0
        var started = false
        var dropped = DropReport()
    }
    private let lifecycle = Locked<Lifecycle>(Lifecycle())
    private let drainRequested = Atomic<Bool>(false)
    private let stopRequested = Atomic<Bool>(false)

    /// - Parameters:
    ///   - onResponseWritten: per-response facts for access logs and metrics (see ``HTTPExchangeRecord``).
    ///   - handler: see ``Handler`` and ``HTTPResponder`` for the threading rules.
    public init(configuration: Configuration, onResponseWritten: ResponseWrittenHook? = nil,
                handler: @escaping Handler) {
        self.configuration = configuration
        self.onResponseWritten = onResponseWritten
        self.handler = handler
    }

    /// Binds, listens and starts the event-loop thread. Errors (address in use, bad host) are thrown here, so
    /// once this returns ``port`` is valid and connections are accepted.
    ///
    /// - Precondition: called at most once per server.
    public func start() throws(HTTPServerError) {
        let alreadyStarted = lifecycle.withLock { state -> Bool in
            defer { state.started = true }
            return state.started
        }
        precondition(!alreadyStarted, "HTTPServer.start() may be called only once")

        let listener = try Socket.listen(host: configuration.host, port: configuration.port,
                                         backlog: configuration.backlog)
        let epoll: Epoll
        do {
            epoll = try Epoll()
        } catch {
            close(listener.fd)
            throw error
        }
        let mailbox = LoopMailbox(wakeFD: epoll.wakeFD)
        lifecycle.withLock {
            $0.mailbox = mailbox
            $0.port = listener.port
        }
        gauges.running.store(true, ordering: .releasing)
        let context = EventLoop.Context(server: self, epoll: epoll, listenerFD: listener.fd, mailbox: mailbox)
        do {
            try startThread {
                // The loop object is created on its own thread and never leaves it: it needs no locks.
                EventLoop(context).run()
            }
        } catch {
            epoll.closeAll()
            close(listener.fd)
            gauges.running.store(false, ordering: .releasing)
            throw error
        }
    }

    /// The port the server listens on (the kernel's choice when configured with port 0); 0 before ``start()``.
    public var port: Int { lifecycle.withLock { $0.port } }

    /// Connections currently open (not counting ones being refused with 503 above ``Configuration/maxConnections``).
    public var openConnections: Int { gauges.openConnections.load(ordering: .relaxed) }

    /// Requests handed to the handler and not yet answered or cancelled.
    public var pendingResponses: Int { gauges.pendingResponses.load(ordering: .relaxed) }

    /// Requests cancelled because the client left (or the server stopped) before they were answered.
    public var cancelledRequests: Int { gauges.cancelledRequests.load(ordering: .relaxed) }

    /// Connections answered 503 and closed because ``Configuration/maxConnections`` were open and busy (or
    /// the client's address held ``Configuration/maxConnectionsPerAddress``).
    public var rejectedConnections: Int { gauges.rejectedConnections.load(ordering: .relaxed) }

    /// Idle or silent connections closed to make room for a new one at ``Configuration/maxConnections``.
    public var evictedConnections: Int { gauges.evictedConnections.load(ordering: .relaxed) }

    /// Connections closed because they sent nothing within ``Configuration/headerReadTimeout`` of the accept.
    public var silentConnectionsClosed: Int { gauges.silentConnectionsClosed.load(ordering: .relaxed) }

    /// Whether the event loop is running (true from ``start()`` until the loop has exited).
    public var isRunning: Bool { gauges.running.load(ordering: .acquiring) }

    /// Stops accepting (closes the listening socket), closes idle connections and lets in-flight requests finish.
    /// Returns at once; callable from any thread, repeatedly.
    public func beginDrain() {
        drainRequested.store(true, ordering: .releasing)
        lifecycle.withLock { $0.mailbox }?.wake()
    }

    /// Closes every connection now, cancelling pending requests, and ends the loop. Returns at once.
    public func stop() {
        stopRequested.store(true, ordering: .releasing)
        lifecycle.withLock { $0.mailbox }?.wake()
    }

    /// Blocks until the event loop has exited, or `timeout` passes. Returns whether it exited.
    @discardableResult
    public func waitUntilStopped(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            if ContinuousClock.now >= deadline { return false }
            usleep(2_000)
        }
        return true
    }

    /// What a stop cut off: connections closed with requests unanswered or answers not completely written.
    public struct DropReport: Sendable, Equatable {
        /// Connections closed with something undelivered.
        public var connections = 0
        /// Requests unanswered plus answers not completely written.
        public var responses = 0
        /// Bytes of answers queued and not written.
        public var bytes = 0
        public var isEmpty: Bool { connections == 0 }
    }

    /// What ``stop()`` (or the end of ``shutdown(gracePeriod:)``) dropped; empty until then.
    public var dropped: DropReport { lifecycle.withLock { $0.dropped } }

    func recordDropped(_ report: DropReport) { lifecycle.withLock { $0.dropped = report } }

    /// Drains, waits up to `gracePeriod` for in-flight requests and answers being written, then stops whatever
    /// is left and waits for the loop. Returns what was dropped (empty when everything was delivered in time).
    @discardableResult
    public func shutdown(gracePeriod: Duration) -> DropReport {
        beginDrain()
        if !waitUntilStopped(timeout: gracePeriod) {
            stop()
            waitUntilStopped(timeout: .seconds(5))
        }
        return dropped
    }

    var isDrainRequested: Bool { drainRequested.load(ordering: .acquiring) }
    var isStopRequested: Bool { stopRequested.load(ordering: .acquiring) }

    /// Counters shared between the loop (writer) and any thread (readers).
    final class Gauges: Sendable {
        let openConnections = Atomic<Int>(0)
        let pendingResponses = Atomic<Int>(0)
        let cancelledRequests = Atomic<Int>(0)
        let rejectedConnections = Atomic<Int>(0)
        let evictedConnections = Atomic<Int>(0)
        let silentConnectionsClosed = Atomic<Int>(0)
        let running = Atomic<Bool>(false)
    }
}

/// Facts about one written response, for access logs and metrics.
public struct HTTPExchangeRecord: Sendable {
    /// The request's method and target; nil when the request could not be parsed (400, 408, 413...) or the
    /// connection was refused with 503.
    public var method: HTTPMethod?
    public var target: String?
    public var status: HTTPStatus
    /// Status line, headers and body as written (no body for HEAD).
    public var bytesWritten: Int
    /// When the request head was complete (for server-generated errors: when the error was detected).
    public var headReceivedAt: ContinuousClock.Instant
    /// When the handler's response reached the event loop.
    public var respondedAt: ContinuousClock.Instant
    /// When the last byte was handed to the kernel.
    public var writtenAt: ContinuousClock.Instant
    /// The peer as `address:port`.
    public var remoteAddress: String
    /// The headers the handler set (access logs read timing annotations such as X-Queue-Ms from here).
    public var responseHeaders: HTTPHeaders = HTTPHeaders()
}

/// Runs `body` on a new detached POSIX thread (no Foundation needed).
func startThread(_ body: @escaping @Sendable () -> Void) throws(HTTPServerError) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(&thread, nil, { raw in
        guard let raw else { return nil }
        Unmanaged<Box>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, context)
    guard status == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        throw HTTPServerError(operation: "pthread_create", errno: status)
    }
    pthread_detach(thread)
}

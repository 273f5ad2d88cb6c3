// One client connection: its parser, the queue of requests awaiting responses, the output buffer and timeouts.
//
// Runs on the event-loop thread only. One request at a time: the next pipelined request is handed to the handler
// only once the previous answer has been written to the socket (as nginx, Go's net/http and SwiftNIO's pipeline
// handler do), so answers go out in arrival order (RFC 9112 §9.3.2), unsafe methods never run in parallel on one
// connection (§9.3.2 allows parallel handling only for safe ones), and a client that stops reading stops being
// served: its answer waits in one output buffer, its further requests in its own socket buffer (reading stops
// once `readAhead` bytes are buffered). Memory per connection: one answer plus `readAhead` plus the body limit.

#if canImport(Glibc)
import Glibc
#endif

final class HTTPConnection {
    /// Where the connection stands, as far as timeouts are concerned. Derived after every event from the facts
    /// below (output, exchanges, parser) by `updatePhase`; `since` is when the connection entered the phase.
    enum Phase: Equatable {
        /// Nothing in flight and no byte of a next request: a kept-alive connection waiting to be reused.
        /// Closed quietly after `idleTimeout`, at once when draining, or to make room for a new connection when
        /// `maxConnections` are open.
        case idle(since: ContinuousClock.Instant)
        /// Accepted, and not one byte received yet. Closed quietly `headerReadTimeout` after the accept (the
        /// header timeout runs from the accept, so silent sockets cannot hold slots for the idle timeout), after
        /// `lingerTimeout` when draining (its client is likely sending its first request right now), or to make
        /// room at the connection limit.
        case fresh(since: ContinuousClock.Instant)
        /// Part of a request head has arrived. `headerReadTimeout` → 408 and close.
        case readingHead(since: ContinuousClock.Instant)
        /// The head is complete and the body is still arriving. `bodyReadTimeout` → 408 and close.
        case readingBody(since: ContinuousClock.Instant)
        /// Requests are with the handler. No server deadline: the handler owns that policy. A disconnect now
        /// cancels the pending requests.
        case waitingForHandler
        /// Response bytes are queued and the socket is full; `since` is the last time a write made progress.
        /// `writeTimeout` without progress → connection dropped (nginx's `send_timeout`).
        case writing(since: ContinuousClock.Instant)
        /// The last response is written and our sending side shut down; input is read and discarded until the
        /// client closes or `lingerTimeout` passes, so the kernel does not reset the connection under the
        /// response (RFC 9112 §9.6).
        case lingering(since: ContinuousClock.Instant)

        func isSameKind(as other: Phase) -> Bool {
            switch (self, other) {
            case (.idle, .idle), (.fresh, .fresh), (.readingHead, .readingHead), (.readingBody, .readingBody),
                 (.waitingForHandler, .waitingForHandler), (.writing, .writing), (.lingering, .lingering):
                return true
            default:
                return false
            }
        }
    }

    /// One request handed to the handler (or a server-generated error), in arrival order.
    private struct Exchange {
        let sequence: UInt64
        let method: HTTPMethod?
        let target: String?
        let version: HTTPVersion
        let keepAlive: Bool
        let headReceivedAt: ContinuousClock.Instant
        /// Nil for responses the server makes itself (parse errors, timeouts, 503).
        let responder: HTTPResponder?
        var response: HTTPResponse?
        var respondedAt: ContinuousClock.Instant?
    }

    let token: UInt64
    let fd: Int32
    let remoteAddress: String
    /// The peer's address without the port, for the per-address connection cap.
    let clientHost: String
    /// Accepted while `maxConnections` were busy: its one request is served only if its path is one of
    /// `reservedPaths` (health checks, metrics); anything else is answered 503.
    let isReserve: Bool
    let acceptedAt: ContinuousClock.Instant
    private unowned let loop: EventLoop

    private var parser: HTTPRequestParser
    private var exchanges: [Exchange] = []
    private var nextSequence: UInt64 = 0
    private(set) var phase: Phase

    private var output: [UInt8] = []
    private var outputSent = 0
    /// Running totals of bytes queued and sent, to know when each response's last byte has left.
    private var totalQueued = 0
    private var totalSent = 0
    private var pendingRecords: [(endOffset: Int, record: HTTPExchangeRecord)] = []
    /// `totalQueued` at the end of each response not yet completely sent (to say what a stop dropped).
    private var unsentResponseEnds: [Int] = []
    private var outputBlocked = false
    /// When a write last moved bytes (or the output was first queued): the write timeout runs from here.
    private var lastWriteProgress: ContinuousClock.Instant = .now
    /// The socket's send queue (bytes not yet acknowledged by the client) when write progress was last noted.
    private var lastSendQueue: Int?

    /// False once no further request will be read: after `Connection: close`, an error, or a drain.
    private var acceptsRequests = true
    /// Set with the response that ends the connection; once it is flushed we linger and close.
    private var closeAfterFlush = false
    /// The client sent FIN (read returned 0).
    private var peerFinished = false
    private var isLingering = false
    private(set) var isClosed = false
    private var isScheduled = false
    /// The loop turn `dispatchedThisTurn` counts for.
    private var dispatchTurn: UInt64 = 0
    private var dispatchedThisTurn = 0
    /// Waiting for the client to read earlier answers out of the kernel's send buffer.
    private(set) var isThrottled = false
    private var interest: UInt32

    init(token: UInt64, fd: Int32, remoteAddress: String, clientHost: String, loop: EventLoop, isReserve: Bool) {
        self.token = token
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.clientHost = clientHost
        self.loop = loop
        self.isReserve = isReserve
        self.parser = HTTPRequestParser(limits: loop.configuration.limits)
        let now = ContinuousClock.now
        self.acceptedAt = now
        self.phase = .fresh(since: now)
        self.interest = Epoll.readable | Epoll.peerClosed
        loop.epoll.add(fd, events: interest, token: token)
    }

    // MARK: - Events

    func handle(events: UInt32) {
        if events & Epoll.hangUp != 0 {
            // Reset or error: nothing more can be sent or received.
            abort()
            return
        }
        if events & Epoll.writable != 0 { outputBlocked = false }
        if events & (Epoll.readable | Epoll.peerClosed) != 0 {
            if wantsInput {
                readAvailable()
            } else if events & Epoll.peerClosed != 0 {
                // FIN (or reset) while reading is paused: unread requests stay unread, as a client that closes
                // while waiting is taken to be gone (see peerDidFinish). Without this, level-triggered EPOLLRDHUP
                // would wake the loop again and again.
                peerDidFinish()
            }
        }
        advance()
    }

    /// Whether the connection reads from its socket now: not while its output is blocked, and not while the
    /// parser already holds `readAhead` bytes of further requests.
    private var wantsInput: Bool {
        if isLingering { return true }
        return acceptsRequests && !closeAfterFlush && !outputBlocked && !peerFinished
            && parser.wantsInput(readAhead: HTTPServer.Configuration.readAhead)
    }

    /// Reads what the socket has (a bounded number of times, for fairness) and parses as it goes, so requests
    /// that arrived together with the client's FIN are dispatched before the FIN is considered.
    private func readAvailable() {
        for _ in 0..<4 {
            guard wantsInput else { return }
            switch Socket.read(fd, into: loop.readBuffer) {
            case .transferred(let count):
                if isLingering { continue }  // discarded: the connection is ending
                parser.append(UnsafeRawBufferPointer(rebasing: loop.readBuffer[0..<count]))
                processInput()
                if count < loop.readBuffer.count { return }
            case .wouldBlock:
                return
            case .endOfStream:
                peerDidFinish()
                return
            case .failed:
                abort()
                return
            }
        }
    }

    /// The client closed its sending side. A request still waiting for its handler is cancelled (the client is
    /// taken to be gone; this server does not support half-closed clients that wait for a slow answer);
    /// responses already produced are still written.
    private func peerDidFinish() {
        peerFinished = true
        acceptsRequests = false
        if isLingering {
            close()
            return
        }
        let unanswered = exchanges.contains { $0.response == nil && !($0.responder?.hasResponded ?? true) }
        if unanswered {
            abort()
            return
        }
        closeAfterFlush = true
    }

    // MARK: - Requests

    /// Dispatches the next complete request, if the previous one is answered and its answer written.
    ///
    /// Two more gates keep one client from taking the loop or the compute: a connection is handed at most
    /// `dispatchesPerTurn` requests per loop iteration (then it waits for the next, after other sockets were
    /// polled), and a next request waits while more than `sendQueueHighWater` bytes of earlier answers sit unread
    /// in the kernel's send buffer (which autotunes to 4 MB: a non-reading client could otherwise get hundreds of
    /// answers computed).
    private func processInput() {
        while acceptsRequests && !closeAfterFlush && exchanges.isEmpty && !outputBlocked && outputSent == output.count {
            if parser.bufferedByteCount > 0 && nextSequence > 0 {
                if dispatchTurn != loop.turn {
                    dispatchTurn = loop.turn
                    dispatchedThisTurn = 0
                }
                if dispatchedThisTurn >= Self.dispatchesPerTurn {
                    loop.deferToNextTurn(self)
                    return
                }
                if let queued = Socket.unsentBytes(fd), queued > Self.sendQueueHighWater {
                    if !isThrottled {
                        isThrottled = true
                        lastSendQueue = queued
                        lastWriteProgress = .now
                    }
                    loop.throttle(self)
                    return
                }
                isThrottled = false
            }
            let request: HTTPRequest
            do {
                guard let next = try parser.nextRequest(now: .now) else { return }
                request = next
            } catch {
                queueServerResponse(.error(error))
                return
            }
            dispatch(request)
            dispatchedThisTurn += 1
        }
    }

    static let dispatchesPerTurn = 4
    static let sendQueueHighWater = 64 * 1024

    /// Called by the loop for a connection deferred to this turn or throttled: tries to dispatch again.
    func resume() {
        guard !isClosed else { return }
        advance()
    }

    private func dispatch(_ request: HTTPRequest) {
        // nginx's keepalive_requests: a connection serves a bounded number of requests, then closes.
        let lastAllowed = nextSequence + 1 >= UInt64(loop.configuration.maxRequestsPerConnection)
        let keepAlive = request.keepAlive && !loop.draining && !isReserve && !lastAllowed
        if !keepAlive { acceptsRequests = false }
        if isReserve && !loop.configuration.reservedPaths.contains(String(request.path)) {
            queueServerResponse(.error(.serviceUnavailable, message: "too many connections; retry later"))
            return
        }
        let responder = HTTPResponder(connectionID: token, sequence: nextSequence, mailbox: loop.mailbox)
        exchanges.append(Exchange(
            sequence: nextSequence, method: request.method, target: request.target, version: request.version,
            keepAlive: keepAlive, headReceivedAt: request.headReceivedAt, responder: responder))
        nextSequence += 1
        loop.gauges.pendingResponses.add(1, ordering: .relaxed)
        loop.server.handler(request, responder)
    }

    /// Queues a response the server makes itself; it is the last one on this connection.
    private func queueServerResponse(_ response: HTTPResponse) {
        acceptsRequests = false
        let now = ContinuousClock.now
        exchanges.append(Exchange(
            sequence: nextSequence, method: nil, target: nil, version: .http1_1, keepAlive: false,
            headReceivedAt: now, responder: nil, response: response, respondedAt: now))
        nextSequence += 1
    }

    /// Whether this connection may be closed to make room for a new one at the connection limit, and since
    /// when: a kept-alive connection waiting for its next request, or a fresh one that has sent nothing (nginx
    /// likewise reuses idle keep-alive connections when it runs out). Never one with a request under way.
    var evictableSince: ContinuousClock.Instant? {
        guard !isReserve, !isClosed, !isLingering else { return nil }
        switch phase {
        case .idle(let since), .fresh(let since): return since
        default: return nil
        }
    }

    /// What closing now would lose: requests unanswered plus answers not completely written, and their bytes.
    var undelivered: (responses: Int, bytes: Int) {
        let unanswered = exchanges.count
        let unsent = unsentResponseEnds.filter { $0 > totalSent }.count
        return (unanswered + unsent, output.count - outputSent)
    }

    /// A handler's response arrived through the mailbox.
    func complete(sequence: UInt64, response: HTTPResponse) {
        guard let index = exchanges.firstIndex(where: { $0.sequence == sequence }),
              exchanges[index].response == nil else { return }
        exchanges[index].response = response
        exchanges[index].respondedAt = .now
        loop.gauges.pendingResponses.subtract(1, ordering: .relaxed)
        if !isScheduled {
            isScheduled = true
            loop.schedule(self)
        }
    }

    func advanceIfScheduled() {
        guard isScheduled else { return }
        isScheduled = false
        advance()
    }

    // MARK: - Writing

    /// Moves the connection as far as it can go: serialize and write the answer that is next, then (once it is
    /// written) hand the next pipelined request to the handler, then recompute epoll interest and phase.
    private func advance() {
        guard !isClosed else { return }
        serializeReadyResponses()
        flush()
        guard !isClosed else { return }
        processInput()
        serializeReadyResponses()  // an answer the server made itself (parse error, 503 at the limit)
        sendContinueIfExpected()
        flush()
        guard !isClosed else { return }
        updateInterest()
        updatePhase(now: .now)
    }

    private func serializeReadyResponses() {
        while let exchange = exchanges.first, let response = exchange.response {
            exchanges.removeFirst()
            let isLast = exchanges.isEmpty && (!acceptsRequests || peerFinished)
            let keepAlive = exchange.keepAlive && !response.requestsClose && !isLast && !peerFinished
            let start = output.count
            response.serialize(into: &output,
                               framing: ResponseFraming(isHeadRequest: exchange.method == .HEAD, keepAlive: keepAlive,
                                                        requestVersion: exchange.version),
                               date: loop.currentDate())
            totalQueued += output.count - start
            unsentResponseEnds.append(totalQueued)
            if loop.server.onResponseWritten != nil {
                let now = ContinuousClock.now
                pendingRecords.append((totalQueued, HTTPExchangeRecord(
                    method: exchange.method, target: exchange.target, status: response.status,
                    bytesWritten: output.count - start, headReceivedAt: exchange.headReceivedAt,
                    respondedAt: exchange.respondedAt ?? now, writtenAt: now, remoteAddress: remoteAddress,
                    responseHeaders: response.headers)))
            }
            if !keepAlive {
                acceptsRequests = false
                closeAfterFlush = true
                abandonExchanges()  // a handler asked to close mid-pipeline: later requests go unanswered
                return
            }
        }
    }

    /// RFC 9110 §10.1.1: tell a client waiting on `Expect: 100-continue` to send its body — only when nothing
    /// else is queued, because an interim response must not overtake an earlier final one.
    private func sendContinueIfExpected() {
        guard parser.expectsContinue, acceptsRequests, exchanges.isEmpty, outputSent == output.count else { return }
        let interim = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
        output.append(contentsOf: interim)
        totalQueued += interim.count
        parser.acknowledgeContinue()
    }

    private func flush() {
        while outputSent < output.count {
            let result = output.withUnsafeBytes { bytes in
                Socket.write(fd, UnsafeRawBufferPointer(rebasing: bytes[outputSent...]))
            }
            switch result {
            case .transferred(let count):
                outputSent += count
                totalSent += count
                if count > 0 { lastWriteProgress = .now }
                while let first = unsentResponseEnds.first, first <= totalSent { unsentResponseEnds.removeFirst() }
                reportWrittenResponses()
            case .wouldBlock:
                if !outputBlocked { lastWriteProgress = .now }
                outputBlocked = true
                lastSendQueue = Socket.unsentBytes(fd)
                return
            case .endOfStream, .failed:
                abort()
                return
            }
        }
        outputBlocked = false
        // Keep a modest buffer for the next response; drop a large one (an image) instead of holding it.
        if output.capacity > 256 * 1024 { output = [] } else { output.removeAll(keepingCapacity: true) }
        outputSent = 0
        if closeAfterFlush && exchanges.isEmpty && !isLingering {
            if peerFinished {
                close()
            } else {
                shutdown(fd, Int32(SHUT_WR))
                isLingering = true
                phase = .lingering(since: .now)
            }
        }
    }

    private func reportWrittenResponses() {
        guard let hook = loop.server.onResponseWritten else { return }
        while let first = pendingRecords.first, first.endOffset <= totalSent {
            pendingRecords.removeFirst()
            var record = first.record
            record.writtenAt = .now
            hook(record)
        }
    }

    // MARK: - Interest, phase, deadlines

    private func updateInterest() {
        var wanted: UInt32 = 0
        if !peerFinished {
            wanted |= Epoll.peerClosed
            if wantsInput { wanted |= Epoll.readable }
        }
        if outputBlocked { wanted |= Epoll.writable }
        if wanted != interest {
            interest = wanted
            loop.epoll.modify(fd, events: wanted, token: token)
        }
    }

    /// Recomputes the phase from the facts; a phase that continues keeps its start time.
    private func updatePhase(now: ContinuousClock.Instant) {
        guard !isLingering else { return }
        let current: Phase
        if outputBlocked || (isThrottled && exchanges.isEmpty) {
            // Always replaced: `since` follows write progress (a throttled connection waits on the client's reading
            // just the same).
            phase = .writing(since: lastWriteProgress)
            return
        } else if !exchanges.isEmpty {
            current = .waitingForHandler
        } else if parser.isReadingBody {
            current = .readingBody(since: now)
        } else if parser.hasPartialRequest {
            // The first request's head is timed from the accept, so trickling it in cannot extend the timeout.
            current = .readingHead(since: nextSequence == 0 ? acceptedAt : now)
        } else if nextSequence == 0 {
            current = .fresh(since: acceptedAt)
        } else {
            if loop.draining {
                close()
                return
            }
            current = .idle(since: now)
        }
        if !phase.isSameKind(as: current) { phase = current }
    }

    func expireDeadlines(now: ContinuousClock.Instant) {
        let configuration = loop.configuration
        switch phase {
        case .idle(let since) where now - since >= configuration.idleTimeout:
            close()
        case .fresh(let since) where now - since >= (loop.draining ? configuration.lingerTimeout : configuration.headerReadTimeout):
            // Nothing was asked, so nothing is answered (as nginx and Go's ReadHeaderTimeout do).
            loop.gauges.silentConnectionsClosed.add(1, ordering: .relaxed)
            close()
        case .readingHead(let since) where now - since >= configuration.headerReadTimeout,
             .readingBody(let since) where now - since >= configuration.bodyReadTimeout:
            // RFC 9110 §15.5.9: 408 tells the client the server gave up waiting, and that it closes.
            queueServerResponse(.error(.requestTimeout, message: "timed out reading the request"))
            advance()
        case .writing(let since) where now - since >= configuration.writeTimeout:
            // The kernel wakes us for writing only once a third of a send buffer (megabytes, after autotuning) is
            // free, so a client reading slowly but steadily can go a long time without a write of ours succeeding.
            // Its progress shows in the socket's send queue shrinking: that counts as progress too.
            let queued = Socket.unsentBytes(fd)
            if let queued, let last = lastSendQueue, queued < last {
                lastSendQueue = queued
                lastWriteProgress = now
                phase = .writing(since: now)
            } else {
                abort()
            }
        case .lingering(let since) where now - since >= configuration.lingerTimeout:
            close()
        default:
            break
        }
    }

    // MARK: - Ending

    /// The server is draining: finish what was received, then close. A partly received request is still served
    /// (its response will carry `Connection: close`); so is a request that is in the socket but not read yet,
    /// rather than being reset by a close with unread input. An idle kept-alive connection is closed now; a fresh
    /// one (accepted, no request yet) waits up to `lingerTimeout` for its first request.
    func beginDrain() {
        guard !isLingering else { return }
        readAvailable()
        guard !isClosed else { return }
        let fresh = nextSequence == 0
        if exchanges.isEmpty && !parser.hasPartialRequest && output.isEmpty && !fresh {
            close()
            return
        }
        if !parser.hasPartialRequest && !fresh { acceptsRequests = false }
        advance()
    }

    /// Cancels every unanswered request and closes at once.
    func abort() {
        close()
    }

    private func abandonExchanges() {
        for exchange in exchanges where exchange.response == nil {
            guard let responder = exchange.responder else { continue }
            loop.gauges.pendingResponses.subtract(1, ordering: .relaxed)
            responder.cancel(beforeCallbacks: { loop.gauges.cancelledRequests.add(1, ordering: .relaxed) })
        }
        exchanges.removeAll()
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        loop.epoll.remove(fd)
        Glibc.close(fd)
        loop.connectionDidClose(self)
        abandonExchanges()
    }
}

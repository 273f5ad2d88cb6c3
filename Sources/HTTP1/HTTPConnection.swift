// One client connection: its parser, the queue of requests awaiting responses, the output buffer and timeouts.
//
// Runs on the event-loop thread only. Requests are handed to the handler as soon as they are parsed (up to
// `maxPipelinedRequests` outstanding) and answered strictly in arrival order (RFC 9112 §9.3.2): a response that
// completes early waits in its `Exchange` until every earlier one has been written.

#if canImport(Glibc)
import Glibc
#endif

final class HTTPConnection {
    /// Where the connection stands, as far as timeouts are concerned. Derived after every event from the facts
    /// below (output, exchanges, parser) by `updatePhase`; `since` is when the connection entered the phase.
    enum Phase: Equatable {
        /// Nothing in flight and no byte of a next request: a kept-alive (or fresh) connection waiting to be
        /// reused. Closed quietly after `idleTimeout`; when draining, a kept-alive one at once and a fresh one
        /// (no request yet) after `lingerTimeout`, since its client is likely sending its first request right now.
        case idle(since: ContinuousClock.Instant)
        /// Part of a request head has arrived. `headerReadTimeout` → 408 and close.
        case readingHead(since: ContinuousClock.Instant)
        /// The head is complete and the body is still arriving. `bodyReadTimeout` → 408 and close.
        case readingBody(since: ContinuousClock.Instant)
        /// Requests are with the handler. No server deadline: the handler owns that policy. A disconnect now
        /// cancels the pending requests.
        case waitingForHandler
        /// Response bytes are queued and the socket is full. `writeTimeout` → connection dropped.
        case writing(since: ContinuousClock.Instant)
        /// The last response is written and our sending side shut down; input is read and discarded until the
        /// client closes or `lingerTimeout` passes, so the kernel does not reset the connection under the
        /// response (RFC 9112 §9.6).
        case lingering(since: ContinuousClock.Instant)

        func isSameKind(as other: Phase) -> Bool {
            switch (self, other) {
            case (.idle, .idle), (.readingHead, .readingHead), (.readingBody, .readingBody),
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
    /// Accepted above `maxConnections` only to be told 503.
    let isRefusal: Bool
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
    private var outputBlocked = false

    /// False once no further request will be read: after `Connection: close`, an error, or a drain.
    private var acceptsRequests = true
    /// Set with the response that ends the connection; once it is flushed we linger and close.
    private var closeAfterFlush = false
    /// The client sent FIN (read returned 0).
    private var peerFinished = false
    private var isLingering = false
    private(set) var isClosed = false
    private var isScheduled = false
    private var interest: UInt32

    init(token: UInt64, fd: Int32, remoteAddress: String, loop: EventLoop, isRefusal: Bool) {
        self.token = token
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.loop = loop
        self.isRefusal = isRefusal
        self.parser = HTTPRequestParser(limits: loop.configuration.limits)
        self.phase = .idle(since: .now)
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
            readAvailable()
        }
        advance()
    }

    /// Reads what the socket has (a bounded number of times, for fairness) and parses as it goes, so requests
    /// that arrived together with the client's FIN are dispatched before the FIN is considered.
    private func readAvailable() {
        for _ in 0..<4 {
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

    /// Dispatches every complete request the parser holds, within the pipelining cap.
    private func processInput() {
        while acceptsRequests && !closeAfterFlush && exchanges.count < loop.configuration.maxPipelinedRequests {
            let request: HTTPRequest
            do {
                guard let next = try parser.nextRequest(now: .now) else { return }
                request = next
            } catch {
                queueServerResponse(.error(error))
                return
            }
            dispatch(request)
        }
    }

    private func dispatch(_ request: HTTPRequest) {
        let keepAlive = request.keepAlive && !loop.draining
        if !keepAlive { acceptsRequests = false }
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

    /// Answers 503 to a connection accepted above the limit.
    func refuse() {
        queueServerResponse(.error(.serviceUnavailable, message: "too many connections; retry later"))
        advance()
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

    /// Moves the connection as far as it can go: serialize responses that are next in order, accept more
    /// pipelined requests, write, then recompute epoll interest and phase.
    private func advance() {
        guard !isClosed else { return }
        serializeReadyResponses()
        processInput()
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
                reportWrittenResponses()
            case .wouldBlock:
                outputBlocked = true
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
            let wantsInput = isLingering
                || (acceptsRequests && !closeAfterFlush && !outputBlocked
                    && exchanges.count < loop.configuration.maxPipelinedRequests)
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
        if outputBlocked {
            current = .writing(since: now)
        } else if !exchanges.isEmpty {
            current = .waitingForHandler
        } else if parser.isReadingBody {
            current = .readingBody(since: now)
        } else if parser.hasPartialRequest {
            current = .readingHead(since: now)
        } else {
            if loop.draining && nextSequence > 0 {
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
        case .idle(let since) where now - since >= (loop.draining ? configuration.lingerTimeout : configuration.idleTimeout):
            close()
        case .readingHead(let since) where now - since >= configuration.headerReadTimeout,
             .readingBody(let since) where now - since >= configuration.bodyReadTimeout:
            // RFC 9110 §15.5.9: 408 tells the client the server gave up waiting, and that it closes.
            queueServerResponse(.error(.requestTimeout, message: "timed out reading the request"))
            advance()
        case .writing(let since) where now - since >= configuration.writeTimeout:
            abort()
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
            if responder.cancel() { loop.gauges.cancelledRequests.add(1, ordering: .relaxed) }
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

// The event loop: one thread, one epoll instance, every socket of the server.
//
// Each iteration: wait for readiness (at most one sweep interval), handle accepts / reads / writes, deliver
// responses posted by other threads, then apply drain and stop requests and expire deadlines.
// Everything in this file and in HTTPConnection.swift runs on the loop thread only, which is why neither needs a
// lock; the only state shared with other threads lives in `LoopMailbox` and `HTTPServer.Gauges`.

#if canImport(Glibc)
import Glibc
#endif

final class EventLoop {
    /// What the starting thread hands to the loop thread (all `Sendable`).
    struct Context: Sendable {
        let server: HTTPServer
        let epoll: Epoll
        let listenerFD: Int32
        let mailbox: LoopMailbox
    }

    /// epoll tokens: 0 and 1 are the listener and the eventfd; connections count up from 2 and are never
    /// reused, so a late response can never reach a newer connection that happens to have the same descriptor.
    private static let listenerToken: UInt64 = 0
    private static let wakeToken: UInt64 = 1
    private var nextToken: UInt64 = 2

    let server: HTTPServer
    let configuration: HTTPServer.Configuration
    let epoll: Epoll
    let mailbox: LoopMailbox
    private var listenerFD: Int32?
    private var connections: [UInt64: HTTPConnection] = [:]
    /// Reserve connections (accepted while `maxConnections` were busy).
    private var reserveCount = 0
    /// Open connections per client address, kept only when `maxConnectionsPerAddress` is set.
    private var perAddress: [String: Int] = [:]
    /// A descriptor held back for the moment the process runs out: closed to accept one connection, answer it
    /// 503 and close it, then reopened (libev's and nginx's trick), so clients are told rather than left queued.
    private var spareFD: Int32 = -1
    /// Connections whose responses arrived in this batch; advanced once each after the batch.
    private var scheduled: [HTTPConnection] = []
    /// Loop iterations so far: a connection is handed a bounded number of requests per turn.
    private(set) var turn: UInt64 = 0
    /// Connections that used their turn's share and have more requests: resumed next turn (epoll polled at once).
    private var deferred: [HTTPConnection] = []
    /// Connections waiting for their client to read earlier answers: rechecked every few milliseconds.
    private var throttled: [HTTPConnection] = []
    private(set) var draining = false
    /// The listener is out of epoll after EMFILE; re-armed at the next deadline sweep.
    private var acceptPaused = false

    /// Shared by every connection: a read lands here and is appended to that connection's parser right away.
    let readBuffer: UnsafeMutableRawBufferPointer
    private let eventBuffer: UnsafeMutableRawBufferPointer
    private var cachedDate: (second: Int, text: String) = (-1, "")

    init(_ context: Context) {
        server = context.server
        configuration = context.server.configuration
        epoll = context.epoll
        mailbox = context.mailbox
        listenerFD = context.listenerFD
        readBuffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        eventBuffer = .allocate(byteCount: 256 * LinuxSyscalls.epollEventStride, alignment: 16)
        spareFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    deinit {
        readBuffer.deallocate()
        eventBuffer.deallocate()
    }

    var gauges: HTTPServer.Gauges { server.gauges }

    func run() {
        mailbox.markLoopThread()
        if let listenerFD { epoll.add(listenerFD, events: Epoll.readable, token: Self.listenerToken) }
        epoll.add(epoll.wakeFD, events: Epoll.readable, token: Self.wakeToken)
        let sweepInterval = configuration.sweepInterval
        let waitMilliseconds = Int32(sweepInterval.components.seconds * 1000
                                     + sweepInterval.components.attoseconds / 1_000_000_000_000_000)
        var nextSweep = ContinuousClock.now + sweepInterval

        while true {
            turn &+= 1
            let timeout = !deferred.isEmpty ? 0 : !throttled.isEmpty ? min(10, max(1, waitMilliseconds)) : max(1, waitMilliseconds)
            epoll.wait(buffer: eventBuffer, timeoutMilliseconds: timeout) { events, token in
                handle(events: events, token: token)
            }
            deliverCompletions()
            resumeWaiting()
            if server.isStopRequested {
                stopAll()
                break
            }
            if server.isDrainRequested && !draining { beginDrain() }
            let now = ContinuousClock.now
            if now >= nextSweep {
                for connection in Array(connections.values) { connection.expireDeadlines(now: now) }
                if acceptPaused, let listenerFD {
                    acceptPaused = false
                    epoll.add(listenerFD, events: Epoll.readable, token: Self.listenerToken)
                }
                nextSweep = now + sweepInterval
            }
            if draining && connections.isEmpty { break }
        }
        tearDown()
    }

    private func handle(events: UInt32, token: UInt64) {
        switch token {
        case Self.listenerToken: acceptConnections()
        case Self.wakeToken: epoll.consumeWake()
        default: connections[token]?.handle(events: events)
        }
    }

    // MARK: - Accepting

    /// Accepts what is pending (at most `limit`, 64 per wake-up by default, so a connection storm cannot starve
    /// existing clients).
    ///
    /// At `maxConnections`, room is made by closing the longest-idle connection with no request under way
    /// (kept-alive, or accepted and silent), so silent sockets cannot lock anyone out; if all are busy, the new
    /// connection joins the reserve (health checks still answered); past the reserve, or past the per-address
    /// cap, it is answered 503 at once.
    private func acceptConnections(limit: Int = 64) {
        guard let listenerFD else { return }
        for _ in 0..<limit {
            let fd: Int32, remoteAddress: String
            switch Socket.accept(listenerFD) {
            case .accepted(let acceptedFD, let address):
                (fd, remoteAddress) = (acceptedFD, address)
            case .nonePending:
                return
            case .outOfDescriptors:
                if refuseWithSpareDescriptor(listenerFD) { continue }
                // Stop watching the listener until the next sweep instead of spinning on it.
                epoll.remove(listenerFD)
                acceptPaused = true
                return
            }
            let host = Self.host(of: remoteAddress)
            if configuration.maxConnectionsPerAddress > 0,
               perAddress[host, default: 0] >= configuration.maxConnectionsPerAddress {
                refuseAtOnce(fd, message: "too many connections from your address; retry later")
                continue
            }
            var reserve = false
            if connections.count - reserveCount >= configuration.maxConnections {
                if let victim = longestIdleConnection() {
                    victim.close()
                    gauges.evictedConnections.add(1, ordering: .relaxed)
                } else if reserveCount < configuration.reserveConnections {
                    reserve = true
                } else {
                    refuseAtOnce(fd, message: "too many connections; retry later")
                    continue
                }
            }
            let token = nextToken
            nextToken += 1
            let connection = HTTPConnection(token: token, fd: fd, remoteAddress: remoteAddress, clientHost: host,
                                            loop: self, isReserve: reserve)
            connections[token] = connection
            if configuration.maxConnectionsPerAddress > 0 { perAddress[host, default: 0] += 1 }
            if reserve {
                reserveCount += 1
            } else {
                gauges.openConnections.add(1, ordering: .relaxed)
            }
        }
    }

    /// The served connection idle (or silent since its accept) for the longest time, if any. A linear scan:
    /// it runs only at the connection limit, and costs microseconds for a thousand connections.
    private func longestIdleConnection() -> HTTPConnection? {
        var oldest: (HTTPConnection, ContinuousClock.Instant)?
        for connection in connections.values {
            guard let since = connection.evictableSince else { continue }
            if oldest == nil || since < oldest!.1 { oldest = (connection, since) }
        }
        return oldest?.0
    }

    /// Answers 503 on a just-accepted socket and closes it. A fresh socket's send buffer is empty, so the write
    /// completes; reading what the client already sent before closing keeps the kernel from answering the
    /// close with a reset that could destroy the 503 before the client reads it.
    private func refuseAtOnce(_ fd: Int32, message: String) {
        gauges.rejectedConnections.add(1, ordering: .relaxed)
        let response = HTTPResponse.error(.serviceUnavailable, message: message)
            .serialized(framing: ResponseFraming(isHeadRequest: false, keepAlive: false, requestVersion: .http1_1),
                        date: currentDate())
        _ = response.withUnsafeBytes { Socket.write(fd, $0) }
        shutdown(fd, Int32(SHUT_WR))
        for _ in 0..<4 {
            guard case .transferred = Socket.read(fd, into: readBuffer) else { break }
        }
        Glibc.close(fd)
    }

    /// Out of descriptors: frees the spare one to accept a connection and tell it 503. Returns false if there is
    /// no spare or nothing was pending.
    private func refuseWithSpareDescriptor(_ listenerFD: Int32) -> Bool {
        guard spareFD >= 0 else { return false }
        Glibc.close(spareFD)
        spareFD = -1
        defer { spareFD = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        guard case .accepted(let fd, _) = Socket.accept(listenerFD) else { return false }
        refuseAtOnce(fd, message: "server out of file descriptors; retry later")
        return true
    }

    /// `host` of `host:port` or `[v6]:port`.
    static func host(of address: String) -> String {
        guard let colon = address.lastIndex(of: ":") else { return address }
        return String(address[..<colon])
    }

    /// Called by a connection as it closes its socket.
    func connectionDidClose(_ connection: HTTPConnection) {
        connections.removeValue(forKey: connection.token)
        if configuration.maxConnectionsPerAddress > 0 {
            let left = perAddress[connection.clientHost, default: 1] - 1
            perAddress[connection.clientHost] = left > 0 ? left : nil
        }
        if connection.isReserve {
            reserveCount -= 1
        } else {
            gauges.openConnections.subtract(1, ordering: .relaxed)
        }
    }

    // MARK: - Responses from other threads

    /// Hands every posted response to its connection (responses for connections already closed are dropped),
    /// then lets each touched connection write once. Repeats because writing may dispatch pipelined requests
    /// whose handlers answer synchronously.
    private func deliverCompletions() {
        while true {
            let completions = mailbox.takeAll()
            if completions.isEmpty { return }
            for completion in completions {
                connections[completion.connectionID]?.complete(sequence: completion.sequence,
                                                               response: completion.response)
            }
            let touched = scheduled
            scheduled.removeAll(keepingCapacity: true)
            for connection in touched { connection.advanceIfScheduled() }
        }
    }

    func schedule(_ connection: HTTPConnection) {
        scheduled.append(connection)
    }

    func deferToNextTurn(_ connection: HTTPConnection) {
        deferred.append(connection)
    }

    func throttle(_ connection: HTTPConnection) {
        throttled.append(connection)
    }

    /// Gives deferred and throttled connections their next chance (each re-registers itself if it must wait
    /// again), then delivers what their handlers answered at once.
    private func resumeWaiting() {
        guard !deferred.isEmpty || !throttled.isEmpty else { return }
        let waiting = deferred + throttled
        deferred.removeAll(keepingCapacity: true)
        throttled.removeAll(keepingCapacity: true)
        var seen = Set<UInt64>()
        for connection in waiting where seen.insert(connection.token).inserted { connection.resume() }
        deliverCompletions()
    }

    // MARK: - Drain and stop

    private func beginDrain() {
        draining = true
        // Connections still in the kernel's accept queue have completed their handshake and may have sent a
        // request already; closing the listener would reset them. Accept them first: they are answered like the
        // others (found by loadtest/faults/sigterm: a few resets per SIGTERM under load). A handshake completing
        // between this and the close is still reset; any later one is refused, which clients handle cleanly.
        acceptConnections(limit: configuration.backlog + 64)
        closeListener()
        for connection in Array(connections.values) { connection.beginDrain() }
    }

    private func stopAll() {
        draining = true
        closeListener()
        var report = HTTPServer.DropReport()
        for connection in Array(connections.values) {
            let lost = connection.undelivered
            if lost.responses > 0 || lost.bytes > 0 {
                report.connections += 1
                report.responses += lost.responses
                report.bytes += lost.bytes
            }
            connection.abort()
        }
        server.recordDropped(report)
    }

    private func closeListener() {
        guard let fd = listenerFD else { return }
        if !acceptPaused { epoll.remove(fd) }
        Glibc.close(fd)
        listenerFD = nil
    }

    private func tearDown() {
        for connection in Array(connections.values) { connection.abort() }
        closeListener()
        mailbox.close()
        epoll.closeAll()
        if spareFD >= 0 { Glibc.close(spareFD) }
        gauges.running.store(false, ordering: .releasing)
    }

    // MARK: - Shared helpers

    /// The `Date` value, formatted at most once per second.
    func currentDate() -> String {
        let second = Int(time(nil))
        if second != cachedDate.second { cachedDate = (second, HTTPDate.format(secondsSinceEpoch: second)) }
        return cachedDate.text
    }
}

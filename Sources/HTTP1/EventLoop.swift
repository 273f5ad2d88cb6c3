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
    /// Connections being answered 503 because `maxConnections` were open.
    private var refusingCount = 0
    /// Connections whose responses arrived in this batch; advanced once each after the batch.
    private var scheduled: [HTTPConnection] = []
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
            epoll.wait(buffer: eventBuffer, timeoutMilliseconds: max(1, waitMilliseconds)) { events, token in
                handle(events: events, token: token)
            }
            deliverCompletions()
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
                // Stop watching the listener until the next sweep instead of spinning on it.
                epoll.remove(listenerFD)
                acceptPaused = true
                return
            }
            let served = connections.count - refusingCount
            let refuse = served >= configuration.maxConnections
            if refuse && refusingCount >= configuration.maxConnections {
                // Already refusing as many as we serve: protect the descriptor table, close without a word.
                Glibc.close(fd)
                gauges.rejectedConnections.add(1, ordering: .relaxed)
                continue
            }
            let token = nextToken
            nextToken += 1
            let connection = HTTPConnection(token: token, fd: fd, remoteAddress: remoteAddress, loop: self,
                                            isRefusal: refuse)
            connections[token] = connection
            if refuse {
                refusingCount += 1
                gauges.rejectedConnections.add(1, ordering: .relaxed)
                connection.refuse()
            } else {
                gauges.openConnections.add(1, ordering: .relaxed)
            }
        }
    }

    /// Called by a connection as it closes its socket.
    func connectionDidClose(_ connection: HTTPConnection) {
        connections.removeValue(forKey: connection.token)
        if connection.isRefusal {
            refusingCount -= 1
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
        for connection in Array(connections.values) { connection.abort() }
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

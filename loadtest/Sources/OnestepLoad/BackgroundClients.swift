// `--idle-connections N` and `--slowloris N`: raw-socket clients beside the measured traffic, on their own thread
// with poll(2), so the libcurl loop and its timings are untouched.
//
// Idle connections are opened (and, with `--idle-path`, used for one keep-alive GET, so they are true kept-alive
// connections) before the measured traffic starts, then held without a byte until the end; the report says how
// many the server closed meanwhile. Slowloris connections send a request head one byte per `--slowloris-interval`
// and never finish it; a server with a header timeout cuts them off (408, or a plain close) and they reconnect at
// once, so N are trickling at any time. The report says how many were cut off, how, after how long, and how long
// the oldest still-open one had been trickling when the run ended (a server without a timeout shows it here).
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What `--idle-connections`, `--idle-path`, `--slowloris` and `--slowloris-interval` asked for.
public struct BackgroundPlan: Sendable, Equatable {
    /// The first URL's host and port (plain http only).
    public var host: String
    public var port: Int
    public var idleConnections = 0
    /// GET once on each idle connection before it goes quiet; nil: connect only.
    public var idlePath: String? = nil
    public var slowloris = 0
    /// Seconds between two bytes of a slowloris head.
    public var slowlorisInterval: Double = 1

    public init(host: String, port: Int) { self.host = host; self.port = port }
}

/// What happened to the background clients (keys as in the `--json` report's "background" object).
public struct BackgroundReport: Sendable, Codable, Equatable {
    public var idle_requested = 0
    public var idle_opened = 0
    /// Could not connect, or (with `--idle-path`) got no complete answer to the one request.
    public var idle_open_failed = 0
    public var idle_answered = 0
    public var idle_open_seconds = 0.0
    /// Held connections the server closed before the end of the run.
    public var idle_closed_by_server = 0
    public var idle_still_open = 0
    public var slowloris_requested = 0
    /// Slowloris connections made, reconnects included.
    public var slowloris_connections = 0
    public var slowloris_connect_failed = 0
    /// Slowloris connections the server ended, by how: a status code ("408") or "close" (no response).
    public var slowloris_cut_off_by: [String: Int] = [:]
    /// Seconds from connect to cut-off: "p50" and "max".
    public var slowloris_cut_off_after_s: [String: Double] = [:]
    public var slowloris_still_open = 0
    /// How long the longest-trickling connection still open at the end had been open, seconds.
    public var slowloris_oldest_open_s = 0.0
    public var slowloris_bytes_sent = 0

    public var slowlorisCutOff: Int { slowloris_cut_off_by.values.reduce(0, +) }
}

public final class BackgroundClients: @unchecked Sendable {
    // Touched by the caller in start/stop and by the thread in between, never both at once (the thread is
    // joined through `finished` before `stop` reads anything).
    private let plan: BackgroundPlan
    private var report = BackgroundReport()
    private var idle: [Int32] = []
    private var slow: [SlowConnection] = []
    private var cutOffAfter: [Double] = []
    private let stopRequested = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private var threadStarted = false

    private struct SlowConnection {
        var fd: Int32 = -1
        var connectedAt: UInt64 = 0
        var nextSendAt: UInt64
        var bytesSent = 0
        var received: [UInt8] = []
    }

    public init(plan: BackgroundPlan) {
        self.plan = plan
        report.idle_requested = plan.idleConnections
        report.slowloris_requested = plan.slowloris
    }

    private var intervalNanos: UInt64 { UInt64(plan.slowlorisInterval * 1e9) }

    /// Opens the idle connections (blocking, before the measured traffic) and starts the slowloris thread.
    public func start() {
        let began = monotonicNanos()
        let request = plan.idlePath.map { Array("GET \($0) HTTP/1.1\r\nHost: \(plan.host):\(plan.port)\r\n\r\n".utf8) }
        for _ in 0..<plan.idleConnections {
            guard let fd = RawSocket.connect(host: plan.host, port: plan.port, timeout: 5) else {
                report.idle_open_failed += 1
                continue
            }
            if let request {
                guard RawSocket.sendAll(fd, request), RawSocket.readOneResponse(fd) != nil else {
                    report.idle_open_failed += 1
                    Glibc.close(fd)
                    continue
                }
                report.idle_answered += 1
            }
            RawSocket.setNonBlocking(fd)
            idle.append(fd)
        }
        report.idle_opened = idle.count
        report.idle_open_seconds = Double(monotonicNanos() - began) / 1e9
        // Stagger the slowloris clients over one interval so their bytes do not all arrive together.
        let now = monotonicNanos()
        slow = (0..<plan.slowloris).map { k in
            SlowConnection(nextSendAt: now + intervalNanos * UInt64(k) / UInt64(max(1, plan.slowloris)))
        }
        guard !idle.isEmpty || !slow.isEmpty else { return }
        threadStarted = true
        let t = Thread { [self] in
            run()
            finished.signal()
        }
        t.name = "onestep-load-background"
        t.start()
    }

    /// Stops the thread, counts what is still open, closes every socket and returns the figures.
    public func stop() -> BackgroundReport {
        stopRequested.store(true, ordering: .relaxed)
        if threadStarted { finished.wait() }
        let now = monotonicNanos()
        for fd in idle where fd >= 0 {
            if RawSocket.peerClosed(fd) { report.idle_closed_by_server += 1 } else { report.idle_still_open += 1 }
            Glibc.close(fd)
        }
        idle = []
        for c in slow where c.fd >= 0 {
            report.slowloris_still_open += 1
            report.slowloris_oldest_open_s = max(report.slowloris_oldest_open_s, Double(now - c.connectedAt) / 1e9)
            Glibc.close(c.fd)
        }
        slow = []
        let sorted = cutOffAfter.sorted()
        if !sorted.isEmpty {
            report.slowloris_cut_off_after_s = ["p50": sorted[(sorted.count - 1) / 2], "max": sorted[sorted.count - 1]]
        }
        return report
    }

    // MARK: The thread

    private func run() {
        var fds: [pollfd] = []
        while !stopRequested.load(ordering: .relaxed) {
            var now = monotonicNanos()
            for k in slow.indices where slow[k].nextSendAt <= now { trickle(k, now: now) }
            now = monotonicNanos()
            let nextSend = slow.map(\.nextSendAt).min().map { $0 > now ? $0 - now : 0 } ?? 50_000_000
            fds.removeAll(keepingCapacity: true)
            for fd in idle where fd >= 0 { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            for c in slow where c.fd >= 0 { fds.append(pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)) }
            let timeoutMs = Int32(min(50, nextSend / 1_000_000))
            let ready = poll(&fds, nfds_t(fds.count), timeoutMs)
            guard ready > 0 else { continue }
            for p in fds where p.revents != 0 { readable(p.fd) }
        }
    }

    /// Sends the next byte of slowloris client `k`'s endless head, connecting it first if needed.
    private func trickle(_ k: Int, now: UInt64) {
        slow[k].nextSendAt = now + intervalNanos
        if slow[k].fd < 0 {
            guard let fd = RawSocket.connect(host: plan.host, port: plan.port, timeout: 2) else {
                report.slowloris_connect_failed += 1
                return
            }
            RawSocket.setNonBlocking(fd)
            slow[k] = SlowConnection(fd: fd, connectedAt: monotonicNanos(), nextSendAt: now + intervalNanos)
            report.slowloris_connections += 1
        }
        var byte = Self.slowHeadByte(slow[k].bytesSent, host: plan.host)
        let sent = send(slow[k].fd, &byte, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        if sent == 1 {
            slow[k].bytesSent += 1
            report.slowloris_bytes_sent += 1
        } else if errno != EAGAIN {
            cutOff(k, now: now)  // reset or broken pipe: the server closed it
        }
    }

    /// Byte `i` of "GET / HTTP/1.1\r\nHost: H\r\n" followed by "X-Slowloris: 1\r\n" forever (never a blank line).
    static func slowHeadByte(_ i: Int, host: String) -> UInt8 {
        let head = Array("GET / HTTP/1.1\r\nHost: \(host)\r\n".utf8)
        if i < head.count { return head[i] }
        let filler = Array("X-Slowloris: 1\r\n".utf8)
        return filler[(i - head.count) % filler.count]
    }

    private func readable(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        if let k = slow.firstIndex(where: { $0.fd == fd }) {
            if n > 0 { slow[k].received += buffer[0..<min(n, 256)] }
            if n == 0 || (n < 0 && errno != EAGAIN) || slow[k].received.contains(UInt8(ascii: "\n")) {
                cutOff(k, now: monotonicNanos())
            }
        } else if let i = idle.firstIndex(of: fd), n == 0 || (n < 0 && errno != EAGAIN) {
            report.idle_closed_by_server += 1
            Glibc.close(fd)
            idle[i] = -1
        }
    }

    /// The server ended slowloris client `k`: record how and after how long; it reconnects at its next byte.
    private func cutOff(_ k: Int, now: UInt64) {
        let status = RawSocket.statusCode(slow[k].received).map(String.init) ?? "close"
        report.slowloris_cut_off_by[status, default: 0] += 1
        cutOffAfter.append(Double(now - slow[k].connectedAt) / 1e9)
        Glibc.close(slow[k].fd)
        slow[k] = SlowConnection(nextSendAt: now)
    }
}

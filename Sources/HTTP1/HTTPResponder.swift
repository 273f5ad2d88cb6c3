// How a handler answers, possibly later and from any thread, and how it learns that nobody is waiting any more.

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The one-shot reply channel for a single request.
///
/// ## Threading
/// The server calls the handler on its event-loop thread, with the request and a responder. The handler must return
/// quickly (it blocks every connection while it runs); it may call ``respond(_:)`` before returning or keep the
/// responder and call it later from any thread — typically a compute thread finishing a batch. Completing from
/// another thread posts the response to the event loop and wakes it through an eventfd; the bytes are written there.
///
/// ## Cancellation
/// If the client disconnects (read end-of-stream, `EPOLLRDHUP`, `EPOLLHUP`, reset) while this request is
/// unanswered, or the server is stopped, the responder becomes cancelled: ``isCancelled`` turns true and every
/// ``onCancel(_:)`` callback runs once, on the event-loop thread. Work queued for the request can then be dropped.
///
/// ## Idempotence
/// Only the first of ``respond(_:)`` or cancellation takes effect; responding twice or after cancellation is a
/// harmless no-op that returns false.
public final class HTTPResponder: Sendable {
    /// The life of a responder; it leaves `.pending` exactly once.
    private enum State {
        /// Waiting for the handler; holds the cancellation callbacks registered so far.
        case pending(onCancel: [@Sendable () -> Void])
        /// The handler's response was accepted and handed to the event loop.
        case responded
        /// The client left (or the server stopped) first; responses are ignored.
        case cancelled
    }

    private let state = Locked<State>(.pending(onCancel: []))
    private let mailbox: LoopMailbox
    let connectionID: UInt64
    let sequence: UInt64

    init(connectionID: UInt64, sequence: UInt64, mailbox: LoopMailbox) {
        self.connectionID = connectionID
        self.sequence = sequence
        self.mailbox = mailbox
    }

    /// Whether the client is known to be gone (or the server stopped) before this request was answered.
    /// Safe to poll from any thread, e.g. before starting expensive work for a queued request.
    public var isCancelled: Bool {
        state.withLock { if case .cancelled = $0 { return true } else { return false } }
    }

    /// Whether ``respond(_:)`` has already been accepted.
    public var hasResponded: Bool {
        state.withLock { if case .responded = $0 { return true } else { return false } }
    }

    /// Sends `response` for this request. Callable from any thread, once.
    ///
    /// - Returns: true if the response was accepted; false if the request was already answered or cancelled
    ///   (nothing is sent then).
    @discardableResult
    public func respond(_ response: HTTPResponse) -> Bool {
        let accepted = state.withLock { state -> Bool in
            guard case .pending = state else { return false }
            state = .responded
            return true
        }
        if accepted {
            mailbox.post(LoopMailbox.Completion(connectionID: connectionID, sequence: sequence, response: response))
        }
        return accepted
    }

    /// Registers `callback` to run once if the request is cancelled before it is answered.
    ///
    /// The callback runs on the event-loop thread and must be quick (set a flag, remove a queue entry). If the
    /// request is already cancelled it runs immediately on the calling thread; if already answered, never.
    public func onCancel(_ callback: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { state -> Bool in
            switch state {
            case .pending(var callbacks):
                callbacks.append(callback)
                state = .pending(onCancel: callbacks)
                return false
            case .responded:
                return false
            case .cancelled:
                return true
            }
        }
        if runNow { callback() }
    }

    /// Marks the request cancelled, calls `beforeCallbacks` (the server counts the cancellation there, so whoever
    /// a callback wakes sees the count), then runs the callbacks (outside the lock, so they may call back in).
    /// Returns false if it had already been answered or cancelled.
    @discardableResult
    func cancel(beforeCallbacks: () -> Void = {}) -> Bool {
        let callbacks = state.withLock { state -> [@Sendable () -> Void]? in
            guard case .pending(let callbacks) = state else { return nil }
            state = .cancelled
            return callbacks
        }
        guard let callbacks else { return false }
        beforeCallbacks()
        for callback in callbacks { callback() }
        return true
    }
}

/// The event loop's inbox for work coming from other threads: finished responses, plus plain wake-ups for drain and
/// stop requests.
///
/// One mutex guards the queue, the "a wake-up is already pending" flag and the "the loop has exited" flag, so a
/// late responder can never write to the eventfd after the loop closed it (that descriptor number may already
/// belong to another file). Wake-ups are coalesced: one eventfd write per batch of completions, not per response.
final class LoopMailbox: Sendable {
    struct Completion: Sendable {
        let connectionID: UInt64
        let sequence: UInt64
        let response: HTTPResponse
    }

    private struct Inbox {
        var completions: [Completion] = []
        var wakePending = false
        var closed = false
    }

    private let inbox = Locked<Inbox>(Inbox())
    private let wakeFD: Int32
    /// `pthread_self()` of the loop thread, so completions posted from inside a handler skip the eventfd write:
    /// the loop empties the mailbox before it sleeps again anyway.
    private let loopThread = Atomic<UInt>(0)

    init(wakeFD: Int32) {
        self.wakeFD = wakeFD
    }

    func markLoopThread() {
        loopThread.store(UInt(pthread_self()), ordering: .relaxed)
    }

    private var isOnLoopThread: Bool {
        pthread_equal(pthread_t(loopThread.load(ordering: .relaxed)), pthread_self()) != 0
    }

    func post(_ completion: Completion) {
        let onLoop = isOnLoopThread
        inbox.withLock { inbox in
            guard !inbox.closed else { return }
            inbox.completions.append(completion)
            if !onLoop { wakeLocked(&inbox) }
        }
    }

    /// Wakes the loop (used for drain and stop requests).
    func wake() {
        inbox.withLock { wakeLocked(&$0) }
    }

    private func wakeLocked(_ inbox: inout Inbox) {
        guard !inbox.closed, !inbox.wakePending else { return }
        inbox.wakePending = true
        var one: UInt64 = 1
        _ = write(wakeFD, &one, MemoryLayout<UInt64>.size)
    }

    /// Takes every queued completion; called by the loop after reading the eventfd or finishing a batch of events.
    func takeAll() -> [Completion] {
        inbox.withLock { inbox in
            inbox.wakePending = false
            guard !inbox.completions.isEmpty else { return [] }
            let taken = inbox.completions
            inbox.completions.removeAll(keepingCapacity: true)
            return taken
        }
    }

    /// Called by the loop as it exits: later posts and wake-ups are dropped.
    func close() {
        inbox.withLock { inbox in
            inbox.closed = true
            inbox.completions.removeAll()
        }
    }
}

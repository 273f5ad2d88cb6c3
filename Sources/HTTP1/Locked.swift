// A value guarded by a pthread mutex.
//
// Used instead of Synchronization.Mutex: on Linux the standard library's Mutex locks with its own atomics and
// futex system calls, compiled outside our code, so ThreadSanitizer never sees it acquire or release and reports
// every access it guards as a data race — which would drown the real ones. TSan intercepts pthread_mutex_lock and
// pthread_mutex_unlock, so with this lock `scripts/sanitize thread` checks the locking we actually rely on.
// Uncontended, both cost one atomic instruction in user space.
#if canImport(Glibc)
import Glibc
#endif

public final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init failed")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Not reentrant: `body` must not call withLock on this lock.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

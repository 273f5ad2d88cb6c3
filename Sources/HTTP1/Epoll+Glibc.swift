// epoll and eventfd for the event loop, declared here because the toolchain's Glibc module does not import them.
//
// Why declarations instead of a C shim: Swift's glibc module map (SwiftGlibc.h) leaves out <sys/epoll.h>,
// <sys/eventfd.h> and the _GNU_SOURCE `accept4`, and this module must not add a C target (swift-nio solves it with
// CNIOLinux). The three functions take and return only 32-bit integers and pointers, for which Swift's calling
// convention on Linux passes arguments in the same registers as the C ABI, so binding them by symbol name is
// sound. `struct epoll_event` is declared by glibc as packed on x86-64 (12 bytes) and naturally aligned elsewhere
// (16 bytes), which Swift cannot express; it is therefore handled as raw bytes with explicit offsets below.

#if canImport(Glibc)
import Glibc
#endif

enum LinuxSyscalls {
    @_silgen_name("epoll_create1")
    static func epoll_create1(_ flags: Int32) -> Int32

    @_silgen_name("epoll_ctl")
    static func epoll_ctl(_ epfd: Int32, _ op: Int32, _ fd: Int32, _ event: UnsafeMutableRawPointer?) -> Int32

    @_silgen_name("epoll_wait")
    static func epoll_wait(_ epfd: Int32, _ events: UnsafeMutableRawPointer?, _ maxEvents: Int32,
                           _ timeoutMilliseconds: Int32) -> Int32

    @_silgen_name("eventfd")
    static func eventfd(_ initialValue: UInt32, _ flags: Int32) -> Int32

    @_silgen_name("accept4")
    static func accept4(_ fd: Int32, _ address: UnsafeMutablePointer<sockaddr>?,
                        _ length: UnsafeMutablePointer<socklen_t>?, _ flags: Int32) -> Int32

    // Values from <sys/epoll.h> and <sys/eventfd.h> (identical on every Linux architecture we build for).
    static let EPOLLIN: UInt32 = 0x001
    static let EPOLLOUT: UInt32 = 0x004
    static let EPOLLERR: UInt32 = 0x008
    static let EPOLLHUP: UInt32 = 0x010
    static let EPOLLRDHUP: UInt32 = 0x2000
    static let EPOLL_CTL_ADD: Int32 = 1
    static let EPOLL_CTL_DEL: Int32 = 2
    static let EPOLL_CTL_MOD: Int32 = 3
    static let EPOLL_CLOEXEC: Int32 = 0o2000000  // = O_CLOEXEC
    static let EFD_CLOEXEC: Int32 = 0o2000000
    static let EFD_NONBLOCK: Int32 = 0o4000  // = O_NONBLOCK

    /// Layout of `struct epoll_event { uint32_t events; epoll_data_t data; }`.
    #if arch(x86_64)
    static let epollEventStride = 12
    static let epollDataOffset = 4
    #else
    static let epollEventStride = 16
    static let epollDataOffset = 8
    #endif
}

/// An epoll instance (level-triggered) plus the eventfd other threads write to wake it.
///
/// Level-triggered because it makes the loop forgiving: a connection that stops reading early (pipelining cap,
/// fairness) is simply reported again next time, with no risk of a lost edge stalling it.
struct Epoll {
    let fd: Int32
    let wakeFD: Int32

    static let readable = LinuxSyscalls.EPOLLIN
    static let writable = LinuxSyscalls.EPOLLOUT
    /// The peer shut down its sending side. Reported even while EPOLLIN is not requested, which is how a client
    /// that leaves while its response is pending is noticed.
    static let peerClosed = LinuxSyscalls.EPOLLRDHUP
    /// Always reported by the kernel, requested or not.
    static let hangUp = LinuxSyscalls.EPOLLHUP | LinuxSyscalls.EPOLLERR

    init() throws(HTTPServerError) {
        fd = LinuxSyscalls.epoll_create1(LinuxSyscalls.EPOLL_CLOEXEC)
        guard fd >= 0 else { throw HTTPServerError(operation: "epoll_create1", errno: errno) }
        wakeFD = LinuxSyscalls.eventfd(0, LinuxSyscalls.EFD_NONBLOCK | LinuxSyscalls.EFD_CLOEXEC)
        guard wakeFD >= 0 else {
            let error = errno
            close(fd)
            throw HTTPServerError(operation: "eventfd", errno: error)
        }
    }

    func add(_ descriptor: Int32, events: UInt32, token: UInt64) {
        control(LinuxSyscalls.EPOLL_CTL_ADD, descriptor, events: events, token: token)
    }

    func modify(_ descriptor: Int32, events: UInt32, token: UInt64) {
        control(LinuxSyscalls.EPOLL_CTL_MOD, descriptor, events: events, token: token)
    }

    func remove(_ descriptor: Int32) {
        _ = LinuxSyscalls.epoll_ctl(fd, LinuxSyscalls.EPOLL_CTL_DEL, descriptor, nil)
    }

    private func control(_ operation: Int32, _ descriptor: Int32, events: UInt32, token: UInt64) {
        withUnsafeTemporaryAllocation(byteCount: 16, alignment: 8) { event in
            event.storeBytes(of: events, toByteOffset: 0, as: UInt32.self)
            event.storeBytes(of: token, toByteOffset: LinuxSyscalls.epollDataOffset, as: UInt64.self)
            _ = LinuxSyscalls.epoll_ctl(fd, operation, descriptor, event.baseAddress)
        }
    }

    /// Waits up to `timeoutMilliseconds` and calls `body(events, token)` for each ready descriptor.
    func wait(buffer: UnsafeMutableRawBufferPointer, timeoutMilliseconds: Int32, _ body: (UInt32, UInt64) -> Void) {
        let capacity = buffer.count / LinuxSyscalls.epollEventStride
        let count = LinuxSyscalls.epoll_wait(fd, buffer.baseAddress, Int32(capacity), timeoutMilliseconds)
        guard count > 0 else { return }  // 0: timeout; -1: EINTR, treated as a spurious wake-up
        for index in 0..<Int(count) {
            let offset = index * LinuxSyscalls.epollEventStride
            let events = buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            let token = buffer.loadUnaligned(fromByteOffset: offset + LinuxSyscalls.epollDataOffset, as: UInt64.self)
            body(events, token)
        }
    }

    /// Wakes `wait` from any thread.
    func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, MemoryLayout<UInt64>.size)
    }

    /// Resets the eventfd counter after a wake-up.
    func consumeWake() {
        var value: UInt64 = 0
        _ = Glibc.read(wakeFD, &value, MemoryLayout<UInt64>.size)
    }

    func closeAll() {
        close(wakeFD)
        close(fd)
    }
}

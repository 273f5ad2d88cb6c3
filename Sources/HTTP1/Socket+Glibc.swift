// Thin wrappers over the POSIX socket, epoll and eventfd calls the event loop needs (Linux only).
//
// Kept apart from HTTP so the connection code reads as protocol logic; every function here is a single syscall
// (plus EINTR retry) returning a Swift value or a typed error.

#if canImport(Glibc)
import Glibc
#endif

/// Why the server could not start.
public struct HTTPServerError: Error, CustomStringConvertible, Sendable {
    /// What was being attempted, e.g. `bind 127.0.0.1:8080`.
    public let operation: String
    /// The `errno` from the failing call (0 when the failure was not a syscall).
    public let errno: Int32

    public var description: String {
        errno == 0 ? operation : "\(operation): \(cString(strerror(errno))) (errno \(errno))"
    }
}

enum Socket {
    /// Creates a non-blocking listening TCP socket bound to `host:port` (port 0: the kernel picks one).
    /// Returns the descriptor and the port actually bound.
    static func listen(host: String, port: Int, backlog: Int) throws(HTTPServerError) -> (fd: Int32, port: Int) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var results: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &results)
        guard status == 0, let address = results else {
            throw HTTPServerError(operation: "resolve \(host): \(cString(gai_strerror(status)))", errno: 0)
        }
        defer { freeaddrinfo(results) }

        let fd = socket(address.pointee.ai_family,
                        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HTTPServerError(operation: "socket", errno: Glibc.errno) }
        // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT.
        setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        guard bind(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else {
            let error = Glibc.errno
            close(fd)
            throw HTTPServerError(operation: "bind \(host):\(port)", errno: error)
        }
        guard Glibc.listen(fd, Int32(clamping: backlog)) == 0 else {
            let error = Glibc.errno
            close(fd)
            throw HTTPServerError(operation: "listen", errno: error)
        }
        return (fd, boundPort(fd))
    }

    /// The local port of a bound socket (IPv4 or IPv6).
    static func boundPort(_ fd: Int32) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return 0 }
        let family = storage.ss_family
        return withUnsafePointer(to: &storage) { pointer -> Int in
            if family == sa_family_t(AF_INET6) {
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            }
            return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
    }

    enum AcceptResult {
        case accepted(fd: Int32, remoteAddress: String)
        /// Nothing pending (EAGAIN), or a failure that concerns only that connection (ECONNABORTED...).
        case nonePending
        /// EMFILE / ENFILE: the connection stays queued, and the listener stays readable, until a descriptor
        /// frees up; the loop must stop watching the listener for a while or it would spin.
        case outOfDescriptors
    }

    /// Accepts one pending connection as a non-blocking socket with TCP_NODELAY.
    static func accept(_ listener: Int32) -> AcceptResult {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                LinuxSyscalls.accept4(listener, $0, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            }
        }
        guard fd >= 0 else { return errno == EMFILE || errno == ENFILE ? .outOfDescriptors : .nonePending }
        // Responses are written whole; Nagle would only delay the last partial segment of each.
        setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
        return .accepted(fd: fd, remoteAddress: describe(&storage))
    }

    /// `host:port` text for access logs.
    private static func describe(_ storage: inout sockaddr_storage) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = storage.ss_family
        return withUnsafePointer(to: &storage) { pointer -> String in
            if family == sa_family_t(AF_INET6) {
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
                    return "[\(cString(text))]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            }
            return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                var raw = address.pointee.sin_addr
                inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                return "\(cString(text)):\(UInt16(bigEndian: address.pointee.sin_port))"
            }
        }
    }

    /// Bytes in the socket's send queue not yet acknowledged by the peer (`SIOCOUTQ`), or nil on error.
    static func unsentBytes(_ fd: Int32) -> Int? {
        var queued: Int32 = 0
        // SIOCOUTQ == TIOCOUTQ (linux/sockios.h).
        return ioctl(fd, UInt(TIOCOUTQ), &queued) == 0 ? Int(queued) : nil
    }

    static func setOption(_ fd: Int32, level: Int32, name: Int32, value: Int32) {
        var value = value
        _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The outcome of one non-blocking read or write.
    enum IOResult {
        case transferred(Int)
        case wouldBlock
        /// Read only: the peer closed its sending side (FIN).
        case endOfStream
        case failed(Int32)
    }

    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count > 0 { return .transferred(count) }
            if count == 0 { return .endOfStream }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(errno)
            }
        }
    }

    /// Writes with MSG_NOSIGNAL: a peer that vanished must produce EPIPE for this connection, not a SIGPIPE that
    /// kills the whole process.
    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> IOResult {
        while true {
            let count = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if count >= 0 { return .transferred(count) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(errno)
            }
        }
    }
}

/// Reads a NUL-terminated C string (the non-deprecated spelling of `String(cString:)`).
func cString(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    let bytes = UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self)
    return String(decoding: UnsafeBufferPointer(start: bytes, count: strlen(pointer)), as: UTF8.self)
}

func cString(_ array: [CChar]) -> String {
    array.withUnsafeBufferPointer { cString($0.baseAddress) }
}

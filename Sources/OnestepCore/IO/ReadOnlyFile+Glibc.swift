// The one file of the IO layer that maps files (Glibc mmap/madvise/pread), as HTTP1/Socket+Glibc.swift is for
// sockets. SafetensorsFile reads weights through it so that a tensor's bytes are paged in when a network asks for
// them and dropped from the process once converted and packed: a load then peaks at the packed weights plus one
// tensor, not the packed weights plus the whole file (issue #13).
//
// A mapped file that is truncated while mapped raises SIGBUS on the next access of a page past the new end, and a
// file rewritten in place changes the bytes under the reader. Neither can be caught safely in Swift; opening
// checks the size against the header before mapping, and a file modified during a load is undefined behaviour
// (writers of model folders replace files by rename, as AtomicFile does, which leaves a mapped file intact).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An open regular file: its size, and either a read-only private mapping of all of it or, where mapping fails
/// (filesystems without mmap, special files), nothing — the caller then reads with `read(into:at:)`.
final class ReadOnlyFile: @unchecked Sendable {
    // Immutable after init; munmap/close only in deinit, so concurrent reads of the mapping are safe.
    let path: String
    let size: Int
    private let fd: Int32
    /// The whole file mapped PROT_READ, MAP_PRIVATE (nil when not mapped).
    let mapping: UnsafeRawBufferPointer?
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Opens `path`. `map: false` never maps (the reading path, for tests and `ONESTEP_SAFETENSORS_MMAP=0`).
    /// - Throws: `SafetensorsError` when the file cannot be opened or is not a regular file's size.
    init(path: String, map: Bool) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let why = String(cString: strerror(errno))
            throw SafetensorsError(file: path, problem: "cannot open the file: \(why) (does it exist and is it readable?)")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw SafetensorsError(file: path, problem: "cannot stat the file: \(why)")
        }
        guard (st.st_mode & mode_t(S_IFMT)) != mode_t(S_IFDIR) else {
            close(fd)
            throw SafetensorsError(file: path, problem: "is a directory, not a safetensors file")
        }
        self.path = path
        self.fd = fd
        size = Int(st.st_size)
        // Only a regular file of at least one byte is mapped: mmap refuses length 0, and a pipe or device has no
        // size to check the header against.
        if map, (st.st_mode & mode_t(S_IFMT)) == mode_t(S_IFREG), size > 0,
           let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != UnsafeMutableRawPointer(bitPattern: -1) {
            mapping = UnsafeRawBufferPointer(start: UnsafeRawPointer(p), count: size)
        } else {
            mapping = nil
        }
    }

    deinit {
        if let m = mapping { munmap(UnsafeMutableRawPointer(mutating: m.baseAddress!), m.count) }
        close(fd)
    }

    /// Reads `count` bytes at file offset `offset` into `dst` (pread, retried on EINTR and short reads).
    /// - Throws: `SafetensorsError` when the file ends early (it shrank) or the read fails.
    func read(into dst: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < dst.count {
            let r = pread(fd, dst.baseAddress! + done, dst.count - done, off_t(offset + done))
            if r < 0 {
                if errno == EINTR { continue }
                throw SafetensorsError(file: path, problem: "read failed at byte \(offset + done): \(String(cString: strerror(errno)))")
            }
            if r == 0 { throw SafetensorsError(file: path, problem: "file changed while being read (it ends at byte \(offset + done))") }
            done += r
        }
    }

    /// Drops the pages of `range` (byte offsets into the file) from this process: they are clean copies of the page
    /// cache, so a later access just faults them in again (a page shared with a neighbouring tensor is dropped
    /// too and comes back when that tensor is read).
    func dropPages(_ range: Range<Int>) {
        guard let m = mapping else { return }
        let page = Self.pageSize
        let lo = range.lowerBound / page * page
        let hi = min((range.upperBound + page - 1) / page * page, m.count)
        guard hi > lo else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: m.baseAddress! + lo), hi - lo, MADV_DONTNEED)
    }
}

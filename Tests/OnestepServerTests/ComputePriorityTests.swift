// Compute threads run below the HTTP thread (regression test for loadtest/faults/overload: at 3x capacity the
// 429s waited for CPU behind the workers, p99 0.1-1.6 s). Checked on a real server through /proc, not by timing.

import Foundation
import XCTest
@testable import OnestepServer

final class ComputePriorityTests: XCTestCase {
    /// (name, nice) of every thread of this process, from /proc/self/task/*/{comm,stat}.
    private func threads() throws -> [(name: String, nice: Int)] {
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        return tasks.compactMap { tid in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            // After "pid (comm)" come fields 3, 4, ...: nice is field 19.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 16, let nice = Int(fields[16]) else { return nil }
            return (comm.trimmingCharacters(in: .whitespacesAndNewlines), nice)
        }
    }

    func testComputeThreadsRunBelowTheHTTPThread() throws {
        let server = try RunningServer { o in o.workers = 2 }
        // An answered generation request: both workers are up (they lower their priority before taking work).
        XCTAssertEqual(try server.get("/v1/generate?seed=5").status, 200)
        var compute: [(name: String, nice: Int)] = []
        let deadline = Date().addingTimeInterval(10)
        repeat {
            compute = try threads().filter { $0.name == "onestep-compute" }
            if compute.count >= 2 { break }
            usleep(10_000)
        } while Date() < deadline
        let all = try threads()
        XCTAssertGreaterThanOrEqual(compute.count, 2, "two threads named onestep-compute: \(all)")

        errno = 0
        let base = Int(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0))  // this (test) thread's nice
        XCTAssertEqual(errno, 0)
        let expected = min(19, base + Int(ComputeWorkers.computeNiceIncrement))
        for thread in compute { XCTAssertEqual(thread.nice, expected, "compute thread nice") }
        // The HTTP event loop (named like the process) keeps the process's priority. (libdispatch's own threads
        // carry nice values of their own, so only the count of threads at the base is checked.)
        XCTAssertGreaterThanOrEqual(all.filter { $0.name != "onestep-compute" && $0.nice == base }.count, 2,
                                    "the test thread and the HTTP thread at nice \(base): \(all)")
        XCTAssertEqual(try server.get("/healthz").status, 200)
    }
}

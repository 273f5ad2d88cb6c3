// The command: parse, run, report, check thresholds, pick the exit code. `main.swift` only calls `LoadTool.main`.
import Foundation

public enum ExitCode {
    public static let ok: Int32 = 0
    /// At least one `--fail-if` condition held, had no data, or the error budget was exceeded.
    public static let thresholdFailed: Int32 = 1
    /// Bad flag, bad value, unreadable scenario or body file.
    public static let usage: Int32 = 2
    /// The run finished but `--json`, `--raw` or `--plot` could not be written.
    public static let outputFailed: Int32 = 3
}

public enum LoadTool {
    /// Runs onestep-load with `arguments` (no program name). The text report goes to `output` (stdout by default),
    /// messages and the live line to stderr.
    public static func main(arguments: [String], output: (String) -> Void = { print($0, terminator: "") }) -> Int32 {
        let config: LoadConfig
        do {
            switch try Arguments.parse(arguments) {
            case .help:
                output(Arguments.usage + "\n")
                return ExitCode.ok
            case .run(let c): config = c
            }
        } catch let e as UsageError {
            printError("onestep-load: \(e.description)")
            return ExitCode.usage
        } catch {
            printError("onestep-load: \(error)")
            return ExitCode.usage
        }
        var raw: RawWriter?
        if let path = config.rawPath {
            guard let w = RawWriter(path: path) else {
                printError("onestep-load: --raw: cannot write \(path)")
                return ExitCode.usage
            }
            raw = w
        }

        let driver = LoadDriver(config: config, raw: raw)
        let live = config.progress && isatty(STDERR_FILENO) == 1
        if live {
            driver.onProgress = { s in
                let line = String(format: "\r\u{1B}[K[%6.1fs %@] sent %d  done %d  errors %d  in flight %d  queued %d  p50 %@  p99 %@",
                                  s.elapsed, s.phase.rawValue, s.sent, s.responses, s.errors, s.inFlight, s.queued,
                                  formatSeconds(s.p50), formatSeconds(s.p99))
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        installInterruptHandler()
        let results = driver.run()
        if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }

        let checked = evaluate(config.thresholds, errorBudget: config.errorBudget, on: results)
        output(TextReport.render(config: config, results: results, thresholds: checked, errorExamples: driver.errorExamples,
                                   background: driver.backgroundReport))
        var code = ExitCode.ok
        if let path = config.jsonPath {
            do {
                try JSONReport(config: config, results: results, thresholds: checked, background: driver.backgroundReport).encoded()
                    .write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                printError("onestep-load: --json: cannot write \(path): \(error)")
                code = ExitCode.outputFailed
            }
        }
        if let path = config.plotPath {
            let mode: String
            switch config.mode {
            case .openLoop(let r): mode = String(format: "%g req/s open loop", r)
            case .closedLoop(let c): mode = "\(c) in flight closed loop"
            }
            do {
                try Plot.write(results: results, title: "onestep-load: \(mode), \(results.measured.sent) requests", path: path)
            } catch {
                printError("onestep-load: --plot: cannot write \(path): \(error)")
                code = ExitCode.outputFailed
            }
        }
        let failed = checked.filter(\.failed)
        for f in failed {
            printError("onestep-load: threshold failed: \(f.threshold.text) (measured \(f.measuredText))")
        }
        if !failed.isEmpty { return ExitCode.thresholdFailed }
        return code
    }

    private static func installInterruptHandler() {
        interruptRequested.store(false, ordering: .relaxed)
        signal(SIGPIPE, SIG_IGN)  // a server closing mid-write must be an error class, not the end of the process
        signal(SIGINT) { _ in interruptRequested.store(true, ordering: .relaxed) }
    }
}

func printError(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

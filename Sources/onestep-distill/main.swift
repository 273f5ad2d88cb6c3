// onestep-distill: the offline half of Onestep. `data` writes a synthetic data set, `teacher` trains an EDM
// teacher on a folder of PNGs, `bench` measures training speed beside the inference forward on the same model.
// Bad flags exit 2 with a message; Ctrl-C during training saves a checkpoint and exits 0.
import Foundation
import OnestepCore
import OnestepTrain
#if canImport(Glibc)
import Glibc
#endif

/// Set by the SIGINT handler, read once per training step.
nonisolated(unsafe) var interruptRequested: sig_atomic_t = 0

func installInterruptHandler() {
    signal(SIGINT) { _ in interruptRequested = 1 }
}

func stderrLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// Progress lines go to stdout unbuffered (write(2)), so a log file or pipe sees each line as it happens.
func stdoutLine(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }

let commands: [Command] = [dataCommand, teacherCommand, benchCommand, studentCommand, quantizeCommand, evalCommand, pipelineCommand]

func topUsage() -> String {
    "usage: onestep-distill <command> [flags]\n\ncommands:\n"
        + commands.map { "  " + $0.name.padding(toLength: 10, withPad: " ", startingAt: 0) + $0.summary }.joined(separator: "\n")
        + "\n\nonestep-distill <command> --help shows the command's flags.\n"
}

let args = Array(CommandLine.arguments.dropFirst())
guard let name = args.first, name != "--help", name != "-h", name != "help" else {
    print(topUsage(), terminator: "")
    exit(args.isEmpty ? 2 : 0)
}
guard let command = commands.first(where: { $0.name == name }) else {
    stderrLine("onestep-distill: unknown command '\(name)'\n\n" + topUsage())
    exit(2)
}
do {
    let flags = try command.parse(Array(args.dropFirst()))
    if flags.wantsHelp {
        print(command.usage, terminator: "")
        exit(0)
    }
    switch command.name {
    case "data": try runData(flags)
    case "teacher": try runTeacher(flags)
    case "bench": try runBench(flags)
    case "student": try runStudent(flags)
    case "quantize": try runQuantize(flags)
    case "eval": try runEval(flags)
    case "pipeline": try runPipeline(flags)
    default: break
    }
} catch let e as UsageError {
    stderrLine("onestep-distill \(command.name): \(e.message)")
    exit(2)
} catch let e as DataError {
    // A --data folder that is missing, empty or of the wrong kind is a bad flag value too.
    stderrLine("onestep-distill \(command.name): \(e.message)")
    exit(2)
} catch {
    stderrLine("onestep-distill \(command.name): \(error)")
    exit(1)
}

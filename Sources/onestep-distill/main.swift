// onestep-distill: the offline half of Onestep. `data` writes a synthetic data set, `teacher` trains an EDM
// teacher on a folder of PNGs, `student` distils it, `quantize`, `eval`, `pipeline` (all of it, resumable), `bench`
// measures training speed. Flags and dispatch: CommandLineKit. Exit 2 for a bad command line (a --data folder
// that is missing, empty or of the wrong kind counts: DataError; so does --resume or a pipeline folder with other
// settings than the run recorded: RunSettingsError), 1 for a failure, with a damaged or mismatched
// checkpoint reported as a checkpoint error; Ctrl-C during training saves a checkpoint and exits 0.
import CommandLineKit
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

var tool = CommandLineTool(name: "onestep-distill", summary: "trains a teacher, distils one-step students, quantizes and evaluates them",
                           commands: [dataCommand, teacherCommand, benchCommand, studentCommand, quantizeCommand, evalCommand, pipelineCommand])
// A run folder continued with other settings than it was made with (RunSettingsError) is a command-line error too.
tool.isUsageError = { $0 is DataError || $0 is RunSettingsError }
tool.errorPrefix = { $0 is CheckpointError ? "checkpoint error: " : "" }
exit(tool.main(Array(CommandLine.arguments.dropFirst())))

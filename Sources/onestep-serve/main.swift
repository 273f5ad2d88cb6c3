// onestep-serve: serves the one-step image models under ./models over HTTP (the default command), and offers
// offline sub-commands. Flags and dispatch: CommandLineKit (exit 2 for a bad command line, 1 for a failure).
import CommandLineKit
import Foundation
import OnestepCore
import OnestepServer

enum ServeDefaults {
    static let defaultModelName = "shapes16-cd-int8"
}

let tool = CommandLineTool(name: "onestep-serve", summary: "serves one-step image generators over HTTP; offline generate, run-unet, run-pipeline, bench, quantize",
                           commands: [ServeCommand.command, Commands.generate, Commands.runUNet, TextCommands.runPipeline, BenchCommand.command, Commands.quantize, BenchTextCommand.command],
                           defaultCommand: "serve")
exit(tool.main(Array(CommandLine.arguments.dropFirst())))

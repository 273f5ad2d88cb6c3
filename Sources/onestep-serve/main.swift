// onestep-serve: serves the one-step image models under ./models over HTTP, and offers offline subcommands.
import Foundation
import OnestepCore

enum ServeDefaults {
    static let defaultModelName = "shapes16-cd-int8"
}

let usage = """
usage: onestep-serve [serve] [flags]       serve every model under ./models over HTTP (see serve --help)
       onestep-serve generate --model DIR --seed S [--label L] [--steps K] [-n N] --out FILE.png
       onestep-serve run-unet --model DIR --inputs IN.safetensors --out OUT.safetensors
       onestep-serve bench --model DIR [--batch 1,16] [--json]
       onestep-serve quantize --model DIR --out DIR
       onestep-serve bench-text [--tokenizer DIR] [--batch 1,2]
"""

var arguments = Array(CommandLine.arguments.dropFirst())
let command = arguments.first.flatMap { $0.hasPrefix("-") ? nil : $0 } ?? "serve"
if arguments.first == command { arguments.removeFirst() }

do {
    switch command {
    case "generate": try Commands.generate(arguments)
    case "run-unet": try Commands.runUNet(arguments)
    case "bench": try BenchCommand.run(arguments)
    case "quantize": try Commands.quantize(arguments)
    case "bench-text": try BenchTextCommand.run(arguments)
    case "serve": try ServeCommand.run(arguments)
    case "help": print(usage)
    default:
        FileHandle.standardError.write(Data("onestep-serve: unknown command '\(command)'\n\(usage)\n".utf8))
        exit(2)
    }
} catch let e as FlagError {
    FileHandle.standardError.write(Data("onestep-serve \(command): \(e.message)\n".utf8))
    exit(2)
} catch {
    FileHandle.standardError.write(Data("onestep-serve \(command): \(error)\n".utf8))
    exit(1)
}

import CommandLineKit
import Foundation
import OnestepCore
import OnestepServer

enum ServeCommand {
    static let command = Subcommand("serve", summary: "serve every model under --models over HTTP/1.1 (the default command)",
                                    synopsis: "[serve] [flags]   (every flag also reads an ONESTEP_* environment variable)",
                                    flags: ServerOptions.specs, run: run)

    static func run(_ flags: ParsedFlags) throws {
        let options = try ServerOptions.parse(flags, environment: ProcessInfo.processInfo.environment)
        // Unbuffered line writes: the access log must reach a pipe or file as it happens.
        let log: @Sendable (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }
        let models = try ModelRegistry.load(directory: options.modelsDirectory,
                                            preferred: options.defaultModel ?? ServeDefaults.defaultModelName,
                                            extras: options.extras,
                                            log: log)
        let server = OnestepServer(options: options, models: models, log: log)
        OnestepServer.catchTerminationSignals()
        try server.start()
        exit(server.runUntilSignalled())
    }
}

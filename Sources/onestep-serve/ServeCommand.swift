import Foundation
import OnestepCore
import OnestepServer

enum ServeCommand {
    static func run(_ args: [String]) throws {
        let (options, help) = try ServerOptions.parse(args, environment: ProcessInfo.processInfo.environment)
        if help { print(ServerOptions.usage); return }
        // Unbuffered line writes: the access log must reach a pipe or file as it happens.
        let log: @Sendable (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }
        let models = try ModelRegistry.load(directory: options.modelsDirectory,
                                            preferred: options.defaultModel ?? ServeDefaults.defaultModelName,
                                            log: log)
        let server = OnestepServer(options: options, models: models, log: log)
        OnestepServer.catchTerminationSignals()
        try server.start()
        exit(server.runUntilSignalled())
    }
}

// Sub-command dispatch for the onestep executables: `TOOL [COMMAND] [flags]`. `TOOL --help` (or `TOOL help`)
// lists the sub-commands (and the default command's flags); `TOOL COMMAND --help` lists that command's flags.
// Exit statuses, the same for every tool:
//   0  done (or help printed)
//   1  the command ran and failed: a file it could not read or write, a damaged checkpoint, a port in use...
//   2  the command line is wrong: unknown command or flag, a missing or malformed value (FlagError), or whatever
//      else the tool's `isUsageError` says is one
import Foundation

/// One sub-command: its flags and what it does with them.
public struct Subcommand: Sendable {
    public var name: String
    public var summary: String
    /// The synopsis after the tool's name, e.g. "generate --model DIR --seed S --out FILE.png".
    public var synopsis: String
    public var flags: [FlagSpec]
    public var run: @Sendable (ParsedFlags) throws -> Void

    public init(_ name: String, summary: String, synopsis: String? = nil, flags: [FlagSpec], run: @escaping @Sendable (ParsedFlags) throws -> Void) {
        (self.name, self.summary, self.flags, self.run) = (name, summary, flags, run)
        self.synopsis = synopsis ?? "\(name) [flags]"
    }
}

public struct CommandLineTool {
    public var name: String
    public var summary: String
    public var commands: [Subcommand]
    /// The command run when the first argument is a flag or absent (onestep-serve: serve); nil: one is required.
    public var defaultCommand: String?
    /// Errors besides FlagError that mean a bad command line (exit 2), e.g. onestep-distill's unusable --data folder.
    public var isUsageError: (Error) -> Bool = { _ in false }
    /// Prefix of an error's message by kind, e.g. "checkpoint error: ".
    public var errorPrefix: (Error) -> String = { _ in "" }

    public init(name: String, summary: String, commands: [Subcommand], defaultCommand: String? = nil) {
        (self.name, self.summary, self.commands, self.defaultCommand) = (name, summary, commands, defaultCommand)
    }

    public var usage: String {
        var s = "usage: \(name) <command> [flags]\(defaultCommand.map { "   (no command: \($0))" } ?? "")\n  \(summary)\n\ncommands:\n"
        let width = (commands.map(\.name.count).max() ?? 8) + 2
        for c in commands { s += "  " + c.name.padding(toLength: width, withPad: " ", startingAt: 0) + c.summary + "\n" }
        s += "\n\(name) <command> --help shows the command's flags.\n"
        if let d = defaultCommand, let c = commands.first(where: { $0.name == d }) {
            s += "\nflags of \(name) \(d):\n" + ParsedFlags.usage(c.flags) + "\n"
        }
        return s
    }

    public func usage(of c: Subcommand) -> String {
        "usage: \(name) \(c.synopsis)\n  \(c.summary)\n\nflags:\n" + ParsedFlags.usage(c.flags) + "\n"
    }

    /// Runs the command line `args` (without the program name) and returns the exit status; messages go to stderr,
    /// help to stdout.
    public func main(_ args: [String]) -> Int32 {
        var rest = args
        let first = rest.first
        // No arguments at all runs the default command (`onestep-serve` alone serves, as the README's set-up does);
        // only a tool without one answers its usage (exit 2).
        if (first == nil && defaultCommand == nil) || first == "help" || ((first == "--help" || first == "-h") && defaultCommand == nil) {
            print(usage, terminator: "")
            return first == nil ? 2 : 0
        }
        if first == "--help" || first == "-h" { print(usage, terminator: ""); return 0 }
        let commandName: String
        if let f = first, !f.hasPrefix("-") {
            commandName = f
            rest.removeFirst()
        } else if let d = defaultCommand {
            commandName = d
        } else {
            return fail(": no command given; commands: \(commands.map(\.name).joined(separator: ", ")) (see --help)", status: 2)
        }
        guard let command = commands.first(where: { $0.name == commandName }) else {
            let hint = closestMatch(to: commandName, among: commands.map(\.name)).map { "did you mean '\($0)'? " } ?? ""
            return fail(": unknown command '\(commandName)'; \(hint)commands: \(commands.map(\.name).joined(separator: ", ")) (see --help)", status: 2)
        }
        do {
            let flags = try ParsedFlags(rest, specs: command.flags)
            if flags.wantsHelp { print(usage(of: command), terminator: ""); return 0 }
            try command.run(flags)
            return 0
        } catch let e as FlagError {
            return fail(" \(command.name): \(e.message)", status: 2)
        } catch {
            return fail(" \(command.name): \(errorPrefix(error))\(error)", status: isUsageError(error) ? 2 : 1)
        }
    }

    /// Writes "TOOL<message>" (message starts with ": " or " COMMAND: ") to stderr.
    func fail(_ message: String, status: Int32) -> Int32 {
        FileHandle.standardError.write(Data("\(name)\(message)\n".utf8))
        return status
    }
}

// The executables' flag parser: values, defaults, repeats, switches, short flags, and the errors a user sees
// (unknown flag with the closest one suggested, missing value, out-of-range numbers, unknown command).
import XCTest
@testable import CommandLineKit

final class FlagsTests: XCTestCase {
    let specs = [
        FlagSpec("models", "folder of models", default: "models"),
        FlagSpec("max-batch", "images per batch", default: "16"),
        FlagSpec("model", "a model (repeatable)"),
        FlagSpec("batch", "batch sizes", default: "1,16"),
        FlagSpec("n", "images", default: "1"),
        FlagSpec("json", "JSON output", isSwitch: true),
    ]

    func testValuesDefaultsRepeatsAndSwitches() throws {
        let f = try ParsedFlags(["--models=/m", "--model", "a", "--model", "b", "--json", "-n", "9"], specs: specs)
        XCTAssertEqual(f.string("models"), "/m")
        XCTAssertEqual(f.all("model"), ["a", "b"])
        XCTAssertEqual(f.string("model"), "b")
        XCTAssertTrue(f.isSet("json"))
        XCTAssertEqual(try f.int("n", range: 1...256), 9)
        XCTAssertEqual(try f.requiredInt("max-batch", 1...256), 16, "the default")
        XCTAssertFalse(f.has("max-batch"))
        XCTAssertEqual(try f.intList("batch", range: 1...256), [1, 16])
        XCTAssertFalse(f.wantsHelp)
        XCTAssertTrue(try ParsedFlags(["-h"], specs: specs).wantsHelp)
        XCTAssertTrue(try ParsedFlags(["--help"], specs: specs).wantsHelp)
        XCTAssertFalse(try ParsedFlags(["--json=false"], specs: specs).isSet("json"))
    }

    func message(_ args: [String]) -> String {
        do {
            _ = try ParsedFlags(args, specs: specs)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testUnknownFlagSuggestsTheClosest() {
        XCTAssertTrue(message(["--modles", "x"]).contains("unknown flag --modles; did you mean --models?"), message(["--modles", "x"]))
        XCTAssertTrue(message(["--max-bacth", "4"]).contains("did you mean --max-batch?"))
        XCTAssertTrue(message(["--jsn"]).contains("did you mean --json?"))
        // A prefix of exactly one flag is taken for it; nothing close: no suggestion, but the known flags listed.
        XCTAssertTrue(message(["--max", "4"]).contains("did you mean --max-batch?"))
        let far = message(["--frobnicate"])
        XCTAssertTrue(far.contains("unknown flag --frobnicate; known flags: --batch --help --json"), far)
        XCTAssertFalse(far.contains("did you mean"))
    }

    func testMissingAndMalformedValues() throws {
        XCTAssertTrue(message(["--models"]).contains("--models needs a value"))
        XCTAssertTrue(message(["stray"]).contains("unexpected argument 'stray'"))
        let f = try ParsedFlags(["--max-batch", "0", "--batch", "1,,4"], specs: specs)
        XCTAssertThrowsError(try f.int("max-batch", range: 1...256)) { XCTAssertTrue("\($0)".contains("--max-batch 0: expected an integer in 1...256")) }
        XCTAssertThrowsError(try f.intList("batch", range: 1...256))
        XCTAssertThrowsError(try f.required("model")) { XCTAssertTrue("\($0)".contains("--model is required")) }
        let c = try ParsedFlags(["--models", "fp23"], specs: specs)
        XCTAssertThrowsError(try c.choice("models", ["fp32", "int8"])) { XCTAssertTrue("\($0)".contains("did you mean fp32?"), "\($0)") }
    }

    func testEditDistanceAndClosestMatch() {
        XCTAssertEqual(editDistance("kitten", "sitting"), 3)
        XCTAssertEqual(editDistance("", "abc"), 3)
        XCTAssertEqual(editDistance("same", "same"), 0)
        XCTAssertEqual(editDistance("modles", "models"), 1, "a swap of neighbours is one edit")
        XCTAssertEqual(closestMatch(to: "genrate", among: ["generate", "bench", "serve"]), "generate")
        XCTAssertNil(closestMatch(to: "xyz", among: ["generate", "bench", "serve"]))
    }

    func testToolUsageListsCommandsAndTheDefaultCommandsFlags() {
        let tool = CommandLineTool(name: "t", summary: "a tool", commands: [
            Subcommand("serve", summary: "serve things", flags: specs, run: { _ in }),
            Subcommand("bench", summary: "measure things", flags: [], run: { _ in }),
        ], defaultCommand: "serve")
        XCTAssertTrue(tool.usage.contains("  serve  serve things"), tool.usage)
        XCTAssertTrue(tool.usage.contains("  bench  measure things"), tool.usage)
        XCTAssertTrue(tool.usage.contains("flags of t serve:\n  --models VALUE"), tool.usage)
    }

    func testToolExitStatuses() {
        struct Failure: Error {}
        final class Ran: @unchecked Sendable { var commands: [String] = [] }  // main runs the command on this thread
        let ran = Ran()
        let tool = CommandLineTool(name: "t", summary: "a tool", commands: [
            Subcommand("serve", summary: "serve", flags: specs, run: { f in ran.commands.append("serve \(f.string("models")!)") }),
            Subcommand("fail", summary: "fails", flags: [], run: { _ in throw Failure() }),
        ], defaultCommand: "serve")
        XCTAssertEqual(tool.main(["--models", "x"]), 0)
        XCTAssertEqual(tool.main(["serve"]), 0)
        XCTAssertEqual(tool.main([]), 0, "no arguments runs the default command")
        XCTAssertEqual(ran.commands, ["serve x", "serve models", "serve models"])
        XCTAssertEqual(tool.main(["--modls", "x"]), 2, "a bad flag is a usage error")
        XCTAssertEqual(tool.main(["srve"]), 2, "an unknown command is a usage error")
        XCTAssertEqual(tool.main(["fail"]), 1, "a failure is not a usage error")
        XCTAssertEqual(tool.main(["fail", "--help"]), 0)
    }
}

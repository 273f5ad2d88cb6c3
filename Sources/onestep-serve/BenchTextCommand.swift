// `onestep-serve bench-text`: tokenizer load time and prompts/s, and CLIP-L text encoder forward time at batch 1
// and 2 (random weights), with an OpenBLAS sgemm measured in the same run (OnestepCore CLIPTextBench).
import Foundation
import CommandLineKit
import OnestepCore

enum BenchTextCommand {
    static let flags = [
        FlagSpec("tokenizer", "a pipeline's tokenizer/ folder (vocab.json, merges.txt, tokenizer_config.json); omit to skip the tokenizer figures"),
        FlagSpec("batch", "comma-separated batch sizes", default: "1,2"),
        FlagSpec("seconds", "time to spend per measurement", default: "2"),
        FlagSpec("threads", "BLAS threads", default: "1"),
        FlagSpec("tokenizer-only", "skip the text encoder figures", isSwitch: true),
    ]

    static let command = Subcommand("bench-text", summary: "tokenizer load time and prompts/s, CLIP-L text encoder forward time (random weights) next to an sgemm",
                                    synopsis: "bench-text [--tokenizer DIR] [--batch 1,2]", flags: flags, run: run)

    static func run(_ f: ParsedFlags) throws {
        BLAS.threads = try f.int("threads", range: 1...256) ?? 1
        let report = try CLIPTextBench.run(tokenizerFolder: f.string("tokenizer"), batches: try f.intList("batch", range: 1...64) ?? [1, 2],
                                           seconds: try f.double("seconds", range: 0.05...600) ?? 2,
                                           encoder: !f.isSet("tokenizer-only"))
        print(report.text)
        FileHandle.standardError.write(Data("BLAS threads \(BLAS.threads)\n".utf8))
    }
}

import Foundation
import XCTest
import OnestepCore

/// `onestep-serve bench --config sdxs-tiny | sd-turbo-tiny`: the text-to-image bench writes a random-weight diffusers
/// folder the normal loader accepts, measures every part on each thread count and cleans up after itself. The
/// tiny configs run the same code as sd-turbo and sdxs at the golden *_tiny widths (seconds, not minutes).
/// Speeds are not checked here (benchmarks print them); shapes of the report and the folder are.
final class BenchLatentCommandTests: XCTestCase {
    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func jsonLines(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").filter { $0.hasPrefix("{") }.map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// Elements of every tensor in a safetensors file, except keys starting with one of `skipping`.
    func elements(_ path: String, skipping: [String] = []) throws -> Int {
        let f = try SafetensorsFile(path: path)
        return f.entries.values.filter { e in !skipping.contains { e.name.hasPrefix($0) } }.reduce(0) { $0 + $1.elementCount }
    }

    func testKeptFolderLoadsAndRowsCoverEveryPartAndThreadCount() throws {
        let keep = NSTemporaryDirectory() + "onestep-bench-test-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: keep) }
        let r = try run(["bench", "--config", "sdxs-tiny", "--keep", keep, "--threads", "1,2", "--runs", "1", "--json",
                         "--tokenizer", Fixtures.golden + "/sdxs_tiny/tokenizer"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = try jsonLines(r.out)
        let rows = lines.filter { $0["part"] != nil }, memory = lines.filter { $0["rss_after_load_mib"] != nil }
        XCTAssertEqual(rows.count, 8, "4 parts x 2 thread counts: \(r.out)")
        for t in [1, 2] {
            let mine = rows.filter { $0["threads"] as? Int == t }
            XCTAssertEqual(Set(mine.compactMap { $0["part"] as? String }),
                           ["text encoder", "unet step", "decoder AutoencoderTiny", "total 64x64 1 step"])
            for row in mine {
                let ms = try XCTUnwrap(row["best_ms"] as? Double), gflop = try XCTUnwrap(row["gflop"] as? Double)
                XCTAssertGreaterThan(ms, 0, "\(row)")
                XCTAssertGreaterThan(gflop, 0, "\(row)")
                XCTAssertGreaterThan(try XCTUnwrap(row["sgemm_peak_gflops"] as? Double), 0, "\(row)")
            }
            // The whole pipeline's FLOPs are its parts' (one UNet step at 1 step).
            let parts = mine.filter { !(($0["part"] as? String) ?? "").hasPrefix("total") }.compactMap { $0["gflop"] as? Double }
            let total = try XCTUnwrap(mine.first { (($0["part"] as? String) ?? "").hasPrefix("total") }?["gflop"] as? Double)
            XCTAssertEqual(total, parts.reduce(0, +), accuracy: 1e-9 * total)
        }

        // The parameter bytes reported are the float32 bytes of every tensor the loader reads from the folder.
        XCTAssertEqual(memory.count, 1)
        let stored = try elements(keep + "/text_encoder/model.safetensors") + elements(keep + "/unet/diffusion_pytorch_model.safetensors")
            + elements(keep + "/vae/diffusion_pytorch_model.safetensors", skipping: ["encoder.", "quant_conv."])
        XCTAssertEqual(memory[0]["parameter_bytes"] as? Int, stored * 4)
        let before = try XCTUnwrap(memory[0]["rss_before_load_mib"] as? Double), after = try XCTUnwrap(memory[0]["rss_after_load_mib"] as? Double)
        XCTAssertGreaterThan(after, before)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(memory[0]["peak_mib"] as? Double), after)

        // The kept folder is a pipeline the server's loader takes, with the parts the config names.
        guard case .text(let p) = try GenerationPipeline.load(path: keep) else { return XCTFail("\(keep) did not load as a text-to-image pipeline") }
        XCTAssertEqual(p.decoder.className, "AutoencoderTiny")
        XCTAssertEqual(p.textEncoder.config.hiddenAct, .quickGELU)
        XCTAssertEqual(p.unet.config.blockOutChannels, [32, 64, 64])
        let image = try p.generate([TextGenerationRequest(prompt: "a cat", seed: 1)], steps: 1)
        XCTAssertEqual(image.shape, [1, 3, 64, 64])
        XCTAssertTrue(image.data.allSatisfy { $0.isFinite })

        // A kept folder is never overwritten.
        let again = try run(["bench", "--config", "sdxs-tiny", "--keep", keep, "--tokenizer", Fixtures.golden + "/sdxs_tiny/tokenizer"])
        XCTAssertEqual(again.status, 2)
        XCTAssertTrue(again.err.contains("exists and is not empty"), again.err)
    }

    func testTemporaryFolderIsRemovedAndInt8IsSkippedWithANote() throws {
        let r = try run(["bench", "--config", "sd-turbo-tiny", "--runs", "1", "--precision", "fp32,int8",
                         "--tokenizer", Fixtures.golden + "/sd_turbo_tiny/tokenizer"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("precision int8: not built for text-to-image"), r.err)
        XCTAssertTrue(r.out.contains("decoder AutoencoderKL"), r.out)
        XCTAssertFalse(r.out.contains("int8"), "no int8 rows: \(r.out)")
        // "sd-turbo-tiny: wrote ... to FOLDER in ..." names the temporary folder, which must be gone.
        let line = try XCTUnwrap(r.err.split(separator: "\n").first { $0.contains(" wrote ") })
        let folder = try XCTUnwrap(line.components(separatedBy: " to ").last?.components(separatedBy: " in ").first)
        XCTAssertTrue(folder.contains("onestep-bench-sd-turbo-tiny"), folder)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "\(folder) was left behind")
    }
}

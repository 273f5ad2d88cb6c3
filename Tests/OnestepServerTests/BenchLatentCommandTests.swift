import Foundation
import XCTest
import OnestepCore

/// `onestep-serve bench --config sdxs-tiny | sd-turbo-tiny`: the text-to-image bench writes a random-weight diffusers
/// folder the normal loader accepts, measures every part on each thread count and cleans up after itself. The
/// tiny configs run the same code as sd-turbo and sdxs at the golden *_tiny widths (seconds, not minutes).
/// Speeds are not checked here (benchmarks print them); shapes of the report and the folder are.
final class BenchLatentCommandTests: XCTestCase {
    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try CommandLineTests.runProcess(CommandLineTests.binary, args)
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

    func testTemporaryFoldersAreRemovedAndInt8RowsSitBesideFP32() throws {
        let r = try run(["bench", "--config", "sd-turbo-tiny", "--runs", "1", "--precision", "fp32,int8,blas", "--json",
                         "--tokenizer", Fixtures.golden + "/sd_turbo_tiny/tokenizer"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("precision blas: not a path of text-to-image"), r.err)
        let lines = try jsonLines(r.out)
        let rows = lines.filter { $0["part"] != nil }, memory = lines.filter { $0["rss_after_load_mib"] != nil }
        XCTAssertEqual(rows.count, 8, "4 parts x fp32, int8: \(r.out)")
        XCTAssertEqual(memory.compactMap { $0["precision"] as? String }, ["float32", "int8"])
        let fp32 = rows.filter { $0["dtype"] as? String == "float32" }, int8 = rows.filter { $0["dtype"] as? String == "int8" }
        XCTAssertEqual(Set(int8.compactMap { $0["part"] as? String }), Set(fp32.compactMap { $0["part"] as? String }))
        XCTAssertTrue(Set(int8.compactMap { $0["part"] as? String }).contains("decoder AutoencoderKL"), r.out)
        for row in int8 {
            // The ratio printed is this run's int8 CPU ms over the fp32 row's of the same part.
            let part = try XCTUnwrap(row["part"] as? String)
            let f = try XCTUnwrap(fp32.first { $0["part"] as? String == part })
            let ratio = try XCTUnwrap(row["cpu_ratio_vs_float32"] as? Double, "\(row)")
            let expected = try XCTUnwrap(row["best_cpu_ms"] as? Double) / max(try XCTUnwrap(f["best_cpu_ms"] as? Double), 1e-9)
            XCTAssertEqual(ratio, expected, accuracy: 1e-9 * max(1, expected))
            XCTAssertNil(f["cpu_ratio_vs_float32"])
        }
        // Both folders ("wrote ... to FOLDER in", "quantized ... to FOLDER;") are temporary and must be gone.
        let line = try XCTUnwrap(r.err.split(separator: "\n").first { $0.contains(" wrote ") })
        let folder = try XCTUnwrap(line.components(separatedBy: " to ").last?.components(separatedBy: " in ").first)
        XCTAssertTrue(folder.contains("onestep-bench-sd-turbo-tiny"), folder)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "\(folder) was left behind")
        let qline = try XCTUnwrap(r.err.split(separator: "\n").first { $0.contains(" quantized ") }, r.err)
        let qfolder = try XCTUnwrap(qline.components(separatedBy: " to ").last?.components(separatedBy: ";").first)
        XCTAssertTrue(qfolder.contains("onestep-bench-sd-turbo-tiny-int8"), qfolder)
        XCTAssertFalse(FileManager.default.fileExists(atPath: qfolder), "\(qfolder) was left behind")
        XCTAssertTrue(qline.contains("unet 197 of 197"), String(qline))
    }

    /// The int8 pipeline the bench times is the one `onestep-serve quantize` writes from the same folder: with
    /// --keep DIR the bench keeps DIR-int8, and every weights file equals, byte for byte, quantize's.
    func testInt8FolderIsWhatQuantizeWrites() throws {
        let keep = NSTemporaryDirectory() + "onestep-bench-q-\(UUID().uuidString.prefix(8))"
        let out = keep + "-quantize"
        defer { for d in [keep, keep + "-int8", out] { try? FileManager.default.removeItem(atPath: d) } }
        let r = try run(["bench", "--config", "sdxs-tiny", "--keep", keep, "--runs", "1", "--precision", "int8", "--json",
                         "--tokenizer", Fixtures.golden + "/sdxs_tiny/tokenizer"])
        XCTAssertEqual(r.status, 0, r.err)
        let rows = try jsonLines(r.out).filter { $0["part"] != nil }
        XCTAssertEqual(rows.count, 4, r.out)
        XCTAssertEqual(Set(rows.compactMap { $0["dtype"] as? String }), ["int8"], "int8 only: \(r.out)")
        let q = try run(["quantize", "--model", keep, "--out", out])
        XCTAssertEqual(q.status, 0, q.err)
        for file in ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
            let a = try Data(contentsOf: URL(fileURLWithPath: keep + "-int8/" + file))
            let b = try Data(contentsOf: URL(fileURLWithPath: out + "/" + file))
            XCTAssertEqual(a, b, file)
            XCTAssertTrue(try SafetensorsFile(path: out + "/" + file).entries.values.contains { $0.dtype == .I8 }, file)
        }
        // A second bench into the same --keep refuses (both folders exist) instead of overwriting.
        let again = try run(["bench", "--config", "sdxs-tiny", "--keep", keep, "--precision", "int8",
                             "--tokenizer", Fixtures.golden + "/sdxs_tiny/tokenizer"])
        XCTAssertEqual(again.status, 2, again.err)
    }
}

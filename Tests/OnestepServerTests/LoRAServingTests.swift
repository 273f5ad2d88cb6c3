// LoRA and TAESD over HTTP and on the command line: a server started with --lora serves diffusers' fused-LoRA
// image; one started with --taesd decodes with it when a request says "decoder": "taesd" (diffusers' image with
// pipe.vae swapped), never mixing decoders in a batch; the flags' parsing and refusals; `generate` / `run-pipeline`
// with --lora and --taesd in a subprocess. Goldens: Tests/OnestepCoreTests/Golden/lora (make_lora_golden.py).
import Foundation
import OnestepCore
import PNGCodec
import XCTest
@testable import OnestepServer

enum LoRAFixtures {
    static let golden = Fixtures.repoRoot + "/Tests/OnestepCoreTests/Golden/lora"
    static let kohya = golden + "/sd_turbo_tiny/lora_kohya.safetensors"
    static let taesd = Fixtures.golden + "/sdxs_tiny/vae"

    /// A models folder holding only sd_turbo_tiny (a link), loaded with `extras`.
    static func registry(_ extras: ModelExtrasOptions, log: (String) -> Void = { _ in }) throws -> ModelRegistry {
        let dir = Fixtures.tempDir("lora")
        try FileManager.default.createSymbolicLink(atPath: dir + "/sd_turbo_tiny", withDestinationPath: Fixtures.golden + "/sd_turbo_tiny")
        return try ModelRegistry.load(directory: dir, preferred: nil, extras: extras, log: log)
    }

    static let withLoRA = Result { try registry(try ModelExtrasOptions.parse(loras: [kohya + ":0.7"], taesd: [])) }
    static let withTAESD = Result { try registry(try ModelExtrasOptions.parse(loras: [], taesd: ["sd_turbo_tiny=" + taesd])) }

    static func png(_ r: TestResponse) throws -> [UInt8] {
        let item = try XCTUnwrap((r.json?["data"] as? [[String: Any]])?.first, r.text)
        return Array(try XCTUnwrap(Data(base64Encoded: item["b64_json"] as? String ?? "")))
    }
}

final class LoRAServingTests: XCTestCase {
    func testServerWithLoRAGivesDiffusersFusedImage() throws {
        var log: [String] = []
        let registry = try LoRAFixtures.registry(try ModelExtrasOptions.parse(loras: [LoRAFixtures.kohya + ":0.7"], taesd: []), log: { log.append($0) })
        XCTAssertTrue(log.contains { $0.contains("fused LoRA") && $0.contains("lora_kohya.safetensors at scale 0.7") }, "\(log)")
        let server = try RunningServer(models: .success(registry))
        for c in try TextFixtures.cases("sd_turbo_tiny", io: LoRAFixtures.golden + "/sd_turbo_tiny/io.safetensors") {
            let r = try server.post("/v1/images/generations", json: c.body)
            XCTAssertEqual(r.status, 200, r.text)
            if let m = TextFixtures.mismatch(try LoRAFixtures.png(r), c) { XCTFail(m) }
        }
        let models = try XCTUnwrap(try server.get("/v1/models").json?["data"] as? [[String: Any]])
        let loras = try XCTUnwrap(models.first?["loras"] as? [[String: Any]])
        XCTAssertEqual(loras.first?["file"] as? String, "lora_kohya.safetensors")
        XCTAssertEqual(loras.first?["scale"] as? Double ?? 0, 0.7, accuracy: 1e-6)
    }

    /// "decoder": "taesd" gives diffusers' image with the TAESD swapped in; "vae" and no field give the model's own;
    /// in a concurrent burst of both, every answer is still its decoder's (the decoder is part of the batch key).
    func testDecoderFieldPicksTAESDAndNeverMixesInABatch() throws {
        let server = try RunningServer(models: LoRAFixtures.withTAESD) { o in
            o.maxBatch = 16
            o.maxDelayMs = 300
        }
        let cases = try TextFixtures.cases("sd_turbo_tiny", io: LoRAFixtures.golden + "/taesd_on_sd_turbo/io.safetensors")
        XCTAssertEqual(cases.count, 2)
        func body(_ c: TextFixtures.Case, _ decoder: String?) -> String {
            var d: [String: Any] = ["prompt": c.prompt, "seed": c.seed, "steps": c.steps]
            if let decoder { d["decoder"] = decoder }
            return String(decoding: try! JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]), as: UTF8.self)
        }
        var own: [String: [UInt8]] = [:]
        for c in cases {
            let t = try server.post("/v1/images/generations", json: body(c, "taesd"))
            XCTAssertEqual(t.status, 200, t.text)
            if let m = TextFixtures.mismatch(try LoRAFixtures.png(t), c) { XCTFail("taesd: \(m)") }
            let plain = try LoRAFixtures.png(try server.post("/v1/images/generations", json: body(c, nil)))
            XCTAssertNotNil(TextFixtures.mismatch(plain, c), "without the field the model's own AutoencoderKL decodes")
            XCTAssertEqual(try LoRAFixtures.png(try server.post("/v1/images/generations", json: body(c, "vae"))), plain)
            // /v1/generate takes the field too (query string form).
            let q = try server.get("/v1/generate?prompt=\(c.prompt.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)&seed=\(c.seed)&steps=\(c.steps)&decoder=taesd")
            XCTAssertEqual(q.status, 200, q.text)
            if let m = TextFixtures.mismatch(q.body, c) { XCTFail("/v1/generate taesd: \(m)") }
            own[c.key] = plain
        }
        let port = server.port
        let burst = (0..<12).map { (cases[$0 % 2], $0 % 3 == 0 ? "taesd" : "vae") }
        let bodies = burst.map { body($0.0, $0.1) }
        let responses = concurrently(burst.count) { i -> TestResponse? in
            (try? HTTPTestClient(port: port, timeout: 120))?.post("/v1/images/generations", json: bodies[i])
        }
        var batched = 0
        for (i, r) in responses.enumerated() {
            let (c, decoder) = burst[i]
            let r = try XCTUnwrap(r)
            XCTAssertEqual(r.status, 200, r.text)
            let png = try LoRAFixtures.png(r)
            if decoder == "taesd" {
                if let m = TextFixtures.mismatch(png, c) { XCTFail("burst taesd: \(m)") }
            } else {
                XCTAssertEqual(png, own[c.key], "burst vae \(c.key)")
            }
            let size = Int(r.headers["x-batch-images"] ?? "") ?? 0
            XCTAssertLessThanOrEqual(size, burst.filter { $0.0.steps == c.steps && $0.1 == decoder }.count, "a batch holds one decoder and one step count")
            if size > 1 { batched += 1 }
        }
        XCTAssertGreaterThan(batched, 0, "the burst shared batches")
        let m = try XCTUnwrap((try server.get("/v1/models").json?["data"] as? [[String: Any]])?.first)
        XCTAssertEqual(m["decoders"] as? [String], ["vae", "taesd"])
        XCTAssertEqual((m["fields"] as? [String])?.last, "decoder")
    }

    func testDecoderFieldRefusals() throws {
        let server = try RunningServer(models: LoRAFixtures.withLoRA)
        var r = try server.post("/v1/images/generations", json: #"{"prompt": "a cat", "decoder": "taesd"}"#)
        XCTAssertEqual(r.status, 400)
        XCTAssertTrue(r.text.contains("started without a TAESD folder") && r.text.contains("--taesd sd_turbo_tiny=DIR"), r.text)
        r = try server.post("/v1/images/generations", json: #"{"prompt": "a cat", "decoder": "tiny"}"#)
        XCTAssertEqual(r.status, 400)
        XCTAssertTrue(r.text.contains(#"decoder must be \"vae\""#), r.text)
        let models = try XCTUnwrap(try server.get("/v1/models").json?["data"] as? [[String: Any]])
        XCTAssertEqual(models.first?["decoders"] as? [String], ["vae"])
        XCTAssertFalse((models.first?["fields"] as? [String] ?? []).contains("decoder"))
    }

    func testFlagParsingAndResolution() throws {
        var (o, _) = try ServerOptions.parse(["--lora", "m=a.safetensors:0.5", "--lora", "b.safetensors", "--taesd", "m=/t"], environment: [:])
        XCTAssertEqual(o.extras.loras["m"], [LoRASpec(path: "a.safetensors", scale: 0.5)])
        XCTAssertEqual(o.extras.loras[nil], [LoRASpec(path: "b.safetensors", scale: 1)])
        XCTAssertEqual(o.extras.taesd["m"], "/t")
        (o, _) = try ServerOptions.parse(["--scheduler", "TCDScheduler"], environment: [:])
        XCTAssertEqual(try o.extras.resolve(folders: ["/m/one"], modelsDirectory: "/m")["one"]?.schedulerClass, "TCDScheduler")
        (o, _) = try ServerOptions.parse([], environment: ["ONESTEP_LORA": "m=a.safetensors:0.25, x/y=z.safetensors", "ONESTEP_TAESD": "/t"])
        XCTAssertEqual(o.extras.loras["m"], [LoRASpec(path: "a.safetensors", scale: 0.25)])
        XCTAssertEqual(o.extras.loras[nil], [LoRASpec(path: "x/y=z.safetensors", scale: 1)], "a path holding '=' after a '/' is not split")
        XCTAssertEqual(o.extras.taesd[nil], "/t")
        XCTAssertThrowsError(try ServerOptions.parse(["--lora", "m=a.safetensors:nan"], environment: [:])) {
            XCTAssertTrue("\($0)".contains("--lora m=a.safetensors:nan"), "\($0)")
        }
        XCTAssertThrowsError(try ServerOptions.parse([], environment: ["ONESTEP_TAESD": "m=/a,m=/b"])) {
            XCTAssertTrue("\($0)".contains("ONESTEP_TAESD") && "\($0)".contains("already has a TAESD folder"), "\($0)")
        }
        // Unnamed entries need exactly one model folder; named ones a folder of that name.
        let extras = try ModelExtrasOptions.parse(loras: ["a.safetensors"], taesd: [])
        XCTAssertThrowsError(try extras.resolve(folders: ["/m/one", "/m/two"], modelsDirectory: "/m")) {
            XCTAssertTrue("\($0)".contains("--lora MODEL=FILE[:SCALE]") && "\($0)".contains("one, two"), "\($0)")
        }
        XCTAssertEqual(try extras.resolve(folders: ["/m/one"], modelsDirectory: "/m")["one"]?.loras, [LoRASpec(path: "a.safetensors")])
        XCTAssertThrowsError(try ModelExtrasOptions.parse(loras: ["three=a.safetensors"], taesd: []).resolve(folders: ["/m/one", "/m/two"], modelsDirectory: "/m")) {
            XCTAssertTrue("\($0)".contains("no model folder named 'three'"), "\($0)")
        }
        // A LoRA for a pixel model stops start-up with the reason.
        let dir = Fixtures.tempDir("pixel-lora")
        try FileManager.default.createSymbolicLink(atPath: dir + "/cd_tiny", withDestinationPath: Fixtures.golden + "/cd_tiny")
        XCTAssertThrowsError(try ModelRegistry.load(directory: dir, preferred: nil, extras: extras, log: { _ in })) {
            XCTAssertTrue("\($0)".contains("is a pixel model"), "\($0)")
        }
    }
}

/// `generate` and `run-pipeline` with --lora / --taesd, as a user runs them (subprocess).
final class LoRACommandLineTests: XCTestCase {
    let cli = CLIHelpers()

    func testGenerateAndRunPipelineWithLoRAAndTAESD() throws {
        let model = Fixtures.golden + "/sd_turbo_tiny"
        let loraIO = try SafetensorsFile(path: LoRAFixtures.golden + "/sd_turbo_tiny/io.safetensors")
        for c in try cli.cases(loraIO) {
            let out = cli.temp("lora.png")
            let r = try cli.run(["generate", "--model", model, "--prompt", c.c["prompt"]!, "--seed", c.c["seed"]!, "--steps", c.c["steps"]!,
                                 "--lora", LoRAFixtures.kohya + ":0.7", "--out", out])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("LoRA"), r.out)
            let png = try PNGCodecBridge.pixels(out)
            cli.assertMatches(png, c, "generate --lora \(c.key)")
        }
        // run-pipeline on the LoRA golden: unet_out and prompt_embeds of the fused networks.
        let out = cli.temp("out.safetensors")
        var r = try cli.run(["run-pipeline", "--model", model, "--lora", LoRAFixtures.golden + "/sd_turbo_tiny/lora_diffusers.safetensors:0.7",
                             "--inputs", LoRAFixtures.golden + "/sd_turbo_tiny/io.safetensors", "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let got = try SafetensorsFile(path: out)
        for key in ["unet_out", "prompt_embeds"] {
            XCTAssertLessThanOrEqual(TensorError.relativeL2(try got.floats(key).data, try loraIO.floats(key).data), 1e-5, key)
        }
        // --taesd on generate decodes with it.
        let taesdIO = try SafetensorsFile(path: LoRAFixtures.golden + "/taesd_on_sd_turbo/io.safetensors")
        for c in try cli.cases(taesdIO) {
            let png = cli.temp("taesd.png")
            r = try cli.run(["generate", "--model", model, "--prompt", c.c["prompt"]!, "--seed", c.c["seed"]!, "--steps", c.c["steps"]!,
                             "--taesd", LoRAFixtures.taesd, "--out", png])
            XCTAssertEqual(r.status, 0, r.err)
            cli.assertMatches(try PNGCodecBridge.pixels(png), c, "generate --taesd \(c.key)")
        }
        // --scheduler TCDScheduler with the LoRA: Hyper-SD / TCD usage (eta 0.3, TCD's default).
        let tcdIO = try SafetensorsFile(path: LoRAFixtures.golden + "/tcd_lora_on_sd_turbo/io.safetensors")
        for c in try cli.cases(tcdIO) {
            let png = cli.temp("tcd.png")
            r = try cli.run(["generate", "--model", model, "--prompt", c.c["prompt"]!, "--seed", c.c["seed"]!, "--steps", c.c["steps"]!,
                             "--lora", LoRAFixtures.kohya + ":0.7", "--scheduler", "TCDScheduler", "--out", png])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("TCDScheduler"), r.out)
            cli.assertMatches(try PNGCodecBridge.pixels(png), c, "generate --scheduler TCDScheduler \(c.key)")
        }
        // Refusals: exit 1 with the file and the reason.
        r = try cli.run(["generate", "--model", model, "--prompt", "x", "--lora", LoRAFixtures.golden + "/lcm_tiny/lora_kohya.safetensors", "--out", cli.temp("x.png")])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("lcm_tiny/lora_kohya.safetensors") && r.err.contains("does not fit"), r.err)
        r = try cli.run(["generate", "--model", model, "--prompt", "x", "--taesd", model + "/vae", "--out", cli.temp("x.png")])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("a TAESD folder is an AutoencoderTiny"), r.err)
        r = try cli.run(["generate", "--model", model, "--prompt", "x", "--lora", "a.safetensors:abc:", "--out", cli.temp("x.png")])
        XCTAssertNotEqual(r.status, 0)
    }
}

enum PNGCodecBridge {
    /// The (H, W, 3) bytes of a PNG file.
    static func pixels(_ path: String) throws -> [UInt8] {
        try PNG.decode(Array(try Data(contentsOf: URL(fileURLWithPath: path)))).pixels
    }
}

/// The subprocess and comparison helpers of TextCommandLineTests, as a value (XCTestCase instances are made by XCTest).
struct CLIHelpers {
    typealias Case = TextCommandLineTests.Case

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        try CommandLineTests.runProcess(CommandLineTests.binary, args)
    }

    func temp(_ name: String) -> String { Fixtures.tempDir("lora-cli") + "/" + name }

    func cases(_ io: SafetensorsFile) throws -> [Case] { try TextCommandLineTests.cases(io) }

    /// uint8 equal to diffusers' except within 1e-4 of a rounding boundary (T2I_README.md's tolerance).
    func assertMatches(_ got: [UInt8], _ c: Case, _ what: String) { TextCommandLineTests.assertMatches(got, c, what) }
}

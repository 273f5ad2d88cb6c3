import XCTest
@testable import OnestepCore

/// Issue 16 item 5a: config values in every form diffusers accepts are read as diffusers reads them
/// (diffusers/models/unets/unet_2d.py UNet2DModel.__init__, unet_2d_blocks.py get_down_block/get_up_block,
/// configuration_utils.py extract_init_dict).
final class ConfigFormsTests: XCTestCase {
    func base() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: try Fixtures.goldenCase("ddpm_gray") + "/config.json"))) as! [String: Any]
    }

    func parsed(_ change: (inout [String: Any]) -> Void) throws -> UNetConfig {
        var d = try base()
        change(&d)
        return try UNetConfig(json: d)
    }

    func same(_ a: UNetConfig, _ b: UNetConfig, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.jsonString(), b.jsonString(), what, file: file, line: line)
    }

    func testEachFormReadsAsDiffusersReadsIt() throws {
        let plain = try parsed { _ in }
        let s = plain.sampleSize
        // sample_size: int | tuple[int, int]
        same(try parsed { $0["sample_size"] = [s, s] }, plain, "sample_size as a [h, w] pair")
        // Keys in _use_default_values take __init__ defaults whatever value is written beside them.
        var withDefaults = try parsed { $0["attention_head_dim"] = 8; $0["_use_default_values"] = [] }
        same(try parsed { $0["attention_head_dim"] = NSNull(); $0["_use_default_values"] = ["attention_head_dim"] }, withDefaults,
             "_use_default_values: attention_head_dim null listed there means the default 8")
        withDefaults = try parsed { $0["mid_block_type"] = nil }
        same(try parsed { $0["mid_block_type"] = NSNull(); $0["_use_default_values"] = ["mid_block_type"] }, withDefaults,
             "_use_default_values: mid_block_type null listed there means UNetMidBlock2D")
        // time_embedding_dim: `time_embedding_dim or block_out_channels[0] * 4`: null and 0 both mean the default.
        same(try parsed { $0["time_embedding_dim"] = 0 }, try parsed { $0["time_embedding_dim"] = NSNull() }, "time_embedding_dim 0")
        XCTAssertNil(try parsed { $0["time_embedding_dim"] = 0 }.timeEmbeddingDim)
        // Legacy block names: get_down_block / get_up_block strip a "UNetRes" prefix.
        same(try parsed { d in
            d["down_block_types"] = (d["down_block_types"] as! [String]).map { "UNetRes" + $0 }
            d["up_block_types"] = (d["up_block_types"] as! [String]).map { "UNetRes" + $0 }
        }, plain, "UNetRes-prefixed block types")
        // attention_head_dim null: one head as wide as the block (diffusers passes output_channel).
        XCTAssertNil(try parsed { $0["attention_head_dim"] = NSNull() }.attentionHeadDim)
        // act_fn "swish" is silu.
        same(try parsed { $0["act_fn"] = "swish" }, plain, "act_fn swish")
    }

    func testFormsDiffusersRefusesOrWeCannotServeAreClearErrors() throws {
        let cases: [((inout [String: Any]) -> Void, String)] = [
            ({ $0["sample_size"] = [16, 8] }, "not square"),
            ({ $0["sample_size"] = [16] }, "pair"),
            ({ $0["sample_size"] = NSNull() }, "is required"),
            ({ $0["sample_size"] = [4097, 4097] }, "outside the supported range"),
            ({ $0["down_block_types"] = ["UNetResCrossAttnDownBlock2D"] }, "CrossAttnDownBlock2D is not supported"),
        ]
        for (change, expected) in cases {
            XCTAssertThrowsError(try parsed(change)) { XCTAssertTrue("\($0)".contains(expected), "\($0)") }
        }
    }

    /// The JSON integer bound: 2^53 - 1 (documented seed maximum) is exact, 2^53 is refused.
    func testJSONIntegerBound() throws {
        let ok = try JSONSerialization.jsonObject(with: Data("[9007199254740991, -9007199254740991, 9007199254740992, 1.5, 7.0]".utf8)) as! [Any]
        XCTAssertEqual(JSONValues.integer(ok[0]), 9_007_199_254_740_991)
        XCTAssertEqual(JSONValues.integer(ok[1]), -9_007_199_254_740_991)
        XCTAssertNil(JSONValues.integer(ok[2]))
        XCTAssertNil(JSONValues.integer(ok[3]))
        XCTAssertEqual(JSONValues.integer(ok[4]), 7)
    }
}

import XCTest
import OnestepCore
import PNGCodec

final class PNGTests: XCTestCase {
    func testRoundTripRGBAndGray() throws {
        for channels in [1, 3, 4] {
            var px = [UInt8](repeating: 0, count: 5 * 7 * channels)
            for i in px.indices { px[i] = UInt8(truncatingIfNeeded: i &* 37 &+ 11) }
            let img = PixelImage(width: 5, height: 7, channels: channels, pixels: px)
            let bytes = try PNG.encode(img)
            XCTAssertEqual(Array(bytes.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
            let back = try PNG.decode(bytes, channels: channels)
            XCTAssertEqual(back, img, "channels \(channels)")
        }
    }

    func testGarbageIsAClearError() {
        XCTAssertThrowsError(try PNG.decode([1, 2, 3])) { XCTAssertTrue("\($0)".contains("PNG")) }
        XCTAssertThrowsError(try PNG.decode([UInt8](repeating: 0x42, count: 100)))
        // A valid signature followed by a truncated stream.
        let img = PixelImage(width: 4, height: 4, channels: 3, fill: 9)
        let bytes = try! PNG.encode(img)
        XCTAssertThrowsError(try PNG.decode(Array(bytes.prefix(bytes.count / 2))))
    }

    /// Found by fuzz/ (model_config): a model whose output was NaN trapped in the conversion to UInt8 (in checked
    /// builds; under -Ounchecked the result was undefined). NaN now becomes 0; infinities clamp like any value.
    func testNaNAndInfiniteModelOutputsBecomePixels() throws {
        let images = Tensor(shape: [1, 1, 2, 2], data: [.nan, .infinity, -.infinity, 0])
        XCTAssertEqual(ImageQuantizer.toUInt8(images), [0, 255, 0, 128])
        let pngs = try ImagePipeline.pngs(images)
        XCTAssertEqual(try PNG.decode(pngs[0], channels: 1).pixels, [0, 255, 0, 128])
    }

    /// Issue 16 item 2: decoded samples match the PNG spec for every colour type and bit depth, interlaced or
    /// not, with and without gAMA / sRGB / iCCP, as an independent decoder (pypng) reads them
    /// (Tests/Golden/png/table.json, made by scripts/golden/make_png_table.py).
    func testDecodedSamplesMatchTheTable() throws {
        let dir = Fixtures.repoRoot + "/Tests/Golden/png"
        let table = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/table.json"))) as! [String: Any]
        let images = table["images"] as! [[String: Any]]
        XCTAssertGreaterThanOrEqual(images.count, 47)
        for e in images {
            let file = e["file"] as! String, channels = e["channels"] as! Int
            let want = (e["pixels"] as! [Int]).map { UInt8($0) }
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + file)))
            let img = try PNG.decode(bytes, channels: channels)
            XCTAssertEqual(img.width, e["width"] as? Int, file)
            XCTAssertEqual(img.height, e["height"] as? Int, file)
            if let i = zip(img.pixels, want).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("\(file) (\(e["note"]!)): sample \(i) is \(img.pixels[i]), the PNG spec says \(want[i]); first samples \(Array(img.pixels.prefix(8))) vs \(Array(want.prefix(8)))")
            }
            XCTAssertEqual(img.pixels.count, want.count, file)
            // The default layout: grey or RGB, alpha composited on black.
            let plain = try PNG.decode(bytes)
            XCTAssertEqual(plain.channels, channels >= 3 ? 3 : 1, file)
            let colour = channels >= 3 ? 3 : 1, hasAlpha = channels == 2 || channels == 4
            for p in 0..<(img.width * img.height) {
                let a = hasAlpha ? Int(want[p * channels + channels - 1]) : 255
                for k in 0..<colour where Int(plain.pixels[p * colour + k]) != (Int(want[p * channels + k]) * a + 127) / 255 {
                    XCTFail("\(file): default decode of pixel \(p) channel \(k) is \(plain.pixels[p * colour + k])"); break
                }
            }
        }
    }

    func testIssueGrey16Exactly() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Fixtures.repoRoot + "/Tests/Golden/png/issue16_grey16.png")))
        XCTAssertEqual(try PNG.decode(bytes).pixels, [0, 32, 64, 128, 160, 192, 224, 255])
    }

    func testChannelConversions() throws {
        let rgba = PixelImage(width: 2, height: 1, channels: 4, pixels: [200, 100, 50, 255, 200, 100, 50, 51])
        let bytes = try PNG.encode(rgba)
        XCTAssertEqual(try PNG.decode(bytes, channels: 4), rgba)
        XCTAssertEqual(try PNG.decode(bytes, channels: 3).pixels, [200, 100, 50, 40, 20, 10])
        // Rec. 709 luma: 0.2126*200 + 0.7152*100 + 0.0722*50 = 117.6 -> 118; composited: 0.2126*40+0.7152*20+0.0722*10 = 23.5 -> 24
        XCTAssertEqual(try PNG.decode(bytes, channels: 1).pixels, [118, 24])
        XCTAssertEqual(try PNG.decode(bytes, channels: 2).pixels, [118, 255, 118, 51])
        XCTAssertThrowsError(try PNG.decode(bytes, channels: 5)) { XCTAssertTrue("\($0)".contains("5 output channels")) }
    }
}

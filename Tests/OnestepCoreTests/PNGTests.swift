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
}

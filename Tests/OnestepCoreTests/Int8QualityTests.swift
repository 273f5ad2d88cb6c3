import Foundation
import XCTest
@testable import OnestepCore

/// The shipped default model served on the int8 kernels (int8 weights and uint8 activations, exact int32 sums)
/// against the same weights on the fp32 kernels: the images a user gets must stay close to the float ones.
final class Int8QualityTests: XCTestCase {
    /// Issue 7's floor for int8 images against fp32 images on the default model (measured ~46 dB).
    static let minimumPSNR = 35.0
    static let seeds: [UInt64] = Array(0..<16)

    func testDefaultModelInt8ImagesStayCloseToFP32() throws {
        let path = Fixtures.repoRoot + "/models/shapes16-cd-int8"
        let int8 = try ImagePipeline.load(path: path, precision: .int8)
        let (relative, psnr) = Quantizer.compare(int8.with(precision: .fp32), int8, seeds: Self.seeds)
        print(String(format: "default model, int8 vs fp32 kernels on %d seeds: relative L2 %.4f, PSNR %.2f dB",
                     Self.seeds.count, relative, psnr))
        XCTAssertGreaterThan(psnr, Self.minimumPSNR)
        XCTAssertTrue(psnr.isFinite, "int8 and fp32 gave identical pixels: the int8 kernels did not run")
    }
}

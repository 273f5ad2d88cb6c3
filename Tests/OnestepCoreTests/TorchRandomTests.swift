import XCTest
@testable import OnestepCore

final class TorchRandomTests: XCTestCase {
    /// shared/golden/rng: torch.randn(shape, generator=torch.Generator().manual_seed(seed)).
    static let maxAbsError: Float = 1e-5

    func testMatchesTorchForEverySeedAndShape() throws {
        let file = try SafetensorsFile(path: Fixtures.golden + "/rng/torch_randn.safetensors")
        XCTAssertGreaterThan(file.names.count, 20)
        var worst: Float = 0
        for name in file.names {
            let expected = try file.floats(name)
            // name = seed<seed>_<shape> or seed<seed>_second_<shape>
            let parts = name.dropFirst(4).split(separator: "_")
            let seed = try XCTUnwrap(UInt64(parts[0]))
            let second = parts.count == 3
            let shape = parts.last!.split(separator: "x").map { Int($0)! }
            XCTAssertEqual(shape, expected.shape, name)
            var g = TorchGenerator(seed: seed)
            if second { _ = g.randn(shape: shape) }
            let got = g.randn(shape: shape)
            let err = TensorError.maxAbs(got.data, expected.data)
            worst = max(worst, err)
            XCTAssertLessThanOrEqual(err, Self.maxAbsError, "\(name): max abs error \(err)")
        }
        print("torch randn: worst max abs error \(worst) over \(file.names.count) tensors")
    }

    func testMT19937ReferenceValue() {
        // The C++ standard requires the 10000th output of default-seeded (5489) mt19937 to be 4123659995.
        var mt = MT19937(seed: 5489)
        var v: UInt32 = 0
        for _ in 0..<10000 { v = mt.next() }
        XCTAssertEqual(v, 4_123_659_995)
    }
}

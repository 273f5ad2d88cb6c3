// torch.randn on the CPU, bit for bit where it matters: the noise a diffusers pipeline draws with
// generator=torch.Generator().manual_seed(seed). Checked against ../shared/golden/rng/torch_randn.safetensors.
//
// torch's CPU generator is mt19937 seeded with the low 32 bits of the seed (standard init_genrand).
// randn of a float tensor with >= 16 elements (aten/src/ATen/native/cpu/DistributionTemplates.h normal_fill):
//   1. one 24-bit uniform per element, (u32 & 0xFFFFFF) * 2^-24;
//   2. Box-Muller in blocks of 16: u1 = 1 - a[j], u2 = a[j+8], r = sqrt(-2 ln u1),
//      a[j] = r cos(2 pi u2), a[j+8] = r sin(2 pi u2), j < 8;
//   3. when the size is not a multiple of 16, 16 fresh uniforms are drawn over the last 16 elements and that
//      block is transformed again.
// Fewer than 16 elements: double-precision Box-Muller per pair (at::normal_distribution<double>): 53-bit uniforms
// from two u32 draws (high word first), u1 then u2, r = sqrt(-2 log1p(-u2)), theta = 2 pi u1, cos first and the
// sin value cached in the generator for the next element.
import Foundation

/// The Mersenne Twister mt19937 (Matsumoto & Nishimura), as std::mt19937 and torch's CPU generator.
public struct MT19937: Sendable {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt32) {
        state[0] = seed
        for i in 1..<624 {
            state[i] = 1_812_433_253 &* (state[i - 1] ^ (state[i - 1] >> 30)) &+ UInt32(i)
        }
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var v = state[(i + 397) % 624] ^ (y >> 1)
            if y & 1 != 0 { v ^= 0x9908_B0DF }
            state[i] = v
        }
        index = 0
    }

    public mutating func next() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }
}

/// A torch.Generator().manual_seed(seed) stand-in: the same stream of normal samples.
public struct TorchGenerator: Sendable {
    private var engine: MT19937
    private var cachedNormal: Double?

    public init(seed: UInt64) {
        engine = MT19937(seed: UInt32(truncatingIfNeeded: seed))
    }

    mutating func uniform24() -> Float {
        Float(engine.next() & 0xFF_FFFF) * Float(sign: .plus, exponent: -24, significand: 1)
    }

    mutating func uniform53() -> Double {
        let hi = UInt64(engine.next()), lo = UInt64(engine.next())
        let bits = ((hi << 32) | lo) & ((1 << 53) - 1)
        return Double(bits) * Double(sign: .plus, exponent: -53, significand: 1)
    }

    mutating func normalDouble() -> Double {
        if let c = cachedNormal {
            cachedNormal = nil
            return c
        }
        let u1 = uniform53(), u2 = uniform53()
        let r = (-2 * Foundation.log1p(-u2)).squareRoot()
        let theta = 2 * Double.pi * u1
        cachedNormal = r * Foundation.sin(theta)
        return r * Foundation.cos(theta)
    }

    /// torch.randn(count) with this generator, as float32.
    public mutating func randn(count n: Int) -> [Float] {
        guard n >= 16 else {
            return (0..<n).map { _ in Float(normalDouble()) }
        }
        var a = [Float](repeating: 0, count: n)
        for i in 0..<n { a[i] = uniform24() }
        a.withUnsafeMutableBufferPointer { p in
            var i = 0
            while i + 16 <= n {
                Self.boxMuller16(p.baseAddress! + i)
                i += 16
            }
            if n % 16 != 0 {
                let tail = p.baseAddress! + (n - 16)
                for j in 0..<16 { tail[j] = uniform24() }
                Self.boxMuller16(tail)
            }
        }
        return a
    }

    /// torch.randn(shape) with this generator.
    public mutating func randn(shape: [Int]) -> Tensor {
        Tensor(shape: shape, data: randn(count: shape.reduce(1, *)))
    }

    /// normal_fill_16: float arithmetic as torch's scalar path; transcendental functions in double and rounded,
    /// which stays within 1e-6 of torch's vectorised float versions.
    private static func boxMuller16(_ d: UnsafeMutablePointer<Float>) {
        for j in 0..<8 {
            let u1 = 1 - d[j]
            let u2 = d[j + 8]
            let radius = (-2 * Foundation.log(Double(u1))).squareRoot()
            let theta = 2 * Double.pi * Double(u2)
            d[j] = Float(radius * Foundation.cos(theta))
            d[j + 8] = Float(radius * Foundation.sin(theta))
        }
    }
}

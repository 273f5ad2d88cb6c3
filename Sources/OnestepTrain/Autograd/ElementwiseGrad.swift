// Parameter-free pieces and their adjoints: SiLU, nearest 2x upsampling, 2x2 average pooling, channel
// concatenation, and the in-place sums the blocks use to merge gradients of a tensor read twice.
import Foundation
import OnestepCore

/// y = silu(x), keeping x for the backward: dx = dy * s * (1 + x (1 - s)), s = sigmoid(x).
public final class TrainableSiLU {
    private let output = Buffer(), inputGradient = Buffer()
    private var input: UnsafePointer<Float>?
    private var count = 0

    public init() {}

    public func forward(_ x: UnsafePointer<Float>, count n: Int) -> UnsafeMutablePointer<Float> {
        (input, count) = (x, n)
        let y = output.ensure(n)
        for i in 0..<n { y[i] = Activations.silu(x[i]) }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("silu backward before forward") }
        let dx = inputGradient.ensure(count)
        for i in 0..<count { dx[i] = dy[i] * Self.derivative(x[i]) }
        return dx
    }

    @inline(__always)
    public static func derivative(_ x: Float) -> Float {
        let s = 1 / (1 + Foundation.exp(-x))
        return s * (1 + x * (1 - s))
    }
}

public enum ResampleGrad {
    /// Adjoint of nearest 2x upsampling: each input pixel receives the sum of its 2x2 copies.
    /// dy (planes, 2H, 2W) -> dx (planes, H, W)
    public static func upsampleNearest2xBackward(_ dy: UnsafePointer<Float>, planes: Int, height h: Int, width w: Int,
                                                 dx: UnsafeMutablePointer<Float>) {
        let w2 = 2 * w
        for p in 0..<planes {
            let src = dy + p * 4 * h * w, dst = dx + p * h * w
            for iy in 0..<h {
                let r0 = src + 2 * iy * w2, r1 = r0 + w2
                for ix in 0..<w { dst[iy * w + ix] = r0[2 * ix] + r0[2 * ix + 1] + r1[2 * ix] + r1[2 * ix + 1] }
            }
        }
    }

    /// Adjoint of 2x2 average pooling: each input pixel receives a quarter of its window's gradient.
    /// dy (planes, H/2, W/2) -> dx (planes, H, W)
    public static func averagePool2xBackward(_ dy: UnsafePointer<Float>, planes: Int, height h: Int, width w: Int,
                                             dx: UnsafeMutablePointer<Float>) {
        let ho = h / 2, wo = w / 2
        for p in 0..<planes {
            let src = dy + p * ho * wo, dst = dx + p * h * w
            for y in 0..<h {
                for x in 0..<w { dst[y * w + x] = 0.25 * src[(y / 2) * wo + x / 2] }
            }
        }
    }
}

public enum ChannelConcat {
    /// out (N, C1+C2, HW) = cat(a (N, C1, HW), b (N, C2, HW)) along channels.
    public static func forward(_ a: UnsafePointer<Float>, channels c1: Int, _ b: UnsafePointer<Float>, channels c2: Int,
                               batch n: Int, spatial hw: Int, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<n {
            (out + i * (c1 + c2) * hw).update(from: a + i * c1 * hw, count: c1 * hw)
            (out + (i * (c1 + c2) + c1) * hw).update(from: b + i * c2 * hw, count: c2 * hw)
        }
    }

    /// Splits d(out) back into da (N, C1, HW) and db (N, C2, HW).
    public static func backward(_ dout: UnsafePointer<Float>, channels c1: Int, channels c2: Int, batch n: Int, spatial hw: Int,
                                da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>) {
        for i in 0..<n {
            (da + i * c1 * hw).update(from: dout + i * (c1 + c2) * hw, count: c1 * hw)
            (db + i * c2 * hw).update(from: dout + (i * (c1 + c2) + c1) * hw, count: c2 * hw)
        }
    }
}

@inline(__always)
func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { y[i] += x[i] }
}

@inline(__always)
func scaleInPlace(_ y: UnsafeMutablePointer<Float>, by s: Float, count: Int) {
    for i in 0..<count { y[i] *= s }
}

// Model-space images to 8-bit pixels, as diffusers' pipelines do: (image / 2 + 0.5).clamp(0, 1), then
// numpy_to_pil's (images * 255).round().astype("uint8").
import Foundation

public enum ImageQuantizer {
    /// Model-space images (N, C, H, W) in [-1, 1] to uint8 (N, H, W, C): round(clamp(x/2 + 0.5, 0, 1) * 255),
    /// rounding half to even as torch.round. NaN becomes 0: clamping lets NaN through, and converting NaN to
    /// UInt8 traps in checked builds (the process dies) and is undefined under the release build's -Ounchecked.
    public static func toUInt8(_ images: Tensor) -> [UInt8] {
        let n = images.shape[0], c = images.shape[1], h = images.shape[2], w = images.shape[3]
        var out = [UInt8](repeating: 0, count: images.count)
        for i in 0..<n { for ch in 0..<c { for y in 0..<h { for x in 0..<w {
            let v = images.data[((i * c + ch) * h + y) * w + x]
            guard !v.isNaN else { continue }
            let u = min(max(v / 2 + 0.5, 0), 1) * 255
            out[((i * h + y) * w + x) * c + ch] = UInt8(u.rounded(.toNearestOrEven))
        } } } }
        return out
    }
}

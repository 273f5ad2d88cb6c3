// A deterministic, class-conditional synthetic data set: one shape per image, the class told by its form alone.
// Colour, size, position, rotation and the (two-colour gradient) background are random per image, so a model
// must learn the outline to get the class right. Edges are anti-aliased by 4x4 supersampling per pixel.
//
// Every shape is described in its own frame: (u, v) in about [-1, 1], radius 1, before rotation and scaling.
import Foundation
import PNGCodec

public enum ShapeClass: String, CaseIterable, Sendable {
    case circle, square, triangle, cross, star, ring, crescent, heart

    /// Whether the point (u, v) of the shape's own frame is inside it.
    func contains(_ u: Double, _ v: Double) -> Bool {
        let d2 = u * u + v * v
        switch self {
        case .circle: return d2 <= 0.85 * 0.85
        case .ring: return d2 <= 0.95 * 0.95 && d2 >= 0.55 * 0.55
        case .square: return max(abs(u), abs(v)) <= 0.7
        case .triangle: return Self.insidePolygon(u, v, Self.triangleVertices)
        case .cross: return (abs(u) <= 0.27 && abs(v) <= 0.95) || (abs(v) <= 0.27 && abs(u) <= 0.95)
        case .star: return Self.insidePolygon(u, v, Self.starVertices)
        case .crescent: return d2 <= 0.9 * 0.9 && (u - 0.42) * (u - 0.42) + v * v >= 0.72 * 0.72
        case .heart:
            // (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the unit disc, point up.
            let x = u * 1.25, y = -v * 1.25 + 0.15
            let a = x * x + y * y - 1
            return a * a * a - x * x * y * y * y <= 0
        }
    }

    static let triangleVertices: [(Double, Double)] = (0..<3).map { k in
        let a = Double.pi / 2 + 2 * Double.pi * Double(k) / 3
        return (0.95 * Foundation.cos(a), -0.95 * Foundation.sin(a))
    }

    static let starVertices: [(Double, Double)] = (0..<10).map { k in
        let a = Double.pi / 2 + Double.pi * Double(k) / 5, r = k % 2 == 0 ? 1.0 : 0.42
        return (r * Foundation.cos(a), -r * Foundation.sin(a))
    }

    /// Even-odd rule.
    static func insidePolygon(_ x: Double, _ y: Double, _ p: [(Double, Double)]) -> Bool {
        var inside = false
        var j = p.count - 1
        for i in 0..<p.count {
            let (xi, yi) = p[i], (xj, yj) = p[j]
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi { inside.toggle() }
            j = i
        }
        return inside
    }
}

public enum ShapesGenerator {
    static let supersampling = 4
    /// Smallest colour distance (RGB in [0, 1], Euclidean) between shape and background, so every shape is visible.
    static let minimumContrast = 0.45

    /// Image `index` of the data set: its class is index % 8, everything else comes from (seed, index).
    public static func render(index: Int, size s: Int, seed: UInt64) -> (ShapeClass, PixelImage) {
        let shape = ShapeClass.allCases[index % ShapeClass.allCases.count]
        var rng = TrainRandom(seed: seed &* 0x2545_F491_4F6C_DD1D &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        func colour() -> [Double] { (0..<3).map { _ in rng.uniformDouble() } }
        let bg0 = colour(), bg1 = colour()
        var fg = colour()
        for _ in 0..<64 {
            let mid = zip(bg0, bg1).map { ($0 + $1) / 2 }
            let dist = zip(fg, mid).reduce(0.0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }.squareRoot()
            if dist >= minimumContrast { break }
            fg = colour()
        }
        let size = Double(s)
        let radius = size * (0.24 + 0.16 * rng.uniformDouble())
        let cx = radius + 0.5 + (size - 2 * radius - 1) * rng.uniformDouble()
        let cy = radius + 0.5 + (size - 2 * radius - 1) * rng.uniformDouble()
        let angle = 2 * Double.pi * rng.uniformDouble()
        let gradAngle = 2 * Double.pi * rng.uniformDouble()
        let (ca, sa) = (Foundation.cos(angle), Foundation.sin(angle))
        let (gx, gy) = (Foundation.cos(gradAngle), Foundation.sin(gradAngle))
        var img = PixelImage(width: s, height: s, channels: 3)
        let ss = supersampling
        for py in 0..<s {
            for px in 0..<s {
                var covered = 0
                for sy in 0..<ss {
                    for sx in 0..<ss {
                        let x = Double(px) + (Double(sx) + 0.5) / Double(ss) - cx
                        let y = Double(py) + (Double(sy) + 0.5) / Double(ss) - cy
                        let u = (x * ca + y * sa) / radius, v = (-x * sa + y * ca) / radius
                        if shape.contains(u, v) { covered += 1 }
                    }
                }
                let alpha = Double(covered) / Double(ss * ss)
                // Background: a linear blend of two colours along a random direction.
                let t = min(max(0.5 + ((Double(px) + 0.5) / size - 0.5) * gx + ((Double(py) + 0.5) / size - 0.5) * gy, 0), 1)
                for k in 0..<3 {
                    let bg = bg0[k] * (1 - t) + bg1[k] * t
                    let v = fg[k] * alpha + bg * (1 - alpha)
                    img.pixels[(py * s + px) * 3 + k] = UInt8(min(max((v * 255).rounded(), 0), 255))
                }
            }
        }
        return (shape, img)
    }

    /// Writes `count` images as OUT/<class>/<class>_<index>.png. Returns images written per class.
    @discardableResult
    public static func write(count: Int, size: Int, seed: UInt64, to out: String) throws -> [String: Int] {
        let fm = FileManager.default
        for c in ShapeClass.allCases {
            try fm.createDirectory(atPath: out + "/" + c.rawValue, withIntermediateDirectories: true)
        }
        var perClass: [String: Int] = [:]
        for i in 0..<count {
            let (shape, img) = render(index: i, size: size, seed: seed)
            let name = String(format: "%@_%06d.png", shape.rawValue, i)
            try PNG.write(img, path: "\(out)/\(shape.rawValue)/\(name)")
            perClass[shape.rawValue, default: 0] += 1
        }
        return perClass
    }
}

// Finite-difference checks of every layer's backward (see GradientCheck.swift for the method and tolerance).
import XCTest
@testable import OnestepTrain
import OnestepCore

final class LayerGradientTests: XCTestCase {
    func checkConv(_ g: ConvGeometry, bias: Bool, size: Int, _ what: String) {
        let store = ParameterStore()
        let conv = TrainableConv2D("conv", store, geometry: g, bias: bias)
        store.seal(seed: 1)
        let n = 2, x = CheckedInput(GradientCheck.random(n * g.inChannels * size * size, seed: 2))
        let out = n * g.outChannels * g.outputHeight(size) * g.outputWidth(size)
        let r = GradientCheck.run(store: store, inputs: [x], outputCount: out,
                                  forward: { UnsafePointer(conv.forward(x.pointer, batch: n, height: size, width: size)) },
                                  backward: { [UnsafePointer(conv.backward($0))] })
        GradientCheck.assertPasses(r, what)
    }

    func testConv3x3Padded() {
        checkConv(ConvGeometry(inChannels: 3, outChannels: 4, kernel: 3, padding: 1), bias: true, size: 5, "conv 3x3")
    }

    func testConvStride2AsymmetricPadding() {
        // Downsample2D with padding=0 pads (0, 1, 0, 1).
        let g = ConvGeometry(inChannels: 2, outChannels: 3, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1)
        checkConv(g, bias: true, size: 6, "conv stride 2")
        checkConv(ConvGeometry(inChannels: 2, outChannels: 3, kernel: 3, stride: 2, padding: 1), bias: false, size: 6, "conv stride 2 pad 1")
    }

    func testConvPointwise() {
        checkConv(ConvGeometry(inChannels: 4, outChannels: 3, kernel: 1, padding: 0), bias: true, size: 4, "conv 1x1")
    }

    func testLinear() {
        let store = ParameterStore()
        let lin = TrainableLinear("lin", store, in: 5, out: 4)
        store.seal(seed: 1)
        let x = CheckedInput(GradientCheck.random(3 * 5, seed: 3))
        let r = GradientCheck.run(store: store, inputs: [x], outputCount: 3 * 4,
                                  forward: { UnsafePointer(lin.forward(x.pointer, batch: 3)) },
                                  backward: { [UnsafePointer(lin.backward($0))] })
        GradientCheck.assertPasses(r, "linear")
    }

    func testGroupNormWithAndWithoutSiLU() {
        for silu in [false, true] {
            let store = ParameterStore()
            let gn = TrainableGroupNorm("gn", store, channels: 6, groups: 3, eps: 1e-5, silu: silu)
            store.seal(seed: 1)
            // Non-trivial affine parameters so dgamma/dbeta are exercised away from (1, 0).
            for i in 0..<store.count { store.values[i] += Float(i % 5) * 0.1 - 0.2 }
            let x = CheckedInput(GradientCheck.random(2 * 6 * 9, seed: 4, scale: 2))
            let r = GradientCheck.run(store: store, inputs: [x], outputCount: 2 * 6 * 9,
                                      forward: { UnsafePointer(gn.forward(x.pointer, batch: 2, spatial: 9)) },
                                      backward: { [UnsafePointer(gn.backward($0))] })
            GradientCheck.assertPasses(r, "group norm silu=\(silu)")
        }
    }

    func testSiLU() {
        let store = ParameterStore()
        store.seal(seed: 0)
        let silu = TrainableSiLU()
        let x = CheckedInput(GradientCheck.random(20, seed: 5, scale: 3))
        let r = GradientCheck.run(store: store, inputs: [x], outputCount: 20,
                                  forward: { UnsafePointer(silu.forward(x.pointer, count: 20)) },
                                  backward: { [UnsafePointer(silu.backward($0))] })
        GradientCheck.assertPasses(r, "silu")
    }

    func testAttention() {
        for (norm, heads, rescale) in [(Optional(2), 2, Float(1)), (nil, 1, Float(2))] {
            let store = ParameterStore()
            let c = 4, l = 6
            let attn = TrainableAttention("attn", store, channels: c, headDim: c / heads, normGroups: norm, eps: 1e-5, rescaleOutputFactor: rescale)
            store.seal(seed: 2)
            let x = CheckedInput(GradientCheck.random(2 * c * l, seed: 6))
            let r = GradientCheck.run(store: store, inputs: [x], outputCount: 2 * c * l,
                                      forward: { UnsafePointer(attn.forward(x.pointer, batch: 2, spatial: l)) },
                                      backward: { [UnsafePointer(attn.backward($0))] })
            GradientCheck.assertPasses(r, "attention norm=\(String(describing: norm)) heads=\(heads)")
        }
    }

    func checkResnet(cin: Int, cout: Int, conditioning: TimeConditioning, resample: ResnetResample, scale: Float, _ what: String) {
        let store = ParameterStore()
        let t = 6, n = 2, s = 4
        let block = TrainableResnet("res", store, in: cin, out: cout, temb: t, groups: 2, eps: 1e-5, conditioning: conditioning,
                                    resample: resample, outputScaleFactor: scale)
        store.seal(seed: 3)
        let x = CheckedInput(GradientCheck.random(n * cin * s * s, seed: 8)), temb = CheckedInput(GradientCheck.random(n * t, seed: 9))
        let (ho, wo) = block.outputSize(height: s, width: s)
        let dTemb = UnsafeMutablePointer<Float>.allocate(capacity: n * t)
        defer { dTemb.deallocate() }
        let r = GradientCheck.run(store: store, inputs: [x, temb], outputCount: n * cout * ho * wo,
                                  forward: { UnsafePointer(block.forward(x.pointer, batch: n, height: s, width: s, activatedTemb: temb.pointer)) },
                                  backward: { dy in
                                      dTemb.initialize(repeating: 0, count: n * t)
                                      let dx = block.backward(dy, dActivatedTemb: dTemb)
                                      return [UnsafePointer(dx), UnsafePointer(dTemb)]
                                  })
        GradientCheck.assertPasses(r, what)
    }

    func testResnetDefaultWithShortcut() {
        checkResnet(cin: 2, cout: 4, conditioning: .default, resample: .none, scale: 1, "resnet default")
    }

    func testResnetScaleShiftAndOutputScale() {
        checkResnet(cin: 4, cout: 4, conditioning: .scaleShift, resample: .none, scale: 2, "resnet scale_shift")
    }

    func testResnetUpAndDown() {
        checkResnet(cin: 4, cout: 4, conditioning: .default, resample: .up, scale: 1, "resnet up")
        checkResnet(cin: 4, cout: 4, conditioning: .default, resample: .down, scale: 1, "resnet down")
    }

    /// Linear maps checked by the adjoint identity <A x, y> = <x, A^T y>, which must hold to rounding.
    func testResampleAndConcatAdjoints() {
        let planes = 3, h = 4, w = 6
        let x = GradientCheck.random(planes * h * w, seed: 10), yUp = GradientCheck.random(planes * 4 * h * w, seed: 11)
        let yDown = GradientCheck.random(planes * h * w / 4, seed: 12)
        func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }
        var ax = [Float](repeating: 0, count: yUp.count), aty = [Float](repeating: 0, count: x.count)
        Resample.upsampleNearest2x(x, planes: planes, height: h, width: w, y: &ax)
        ResampleGrad.upsampleNearest2xBackward(yUp, planes: planes, height: h, width: w, dx: &aty)
        XCTAssertEqual(dot(ax, yUp), dot(x, aty), accuracy: 1e-3)
        var px = [Float](repeating: 0, count: yDown.count)
        Resample.averagePool2x(x, planes: planes, height: h, width: w, y: &px)
        ResampleGrad.averagePool2xBackward(yDown, planes: planes, height: h, width: w, dx: &aty)
        XCTAssertEqual(dot(px, yDown), dot(x, aty), accuracy: 1e-3)

        let a = GradientCheck.random(2 * 3 * 5, seed: 13), b = GradientCheck.random(2 * 2 * 5, seed: 14)
        var cat = [Float](repeating: 0, count: a.count + b.count), da = a, db = b
        ChannelConcat.forward(a, channels: 3, b, channels: 2, batch: 2, spatial: 5, into: &cat)
        ChannelConcat.backward(cat, channels: 3, channels: 2, batch: 2, spatial: 5, da: &da, db: &db)
        XCTAssertEqual(da, a)
        XCTAssertEqual(db, b)
    }
}

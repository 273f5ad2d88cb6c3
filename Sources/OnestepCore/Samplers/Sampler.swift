// The sampler abstraction: one type per diffusers scheduler, chosen by the scheduler config's `_class_name`
// (SamplerRegistry), run by one loop that follows diffusers' pipeline loop:
//
//   scheduler.set_timesteps(steps)                        -> sampler.start(steps:) gives a SamplerRun
//   latents = randn(shape, generator) * init_noise_sigma  -> per image, from that image's own TorchGenerator
//   for t in scheduler.timesteps:
//       x_in = scheduler.scale_model_input(latents, t)    -> run.scaleModelInput
//       out  = unet(x_in, t, conditioning)                -> the pipeline's ModelCall (CFG lives there)
//       latents = scheduler.step(out, t, latents, generator=...).prev_sample   -> run.step
//
// Each image draws its initial noise and every step's noise from its own generator, in image order, as diffusers
// does when given a list of generators (randn_tensor draws each list entry's slice separately). An image is thus
// the one diffusers gives for batch_size=1 and generator=torch.manual_seed(seed), whatever batch it is in.
// Multistep state (DPM-Solver's previous outputs, Heun's first half) lives in the run, never in the sampler,
// so one loaded sampler serves any number of concurrent batches.
import Foundation

/// The network as a sampler calls it: model input (N, C, H, W) at one timestep -> raw network output
/// (N, C, H, W) (epsilon, v, x0 or an EDM/consistency F, whatever the sampler's prediction type says).
/// Conditioning (class labels, text embeddings, classifier-free guidance) is inside the closure.
public typealias ModelCall = (_ x: Tensor, _ timestep: Float) -> Tensor

/// A scheduler read from a diffusers `scheduler_config.json`.
public protocol Sampler: Sendable, CustomStringConvertible {
    /// diffusers' class name, the `_class_name` that selects this type.
    static var className: String { get }
    /// Other `_class_name`s read as this type (older diffusers names, Onestep's legacy names).
    static var legacyClassNames: [String] { get }
    /// Reads every key diffusers' constructor takes; unknown values are refused naming the key.
    init(config: SchedulerConfig) throws
    /// Step counts a request may ask for.
    var stepRange: ClosedRange<Int> { get }
    /// Steps used when a request does not say (diffusers' pipeline default where there is one).
    var defaultSteps: Int { get }
    /// The config as diffusers would save it (`_class_name` first-class), for writing scheduler_config.json.
    var configDictionary: [String: Any] { get }
    /// set_timesteps(steps): the state of one sampling run. `steps` must lie in stepRange.
    func start(steps: Int) -> any SamplerRun
}

/// One sampling run: diffusers' scheduler state after set_timesteps. Model calls happen in order 0..<timesteps.count.
public protocol SamplerRun {
    /// Timestep passed to the network at each model call (more calls than steps for Heun).
    var timesteps: [Float] { get }
    /// Standard deviation of the initial noise (init_noise_sigma).
    var initNoiseSigma: Float { get }
    /// scale_model_input for model call `index`. sample (N, C, H, W).
    func scaleModelInput(_ sample: Tensor, index: Int) -> Tensor
    /// step(): the sample after model call `index`. Stochastic samplers draw `per`-value noise from each image's
    /// generator in image order.
    mutating func step(_ modelOutput: Tensor, index: Int, sample: Tensor, generators: inout [TorchGenerator]) -> Tensor
}

extension Sampler {
    public static var legacyClassNames: [String] { [] }
    public var description: String { Self.className }

    /// Runs the diffusers loop from each image's generator. Returns the final sample (N, C, H, W) in model space.
    /// - Parameter generators: one per image, seeded with the image's seed; they are advanced.
    public func sample(generators: inout [TorchGenerator], shape: [Int], steps: Int, model: ModelCall) -> Tensor {
        precondition(stepRange.contains(steps), "\(Self.className): steps \(steps) outside \(stepRange)")
        precondition(shape.count == 4 && shape[0] == generators.count, "one generator per image")
        var run = start(steps: steps)
        let per = shape[1] * shape[2] * shape[3]
        // prepare_latents: randn(shape, generator) * init_noise_sigma.
        var x = Tensor(zeros: shape)
        let s0 = run.initNoiseSigma
        for i in 0..<shape[0] {
            let noise = generators[i].randn(count: per)
            for j in 0..<per { x.data[i * per + j] = noise[j] * s0 }
        }
        return Self.loop(&run, from: x, generators: &generators, model: model)
    }

    /// The loop from a given starting sample (already scaled by init_noise_sigma).
    public static func loop(_ run: inout any SamplerRun, from start: Tensor, generators: inout [TorchGenerator],
                            model: ModelCall) -> Tensor {
        var x = start
        for (k, t) in run.timesteps.enumerated() {
            let out = model(run.scaleModelInput(x, index: k), t)
            x = run.step(out, index: k, sample: x, generators: &generators)
        }
        return x
    }

    /// Images for requests: one generator per request seed.
    public func sample(_ requests: [GenerationRequest], steps: Int, channels: Int, size: Int, model: ModelCall) -> Tensor {
        var generators = requests.map { TorchGenerator(seed: $0.seed) }
        return sample(generators: &generators, shape: [requests.count, channels, size, size], steps: steps, model: model)
    }
}

extension TorchGenerator {
    /// randn_tensor(shape, generator=[g_0, ..., g_{N-1}]): image i's values from generator i. (N, C, H, W)
    static func perImageNoise(_ generators: inout [TorchGenerator], like t: Tensor) -> Tensor {
        let n = t.shape[0], per = t.count / max(n, 1)
        var data = [Float]()
        data.reserveCapacity(t.count)
        for i in 0..<n { data += generators[i].randn(count: per) }
        return Tensor(shape: t.shape, data: data)
    }
}

// Loading one diffusers component folder (unet/, vae/): config.json + diffusion_pytorch_model[.variant].safetensors.
// The one loader the latent networks and the text-to-image pipeline share, so the weights file is found the same
// way (ModelDirectory.weightsFile: diffusers' `variant` names) and every error names the file it is about.
import Foundation

enum ComponentFolder {
    /// Builds a network from `directory`: `build` gets the config path and the weights; tensors the network did not
    /// read are refused (except those starting with one of `ignoring`, e.g. a VAE's encoder.*), since they mean the
    /// weights belong to another architecture.
    /// - Throws: ModelLoadError naming config.json (config errors) or the weights file (format, shapes, extra tensors).
    static func load<Network>(directory: String, variant: String? = nil, ignoring: [String] = [],
                              _ build: (_ configPath: String, _ weights: SafetensorsWeights) throws -> Network) throws -> Network {
        let configPath = directory + "/config.json"
        let weightsPath = try ModelDirectory.weightsFile(in: directory, base: "diffusion_pytorch_model", variant: variant)
        do {
            let src = SafetensorsWeights(file: try SafetensorsFile(path: weightsPath))
            let network = try build(configPath, src)
            let unused = src.unusedKeys().filter { key in !ignoring.contains { key.hasPrefix($0) } }
            guard unused.isEmpty else {
                throw ModelLoadError(path: weightsPath, problem: "holds \(unused.count) tensors config.json does not use (e.g. \(unused.prefix(3).joined(separator: ", "))); the weights belong to another architecture")
            }
            return network
        } catch let e as ConfigError {
            throw ModelLoadError(path: configPath, problem: e.description)
        } catch let e as SafetensorsError {
            throw ModelLoadError(path: weightsPath, problem: "\(e.tensor.map { "tensor '\($0)' " } ?? "")\(e.problem)")
        }
    }
}

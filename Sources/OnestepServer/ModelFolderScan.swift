// Which folders under --models are models, and whether every file the loader will read is a readable regular
// file — checked before anything is opened, so a broken folder stops start-up with the file and the reason
// instead of being skipped silently, hanging (a FIFO blocks open(2) until a writer appears) or surfacing as a raw
// NSCocoaErrorDomain dump. Cases from issue 17: a dangling config.json symlink (a Hugging Face cache snapshot
// whose blob is missing), a symlink loop, weights without config.json, a folder the server's user cannot read.
import Foundation
import OnestepCore

enum ModelFolderScan {
    /// Entries whose presence makes a folder look like a model (the names diffusers' and transformers'
    /// save_pretrained write). Checked by name (lstat level), so a dangling symlink counts as present.
    static let markerFiles: Set<String> = [
        "config.json", "model_index.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
    ]
    static let markerFolders: Set<String> = ["unet", "scheduler", "vae", "text_encoder", "tokenizer", "transformer"]
    static let weightExtensions = [".safetensors", ".bin", ".ckpt", ".pt", ".pth"]

    /// What `path` is, without following a final symlink (lstat) and following it (stat).
    enum Entry {
        case missing
        case file
        case directory
        /// A symlink whose target does not exist.
        case dangling(target: String)
        /// ELOOP: a symlink that resolves to itself, possibly through others.
        case loop
        /// A FIFO, socket or device: opening it can block or read forever.
        case special(kind: String)
        /// stat failed otherwise (EACCES on a parent folder...).
        case unreachable(reason: String)
    }

    static func entry(_ path: String) -> Entry {
        var link = stat()
        guard lstat(path, &link) == 0 else {
            return errno == ENOENT ? .missing : .unreachable(reason: String(cString: strerror(errno)))
        }
        var info = stat()
        if stat(path, &info) != 0 {
            let error = errno
            if error == ELOOP { return .loop }
            if error == ENOENT, (link.st_mode & S_IFMT) == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
                return .dangling(target: target)
            }
            return .unreachable(reason: String(cString: strerror(error)))
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFIFO: return .special(kind: "a FIFO (named pipe)")
        case S_IFSOCK: return .special(kind: "a socket")
        case S_IFCHR: return .special(kind: "a character device")
        case S_IFBLK: return .special(kind: "a block device")
        default: return .special(kind: "not a regular file")
        }
    }

    /// The names in a folder, or a clear error (permission denied: who runs the server matters).
    static func list(_ dir: String) throws -> [String] {
        guard let handle = opendir(dir) else {
            let error = errno
            let hint = error == EACCES
                ? " (the server runs as uid \(getuid()); give that user read and execute permission on the folder)"
                : ""
            throw ModelLoadError(path: dir, problem: "cannot list the folder: \(String(cString: strerror(error)))\(hint)")
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let item = readdir(handle) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Whether a folder holds any of the files or folders a model folder holds (hidden entries aside).
    static func looksLikeModel(_ dir: String) throws -> Bool {
        // Weights under other names (a test's torch_randn.safetensors) do not make a model folder; the names
        // diffusers and transformers save do.
        try list(dir).contains { name in markerFiles.contains(name) || markerFolders.contains(name) }
    }

    /// Throws, naming the file and the reason, unless every file the loader may read in `dir` (and in its
    /// component folders, for a pipeline) is a readable regular file, and a config is there.
    static func check(_ dir: String) throws {
        let names = try list(dir)
        try checkFiles(in: dir, names: names)
        let hasIndex = names.contains("model_index.json")
        if hasIndex {
            for component in ["unet", "scheduler"] where names.contains(component) {
                try requireDirectory(dir + "/" + component)
                try checkFiles(in: dir + "/" + component, names: try list(dir + "/" + component))
            }
        }
        let configDir = hasIndex ? dir + "/unet" : dir
        if case .missing = entry(configDir + "/config.json") {
            let weights = (try? list(configDir))?.first { name in weightExtensions.contains { name.hasSuffix($0) } }
            throw ModelLoadError(path: dir, problem: (weights.map { "has \($0) but " } ?? "")
                + "no \(hasIndex ? "unet/" : "")config.json; a model folder needs config.json beside "
                + "diffusion_pytorch_model.safetensors (as diffusers' save_pretrained writes them)")
        }
    }

    private static func requireDirectory(_ path: String) throws {
        switch entry(path) {
        case .directory: return
        case .missing: throw ModelLoadError(path: path, problem: "is missing")
        default: try describeProblem(path)
        }
    }

    /// Every .json and weights file must be a regular file the server's user can open.
    private static func checkFiles(in dir: String, names: [String]) throws {
        for name in names where name.hasSuffix(".json") || weightExtensions.contains(where: { name.hasSuffix($0) }) {
            let path = dir + "/" + name
            if case .file = entry(path) {
                let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
                guard fd >= 0 else {
                    let error = errno
                    throw ModelLoadError(path: path, problem: "cannot be read: \(String(cString: strerror(error)))"
                        + (error == EACCES ? " (the server runs as uid \(getuid()); give that user read permission)" : ""))
                }
                close(fd)
            } else {
                try describeProblem(path)
            }
        }
    }

    /// Throws the error that describes what is wrong with `path` (anything but a regular file).
    private static func describeProblem(_ path: String) throws {
        switch entry(path) {
        case .file, .missing:
            return
        case .directory:
            throw ModelLoadError(path: path, problem: "is a folder, expected a file")
        case .dangling(let target):
            throw ModelLoadError(path: path, problem: "is a symlink to \(target), which does not exist (a Hugging Face cache snapshot whose blob was not downloaded?); download the model again or copy the real files")
        case .loop:
            throw ModelLoadError(path: path, problem: "is a symlink loop (it resolves to itself); replace it with the real file")
        case .special(let kind):
            throw ModelLoadError(path: path, problem: "is \(kind), not a regular file; only regular files (or symlinks to them) are read")
        case .unreachable(let reason):
            throw ModelLoadError(path: path, problem: "cannot be examined: \(reason)")
        }
    }

    /// The model folders under `dir` (sorted), each checked; a sub-folder that looks like a model and fails the
    /// check, or a symlink entry that does not resolve, stops the scan with the reason.
    static func modelFolders(under dir: String) throws -> [String] {
        var folders: [String] = []
        // lost+found: the root of an ext4 volume mounted as the models folder; root-only, never a model.
        for name in try list(dir) where !name.hasPrefix(".") && name != "lost+found" {
            let path = dir + "/" + name
            switch entry(path) {
            case .directory:
                guard try looksLikeModel(path) else { continue }
                try check(path)
                folders.append(path)
            case .file:
                continue  // README.md and the like
            case .dangling, .loop, .unreachable:
                try describeProblem(path)
            case .special, .missing:
                continue
            }
        }
        return folders
    }
}

"""End-to-end text-to-image benchmark: Onestep against diffusers/PyTorch fp32 and OpenVINO, same weights, same run.

    /work/venv/bin/python scripts/bench/t2i_e2e_peers.py [--configs sdxs,sd-turbo] [--threads 1,2] [--rounds 2]
        [--runs 1] [--peers pytorch,openvino] [--onestep .build/release/onestep-serve] [--onestep-precision fp32,int8]
        [--workdir /tmp/...] [--keep]

For each config, `onestep-serve bench --config C --keep DIR` writes the random-weight diffusers folder (the
full-size SD-Turbo or SDXS-512-DreamShaper layout) and benches it; then, round after round, each engine runs in
its own process (so its peak RSS is its own) on that same folder, interleaved: Onestep (`bench --model DIR`; with
`--onestep-precision fp32,int8` it also writes the folder's int8 form with `onestep-serve quantize`'s writer and
times fp32 and int8 part by part in the same process: columns onestep and onestep-int8),
PyTorch (StableDiffusionPipeline.from_pretrained(DIR), fp32), OpenVINO (the diffusers UNet, text encoder and
decoder converted with openvino.convert_model, compiled for CPU; SDXS only unless --openvino-all). Every engine times
the same parts of one 512x512 image in one step: text encoder (tokenize + encode), one UNet step (timestep 999),
decoder (latents / scaling_factor through vae.decode), and the whole pipeline; per part the best wall ms over all
runs and rounds is kept with the CPU ms (user + system, all threads) of that run. The machine may be shared:
the CPU ms say what work each engine did, and the load average is printed beside every round.

Worker mode (used by the driver): t2i_e2e_peers.py --worker pytorch|openvino --folder DIR --threads 1,2 --runs R
prints one JSON line per (part, threads) and one memory line.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

PARTS = ["text", "unet", "decoder", "total"]
PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed"


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, family {fields.get('CPU family', '?').strip()}, {os.cpu_count()} CPUs"


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    """(wall ms, CPU ms of the process: every thread, user + system)."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return (time.perf_counter() - w0) * 1000, (time.process_time() - c0) * 1000


def measure(parts, threads, runs, set_threads, engine, extra=None):
    """Runs each part `runs` times, interleaved, per thread count; prints JSON rows (best wall and its CPU)."""
    for t in threads:
        set_threads(t)
        best = {}
        for _ in range(runs):
            for name, fn in parts(t):
                w, c = timed(fn)
                first = best.get(name, {}).get("first_ms", w)
                if name not in best or w < best[name]["best_ms"]:
                    best[name] = {"best_ms": w, "best_cpu_ms": c}
                best[name]["first_ms"] = first
        for name in PARTS:
            if name in best:
                row = {"engine": engine, "part": name, "threads": t, **best[name], "load_average": load_average()}
                row.update(extra or {})
                print(json.dumps(row), flush=True)


# ---------------------------------------------------------------- PyTorch

def worker_pytorch(a):
    import torch
    from diffusers import StableDiffusionPipeline
    torch.set_num_interop_threads(1)
    before = rss_mib()
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.folder, safety_checker=None, requires_safety_checker=False,
                                                   torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    after = rss_mib()
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    g = torch.Generator().manual_seed(1)
    latents = torch.randn((1, pipe.unet.config.in_channels, side // pipe.vae_scale_factor, side // pipe.vae_scale_factor), generator=g)
    with torch.inference_mode():
        ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        emb = pipe.text_encoder(ids)[0]

    def parts(t):
        def text():
            with torch.inference_mode():
                i = pipe.tokenizer([PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt").input_ids
                pipe.text_encoder(i)[0]

        def unet():
            with torch.inference_mode():
                pipe.unet(latents, torch.tensor([999.0]), emb).sample

        def decoder():
            with torch.inference_mode():
                pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample

        def total():
            with torch.inference_mode():
                pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, height=side, width=side, output_type="pt",
                     generator=torch.Generator().manual_seed(1))
        return [("text", text), ("unet", unet), ("decoder", decoder), ("total", total)]

    measure(parts, a.threads, a.runs, torch.set_num_threads, "pytorch",
            {"version": f"torch {torch.__version__}"})
    print(json.dumps({"engine": "pytorch", "memory": True, "load_s": load_s, "rss_before_load_mib": before,
                      "rss_after_load_mib": after, "peak_mib": peak_mib()}), flush=True)


# ---------------------------------------------------------------- OpenVINO

def worker_openvino(a):
    import numpy as np
    import openvino as ov
    import torch
    from diffusers import StableDiffusionPipeline
    before = rss_mib()
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.folder, safety_checker=None, requires_safety_checker=False,
                                                   torch_dtype=torch.float32)
    unet, text, vae = pipe.unet.eval(), pipe.text_encoder.eval(), pipe.vae.eval()
    side = unet.config.sample_size * pipe.vae_scale_factor
    h = side // pipe.vae_scale_factor
    d = text.config.hidden_size

    for m in (unet, text, vae):
        m.requires_grad_(False)

    # Each wrapper holds its network as a submodule, so tracing sees the weights as parameters.
    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = unet

        def forward(self, sample, timestep, ehs):
            return self.m(sample, timestep, ehs, return_dict=False)[0]

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = text

        def forward(self, ids):
            return self.m(ids, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = vae

        def forward(self, z):
            return self.m.decode(z, return_dict=False)[0]

    x = torch.randn((1, 4, h, h), generator=torch.Generator().manual_seed(1))
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        models = {
            "text": ov.convert_model(Text(), example_input=(ids,)),
            "unet": ov.convert_model(Unet(), example_input=(x, torch.tensor([999.0]), torch.randn(1, 77, d))),
            "decoder": ov.convert_model(Decoder(), example_input=(x,)),
        }
    scaling = vae.config.scaling_factor
    tokenizer = pipe.tokenizer
    del pipe, unet, text, vae  # OpenVINO holds its own copy of the weights from here
    import gc
    gc.collect()
    convert_s = time.perf_counter() - t0
    core = ov.Core()
    latents = x.numpy()
    emb = np.random.default_rng(1).standard_normal((1, 77, d)).astype(np.float32)
    compiled = {}
    precision = {}
    # "openvino": as installed (it picks bf16 on CPUs with AVX512-BF16 or AMX); "openvino-f32": the f32 hint.
    hint = {}

    def set_threads(t):
        for k, m in models.items():
            cfg = {"INFERENCE_NUM_THREADS": t}
            if hint.get("f32"):
                cfg["INFERENCE_PRECISION_HINT"] = "f32"
            compiled[k] = core.compile_model(m, "CPU", cfg)
            precision[k] = str(compiled[k].get_property("INFERENCE_PRECISION_HINT"))
        print(json.dumps({"engine": hint["engine"], "threads": t, "inference_precision_hint": precision,
                          "version": ov.__version__}), flush=True)

    def parts(t):
        req = {k: c.create_infer_request() for k, c in compiled.items()}
        t999 = np.array([999.0], dtype=np.float32)

        def text():
            i = tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
            return req["text"].infer([i])[0]

        def unet(e=emb):
            return req["unet"].infer([latents, t999, e])[0]

        def decoder(z=latents):
            return req["decoder"].infer([z / scaling])[0]

        def total():
            # Euler, 1 step, trailing: x0 = sigma_max-scaled noise minus sigma * eps; the arithmetic is negligible.
            e = text()
            eps = unet(e)
            decoder(latents - eps)
        return [("text", text), ("unet", unet), ("decoder", decoder), ("total", total)]

    for engine in a.ov_engines.split(","):
        hint.update(engine=engine, f32=engine.endswith("f32"))
        measure(parts, a.threads, a.runs, set_threads, engine, {"version": f"openvino {ov.__version__}"})
        compiled.clear()
    print(json.dumps({"engine": "openvino", "memory": True, "load_s": convert_s, "rss_before_load_mib": before,
                      "rss_after_load_mib": rss_mib(), "peak_mib": peak_mib(), "note": "peak includes the torch model it was converted from"}), flush=True)


# ---------------------------------------------------------------- driver

def onestep_rows(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    rows = []
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        int8 = r.get("dtype", r.get("precision")) == "int8"
        r["engine"] = "onestep-int8" if int8 else "onestep"
        if "part" in r:
            p = r["part"]
            r["part"] = "text" if p.startswith("text") else "unet" if p.startswith("unet") else "decoder" if p.startswith("decoder") else "total"
        else:
            r["memory"] = True
        rows.append(r)
    return rows, out.stderr


def worker_rows(engine, folder, threads, runs, ov_engines):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--folder", folder,
           "--threads", ",".join(map(str, threads)), "--runs", str(runs), "--ov-engines", ov_engines]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"# {engine} failed ({out.returncode}): {out.stderr[-2000:]}", flush=True)
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["pytorch", "openvino"])
    ap.add_argument("--folder")
    ap.add_argument("--configs", default="sdxs,sd-turbo")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each part per process (interleaved); the best is kept")
    ap.add_argument("--peers", default="pytorch,openvino")
    ap.add_argument("--ov-engines", default="openvino,openvino-f32",
                    help="openvino (its own precision choice: bf16 where the CPU has it) and/or openvino-f32 (f32 hint)")
    ap.add_argument("--openvino-all", action="store_true", help="OpenVINO on every config, not only sdxs")
    ap.add_argument("--onestep", default=".build/release/onestep-serve")
    ap.add_argument("--onestep-precision", default="fp32,int8",
                    help="Onestep's precisions (bench --precision): fp32 and/or int8 (the folder quantized as `quantize` writes it)")
    ap.add_argument("--workdir", default="/tmp/onestep-t2i-e2e")
    ap.add_argument("--keep", action="store_true", help="keep the written folders")
    ap.add_argument("--json-out", help="also append every row to this file as it comes")
    ap.add_argument("--table-from", help="print the tables of a --json-out file (e.g. of several runs) and exit")
    a = ap.parse_args()
    a.threads = [int(t) for t in a.threads.split(",")]
    if a.worker == "pytorch":
        return worker_pytorch(a)
    if a.worker == "openvino":
        return worker_openvino(a)

    if a.table_from:
        rows = [json.loads(line) for line in open(a.table_from) if line.startswith("{")]
        for config in dict.fromkeys(r["config"] for r in rows):
            mine = [r for r in rows if r["config"] == config]
            engines = list(dict.fromkeys(r["engine"] for r in mine if "part" in r))
            ours = [e for e in ("onestep", "onestep-int8") if e in engines]
            engines = ours + [e for e in engines if e not in ours]
            threads = sorted({r["threads"] for r in mine if "part" in r})
            print(table(config, mine, engines, threads))
        return
    peers = [p for p in a.peers.split(",") if p]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, threads {a.threads}, "
          f"rounds {a.rounds}, runs per process {a.runs}", flush=True)
    for config in a.configs.split(","):
        folder = os.path.join(a.workdir, config)
        subprocess.run(["rm", "-rf", folder], check=True)
        os.makedirs(a.workdir, exist_ok=True)
        engines = ["onestep"] + [p for p in peers if p != "openvino" or config.startswith("sdxs") or a.openvino_all]
        rows = []
        try:
            for r in range(a.rounds):
                for engine in engines:
                    print(f"# {config} round {r + 1} {engine}: load average {load_average()}", flush=True)
                    if engine == "onestep":
                        base = [a.onestep, "bench", "--threads", ",".join(map(str, a.threads)), "--runs", str(a.runs), "--json",
                                "--precision", a.onestep_precision]
                        cmd = base + (["--config", config, "--keep", folder] if r == 0 else ["--model", folder])
                        got, err = onestep_rows(cmd)
                        for line in err.splitlines():
                            if "sgemm" in line or "wrote" in line or "quantized" in line:
                                print("#   " + line, flush=True)
                    else:
                        got = worker_rows(engine, folder, a.threads, a.runs, a.ov_engines)
                    for g in got:
                        g["config"], g["round"] = config, r + 1
                        if a.json_out:  # as they come, so an interrupted run keeps its rows
                            with open(a.json_out, "a") as f:
                                f.write(json.dumps(g) + "\n")
                        if "inference_precision_hint" in g:
                            print(f"#   openvino threads {g['threads']}: INFERENCE_PRECISION_HINT {g['inference_precision_hint']}", flush=True)
                    rows += got
        finally:
            if not a.keep:
                subprocess.run(["rm", "-rf", folder, folder + "-int8"])  # -int8: bench --keep's quantized form
        ours = ["onestep"] * ("fp32" in a.onestep_precision) + ["onestep-int8"] * ("int8" in a.onestep_precision)
        columns = [c for e in engines for c in (a.ov_engines.split(",") if e == "openvino" else ours if e == "onestep" else [e])]
        print(table(config, rows, columns, a.threads), flush=True)


def table(config, rows, engines, threads):
    """part x engine: best wall ms / its CPU ms over every round (@ the 1-minute load average when that row was
    printed), ratios of each Onestep column / each peer (wall, CPU), memory."""
    def best(engine, part, t):
        cands = [r for r in rows if r.get("engine") == engine and r.get("part") == part and r.get("threads") == t]
        return min(cands, key=lambda r: r["best_ms"]) if cands else None

    ours = [e for e in engines if e.startswith("onestep")]
    peers = [e for e in engines if not e.startswith("onestep")]
    head = f"{'part':<9}{'thr':>4}  " + "".join(f"{e + ' wall/CPU ms @load':>34}" for e in engines)
    head += "".join(f"{o.replace('onestep', 'Onestep') + '/' + p + ' wall, CPU':>36}" for o in ours for p in peers)
    lines = [f"## {config}: one image at the unet sample size x 8, 1 step, best of all rounds (wall ms / CPU ms of that run @ 1-min load average)", head]

    def cell(b):
        load = b.get("load_average", "?").split()[0] if b else ""
        return f"{b['best_ms']:.0f} / {b['best_cpu_ms']:.0f} @{load}" if b else "-"

    def ratio(mine, b):
        return f"{mine['best_ms'] / b['best_ms']:.2f}, {mine['best_cpu_ms'] / max(b['best_cpu_ms'], 1e-9):.2f}" if b and mine else "-"

    for t in threads:
        for part in PARTS:
            cells = "".join(f"{cell(best(e, part, t)):>34}" for e in engines)
            cells += "".join(f"{ratio(best(o, part, t), best(p, part, t)):>36}" for o in ours for p in peers)
            lines.append(f"{part:<9}{t:>4}  {cells}")
    for e in dict.fromkeys(e if e.startswith("onestep") else e.split("-")[0] for e in engines):
        mem = [r for r in rows if r.get("engine") == e and r.get("memory")]
        if mem:
            m = min(mem, key=lambda r: r.get("peak_mib", 0))
            extra = f", parameters {m['parameter_bytes'] / 1048576:.0f} MiB fp32" if "parameter_bytes" in m else ""
            lines.append(f"{e}: RSS before load {m['rss_before_load_mib']:.0f} MiB, after load {m['rss_after_load_mib']:.0f} MiB, "
                         f"peak {m['peak_mib']:.0f} MiB (lowest peak over rounds{extra})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

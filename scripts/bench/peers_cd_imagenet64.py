#!/usr/bin/env python3
"""Peers for `onestep-serve bench --config cd_imagenet64`: the exact config of openai/diffusers-cd_imagenet64_l2
(UNet2DModel, 296 M parameters, 219 GFLOP per image) with random weights, timed on the same machine:
PyTorch fp32 and bf16 (autocast), ONNX Runtime fp32 and OpenVINO (as installed: its default CPU precision hint,
printed) when importable.

Prints one line per row: peer, dtype, threads, batch, ms per batch (best of --runs), images/s and the process
CPU ms of that best call.
Run with the shared venv: /work/venv/bin/python scripts/bench/peers_cd_imagenet64.py [--threads 1,2] [--batch 1,4]
The config matches IMAGENET_64_UNET_CONFIG in diffusers scripts/convert_consistency_to_diffusers.py.
"""
import argparse
import os
import sys
import tempfile
import time

import torch
from diffusers import UNet2DModel

CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, layers_per_block=3, num_class_embeds=1000,
    block_out_channels=[192, 384, 576, 768], attention_head_dim=64,
    down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32, norm_num_groups=32,
    upsample_type="resnet", downsample_type="resnet",
)


def best_ms(fn, runs):
    """Best wall ms of `runs` calls, and the process CPU ms of that call (every thread: compare with the
    `cpu ms` column of `onestep-serve bench`, which a shared machine disturbs far less than wall time)."""
    fn()  # warm-up
    best, cpu = float("inf"), float("inf")
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall, used = time.perf_counter() - t, time.process_time() - c
        if wall < best:
            best, cpu = wall, used
    return best * 1000, cpu * 1000


def row(peer, dtype, threads, batch, timing):
    ms, cpu = timing
    print(f"{peer:12s} {dtype:6s} threads {threads} batch {batch:2d}  {ms:10.1f} ms/batch  {1000 * batch / ms:7.3f} images/s"
          f"  {cpu:10.1f} cpu ms/batch", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="torch,onnxruntime,openvino")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    peers = a.peers.split(",")
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"cd_imagenet64 config: {params / 1e6:.1f} M parameters; torch {torch.__version__}; cpu {cpu_model()}; "
          f"load average {os.getloadavg()}", flush=True)

    def inputs(b):
        return (torch.randn(b, 3, 64, 64), torch.full((b,), 1.0), torch.arange(b) % 1000)

    if "torch" in peers:
        for n in threads:
            torch.set_num_threads(n)
            for b in batches:
                x, t, y = inputs(b)
                with torch.inference_mode():
                    row("pytorch", "fp32", n, b, best_ms(lambda: model(x, t, class_labels=y), a.runs))
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        row("pytorch", "bf16", n, b, best_ms(lambda: model(x, t, class_labels=y), a.runs))

    onnx_path = None
    if "onnxruntime" in peers or "openvino" in peers:
        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, t, y):
                return self.m(x, t, class_labels=y).sample

        onnx_path = os.path.join(tempfile.mkdtemp(), "unet.onnx")
        x, t, y = inputs(1)
        try:
            torch.onnx.export(Wrapped(model), (x, t, y), onnx_path, input_names=["x", "t", "y"], output_names=["out"],
                              dynamic_axes={"x": {0: "b"}, "t": {0: "b"}, "y": {0: "b"}, "out": {0: "b"}}, opset_version=17,
                              dynamo=False)
        except Exception as e:  # e.g. the `onnx` package missing: OpenVINO converts the torch module directly instead
            print(f"ONNX export failed ({type(e).__name__}: {e}); onnxruntime skipped, OpenVINO via convert_model", flush=True)
            onnx_path = None
            wrapped = Wrapped(model)
    if "onnxruntime" in peers and onnx_path:
        try:
            import onnxruntime as ort
        except ImportError as e:
            print(f"onnxruntime not importable ({e}); skipped", flush=True)
        else:
            for n in threads:
                so = ort.SessionOptions()
                so.intra_op_num_threads = n
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
                for b in batches:
                    x, t, y = inputs(b)
                    feed = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()}
                    row("onnxruntime", "fp32", n, b, best_ms(lambda: sess.run(None, feed), a.runs))
    if "openvino" in peers:
        try:
            import openvino as ov
        except ImportError as e:
            print(f"openvino not importable ({e}); skipped", flush=True)
        else:
            core = ov.Core()
            if onnx_path:
                ov_model = core.read_model(onnx_path)
            else:
                x, t, y = inputs(1)
                with torch.no_grad():
                    ov_model = ov.convert_model(wrapped, example_input=(x, t, y))
            for n in threads:
                compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": n, "PERFORMANCE_HINT": "LATENCY"})
                hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
                precision = hint.split("'")[1] if "'" in hint else hint  # "<Type: 'bfloat16'>" -> bfloat16
                req = compiled.create_infer_request()
                for b in batches:
                    x, t, y = inputs(b)
                    feed = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()}
                    row("openvino", precision[:6], n, b, best_ms(lambda: req.infer(feed), a.runs))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())

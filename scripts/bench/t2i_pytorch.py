"""PyTorch/diffusers fp32 timing of the full-size text-to-image latent networks, the counterpart of
`.build/release/onestep-latent-bench` (same configs, random weights, batch 1, 64x64 latents = 512x512 pixels).

    /work/venv/bin/python scripts/bench/t2i_pytorch.py NETWORK [--runs 2] [--threads 1] [--size 64]

NETWORK: sd-turbo-unet | sdxs-unet | sd-vae-decoder | taesd-decoder. One network per process so the peak RSS
is that network's. Prints build time, forward wall ms (first, best), the CPU ms of the best run and peak RSS.
"""
import argparse
import resource
import time

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

CONFIGS = {
    "sd-turbo-unet": (UNet2DConditionModel, dict(
        attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        layers_per_block=2, norm_num_groups=32, sample_size=64, use_linear_projection=True, in_channels=4, out_channels=4)),
    "sdxs-unet": (UNet2DConditionModel, dict(
        attention_head_dim=8, block_out_channels=[320, 640, 1280], cross_attention_dim=768,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, mid_block_type=None,
        in_channels=4, out_channels=4, norm_num_groups=32, sample_size=64, use_linear_projection=False)),
    "sd-vae-decoder": (AutoencoderKL, dict(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=768)),
    "taesd-decoder": (AutoencoderTiny, dict()),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("network", choices=sorted(CONFIGS))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cls, cfg = CONFIGS[a.network]
    t0 = time.perf_counter()
    model = cls(**cfg).eval()
    build = time.perf_counter() - t0
    s = a.size
    g = torch.Generator().manual_seed(1)
    if cls is UNet2DConditionModel:
        x = torch.randn((1, 4, s, s), generator=g)
        ehs = torch.randn((1, 77, cfg["cross_attention_dim"]), generator=g)
        run = lambda: model(x, torch.tensor([999.0]), ehs).sample
    else:
        z = torch.randn((1, 4, s, s), generator=g)
        run = lambda: model.decode(z).sample
    times, cpus = [], []
    with torch.inference_mode():
        for _ in range(max(1, a.runs)):
            c0, w0 = time.process_time(), time.perf_counter()
            run()
            times.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    best = min(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {torch.__version__} {a.network} latent {s}x{s} batch 1 threads {a.threads}: build {build:.1f} s, "
          f"forward first {times[0] * 1000:.0f} ms, best of {len(times)} {best * 1000:.0f} ms "
          f"(CPU {cpus[times.index(best)] * 1000:.0f} ms), peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()

"""PyTorch/diffusers counterpart of `onestep-distill bench`'s training step: the same default teacher model
(ModelExport.defaultTeacherConfig: UNet2DModel 16x16, block_out_channels 32/64/64, one resnet per level, attention at
the lowest level and in the mid block, 8 groups, head dim 32, 8 classes), the same batch (32), the same EDM loss
(Karras et al. 2022 Table 1 with c_noise = 250 ln sigma, as Teacher/EDMDenoiserLoss.swift), and Adam
(torch.optim.Adam, lr 2e-4, gradient norm clipped at 1, as Optim/Optimizer.swift's defaults).

    /work/venv/bin/python scripts/bench/train_pytorch.py [--threads 2] [--batch 32] [--steps 10] [--warmup 3]

Prints one line `pytorch: B img/s (T ms/step wall, C ms/step CPU)` per run plus the torch version, so
scripts/bench/train_vs_pytorch can parse it. Random weights and data (speed only).
"""
import argparse
import math
import resource
import time

import torch
from diffusers import UNet2DModel


def default_teacher(size, classes):
    # Matches Sources/OnestepTrain/Teacher/ModelExport.swift defaultTeacherConfig.
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=32,
        num_class_embeds=classes if classes > 0 else None)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1, help="timed runs of --steps steps each, one line each")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = default_teacher(a.size, a.classes).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.randn(a.batch, 3, a.size, a.size) * 0.5
    labels = torch.arange(a.batch) % a.classes if a.classes > 0 else None
    sd, p_mean, p_std = 0.5, -1.2, 1.2

    def step():
        # EDM denoiser loss (EDMDenoiserLoss.swift): ||F(c_in x; c_noise) - (x0 - c_skip x) / c_out||^2, mean.
        sigma = torch.exp(p_mean + p_std * torch.randn(a.batch)).view(-1, 1, 1, 1)
        x = x0 + sigma * torch.randn_like(x0)
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sigma ** 2 + sd ** 2).sqrt()
        c_noise = 250 * torch.log(sigma.view(-1))
        target = (x0 - c_skip * x) / c_out
        opt.zero_grad(set_to_none=False)
        f = model(c_in * x, c_noise, class_labels=labels).sample
        loss = ((f - target) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    print(f"torch {torch.__version__}, threads {a.threads}, batch {a.batch}, "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    for _ in range(a.runs):
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(a.steps):
            step()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        print(f"pytorch: {a.batch * a.steps / wall:.1f} img/s ({1000 * wall / a.steps:.1f} ms/step wall, "
              f"{1000 * cpu / a.steps:.1f} ms/step CPU)", flush=True)


if __name__ == "__main__":
    main()

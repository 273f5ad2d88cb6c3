#!/usr/bin/env python3
"""Does a student folder written by `onestep-distill student` load in diffusers, and give the same uint8 image for
a seed as `onestep-serve generate`?

  /work/venv/bin/python scripts/check-diffusers-load.py STUDENT_DIR [--serve .build/release/onestep-serve]
      [--seeds 0,1,2,3] [--steps 1]

For each seed (and class 0..K-1 in turn for a class-conditional student) it samples the folder in diffusers and
compares with the PNG `onestep-serve generate --model DIR --seed S --label L --steps N` writes. The folder's
scheduler_config.json decides how:
  CMStochasticIterativeScheduler (students of an EDM teacher): ConsistencyModelPipeline(UNet2DModel.from_pretrained,
    CMStochasticIterativeScheduler.from_pretrained) with torch.Generator().manual_seed(seed), output_type="np";
  LCMScheduler (students of a DDPM-family teacher): UNet2DModel.from_pretrained + LCMScheduler.from_pretrained in
    diffusers' pipeline loop written out (there is no class-conditional pixel LCM pipeline): one generator
    torch.Generator().manual_seed(seed) for the initial randn and each step's noise, set_timesteps(N),
    scale_model_input, unet(x, t, class_labels), step(..., generator).prev_sample, then (x / 2 + 0.5).clamp(0, 1)
    as the pipelines' output_type="np".
Both convert as diffusers' numpy_to_pil does (round(x * 255)). Prints per image: the number of differing uint8 values and the largest difference, then a summary;
exit status 1 if any image differs by more than --max-diff (default 1: float32 rounding in another operation
order can move a value across a .5 boundary).
"""
import argparse, os, subprocess, sys, tempfile
import numpy as np
import torch
import json
from diffusers import UNet2DModel, CMStochasticIterativeScheduler, ConsistencyModelPipeline, LCMScheduler
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("student")
ap.add_argument("--serve", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".build", "release", "onestep-serve"))
ap.add_argument("--seeds", default="0,1,2,3")
ap.add_argument("--steps", type=int, default=1)
ap.add_argument("--max-diff", type=int, default=1)
a = ap.parse_args()

torch.set_num_threads(1)
unet = UNet2DModel.from_pretrained(a.student).float().eval()
scheduler_class = json.load(open(os.path.join(a.student, "scheduler_config.json")))["_class_name"]
k = unet.config.num_class_embeds
if scheduler_class == "LCMScheduler":
    sched = LCMScheduler.from_pretrained(a.student)
    betas = (f"trained_betas ({len(sched.config.trained_betas)})" if sched.config.trained_betas is not None
             else f"{sched.config.beta_schedule} betas {sched.config.beta_start}..{sched.config.beta_end}")
    detail = (f"{sched.config.prediction_type}, num_train_timesteps {sched.config.num_train_timesteps}, {betas}, "
              f"original_inference_steps {sched.config.original_inference_steps}")

    @torch.no_grad()
    def sample(seed, label):
        """diffusers' pipeline loop (as LatentConsistencyModelPipeline / DDPMPipeline run it) for one image."""
        g = torch.Generator().manual_seed(seed)
        sched.set_timesteps(a.steps)
        c, s = unet.config.in_channels, unet.config.sample_size
        x = torch.randn((1, c, s, s), generator=g) * sched.init_noise_sigma
        labels = None if label is None else torch.tensor([label])
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t, class_labels=labels).sample
            x = sched.step(out, t, x, generator=g).prev_sample
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
else:
    sched = CMStochasticIterativeScheduler.from_pretrained(a.student)
    detail = f"sigma {sched.config.sigma_min}..{sched.config.sigma_max}"
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)

    def sample(seed, label):
        return pipe(batch_size=1, class_labels=None if label is None else torch.tensor([label]), num_inference_steps=a.steps,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
print(f"diffusers loaded {a.student}: UNet2DModel {sum(p.numel() for p in unet.parameters())} parameters, "
      f"{type(sched).__name__} {detail}, {'classes ' + str(k) if k else 'unconditional'}, {a.steps} step(s)")
worst, total_diff, n = 0, 0, 0
with tempfile.TemporaryDirectory() as tmp:
    for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
        label = i % k if k else None
        out = sample(seed, label)
        ref = (out * 255).round().astype("uint8")  # diffusers numpy_to_pil
        png = os.path.join(tmp, f"{seed}.png")
        cmd = [a.serve, "generate", "--model", a.student, "--seed", str(seed), "--steps", str(a.steps), "--out", png]
        if label is not None:
            cmd += ["--label", str(label)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ours = np.asarray(Image.open(png).convert("RGB" if ref.shape[-1] == 3 else "L"))
        if ours.ndim == 2:
            ours = ours[..., None]
        d = np.abs(ours.astype(int) - ref.astype(int))
        worst, total_diff, n = max(worst, int(d.max())), total_diff + int((d > 0).sum()), n + d.size
        print(f"seed {seed} label {label}: {int((d > 0).sum())} of {d.size} uint8 values differ, largest difference {int(d.max())}")
print(f"summary: {total_diff} of {n} values differ over {len(a.seeds.split(','))} images, largest difference {worst}")
sys.exit(0 if worst <= a.max_diff else 1)

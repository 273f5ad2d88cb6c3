#!/usr/bin/env python3
"""Does a consistency student folder written by `onestep-distill student` load in diffusers, and give the same
uint8 image for a seed as `onestep-serve generate`?

  /work/venv/bin/python scripts/check-diffusers-load.py STUDENT_DIR [--serve .build/release/onestep-serve]
      [--seeds 0,1,2,3] [--steps 1]

For each seed (and class 0..K-1 in turn for a class-conditional student) it runs diffusers'
ConsistencyModelPipeline(UNet2DModel.from_pretrained(DIR), CMStochasticIterativeScheduler.from_pretrained(DIR))
with torch.Generator().manual_seed(seed), output_type="np", converts as diffusers' numpy_to_pil does
(round(x * 255)), and compares with the PNG `onestep-serve generate --model DIR --seed S --label L --steps N`
writes. Prints per image: the number of differing uint8 values and the largest difference, then a summary;
exit status 1 if any image differs by more than --max-diff (default 1: float32 rounding in another operation
order can move a value across a .5 boundary).
"""
import argparse, os, subprocess, sys, tempfile
import numpy as np
import torch
from diffusers import UNet2DModel, CMStochasticIterativeScheduler, ConsistencyModelPipeline
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
sched = CMStochasticIterativeScheduler.from_pretrained(a.student)
pipe = ConsistencyModelPipeline(unet=unet, scheduler=sched)
pipe.set_progress_bar_config(disable=True)
k = unet.config.num_class_embeds
print(f"diffusers loaded {a.student}: UNet2DModel {sum(p.numel() for p in unet.parameters())} parameters, "
      f"{type(sched).__name__} sigma {sched.config.sigma_min}..{sched.config.sigma_max}, "
      f"{'classes ' + str(k) if k else 'unconditional'}")
worst, total_diff, n = 0, 0, 0
with tempfile.TemporaryDirectory() as tmp:
    for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
        label = i % k if k else None
        out = pipe(batch_size=1, class_labels=None if label is None else torch.tensor([label]), num_inference_steps=a.steps,
                   generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
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

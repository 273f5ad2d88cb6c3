#!/usr/bin/env python3
"""How good is a DDPM-family teacher's one-step x0 prediction at each timestep? (docs/DISTILLATION-METHODS.md,
"The students' form": why LCM-form students of a linear-beta teacher stop at K = 700.)

For 8 held-out images per class it noises x0 to t with diffusers' DDPMScheduler alphas_cumprod, runs the teacher's
UNet2DModel (epsilon prediction) and prints the RMSE of eps and of x0_pred = (x_t - sqrt(1 - abar) eps) / sqrt(abar),
whose error is the eps error times sqrt(1 - abar) / sqrt(abar) = sigma_t, beside the RMSE of the data's mean image
(what a perfect x0 prediction tends to as abar -> 0).

  /work/venv/bin/python scripts/eval/ddpm_x0_error.py [--teacher models/shapes16-ddpm] [--data /tmp/onestep-shapes16-eval]
"""
import argparse, glob, os
import numpy as np, torch
from PIL import Image
from diffusers import UNet2DModel, DDPMScheduler

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
ap = argparse.ArgumentParser()
ap.add_argument("--teacher", default=os.path.join(ROOT, "models", "shapes16-ddpm"))
ap.add_argument("--data", default="/tmp/onestep-shapes16-eval", help="class folders of PNGs (onestep-distill data --seed 1)")
ap.add_argument("--timesteps", default="999,950,900,850,800,750,700,600,500")
a = ap.parse_args()
torch.manual_seed(0); torch.set_num_threads(1)
unet = UNet2DModel.from_pretrained(a.teacher, subfolder="unet").eval()
sched = DDPMScheduler.from_pretrained(a.teacher, subfolder="scheduler")
assert sched.config.prediction_type == "epsilon", "written for epsilon teachers"
classes = sorted(glob.glob(os.path.join(a.data, "*", "")))
xs, ls = [], []
for k, c in enumerate(classes):
    for f in sorted(glob.glob(c + "*.png"))[:8]:
        xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1); ls.append(k)
x0 = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2); lab = torch.tensor(ls) if unet.config.num_class_embeds else None
ac = sched.alphas_cumprod
mean = x0.mean(0, keepdim=True)
print(f"{len(x0)} images; RMSE of the mean image: {(mean - x0).pow(2).mean().sqrt():.3f}")
print("| t | alphas_cumprod | sigma_t (x0 error / eps error) | eps RMSE | x0_pred RMSE | x0_pred clipped to [-1, 1] RMSE |")
print("|---:|---:|---:|---:|---:|---:|")
with torch.no_grad():
    for t in (int(s) for s in a.timesteps.split(",")):
        abar = ac[t]; e = torch.randn_like(x0)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * e
        ep = unet(xt, torch.full((len(x0),), t), class_labels=lab).sample
        p = (xt - (1 - abar).sqrt() * ep) / abar.sqrt()
        print(f"| {t} | {abar:.2e} | {((1 - abar) / abar).sqrt():.1f} | {(ep - e).pow(2).mean().sqrt():.4f} | "
              f"{(p - x0).pow(2).mean().sqrt():.3f} | {(p.clamp(-1, 1) - x0).pow(2).mean().sqrt():.3f} |")

#!/usr/bin/env python3
"""Golden vectors for DiscreteDDPMTeacher (Sources/OnestepTrain/Distill/DDPMTeacher.swift): a diffusers UNet2DModel
with a DDPM-family scheduler's alphas_cumprod, wrapped as an EDM denoiser D(x; sigma) the way k-diffusion's
external.py does it (DiscreteSchedule.sigma_to_t, DiscreteEpsDDPMDenoiser, DiscreteVDDPMDenoiser; sigma_data = 1):
    sigmas_t = sqrt((1 - abar_t) / abar_t);  t(sigma) = linear interpolation of the index in log sigma (clamped)
    eps:  D = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))
    v:    D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v(x / sqrt(sigma^2 + 1), t(sigma))
The UNet forward is diffusers'; the wrapper maths is k-diffusion's, restated here in torch (k_diffusion is not in
the venv). Run with /work/venv/bin/python from the repository root. Writes
Tests/Golden/safetensors/ddpm_teacher/{gray,tiny}.safetensors (a few KB each).
  gray: Tests/Golden/safetensors/ddpm_gray_fp16 (unconditional, 1x8x8), DDIMScheduler squaredcos_cap_v2
  tiny: /work/shared/golden/ddpm_tiny (10 classes, 3x16x16), DDPMScheduler linear 1e-4..0.02 (google/ddpm-cifar10-32)
"""
import json, os, torch
from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "Tests", "Golden", "safetensors", "ddpm_teacher")
torch.set_num_threads(1)


def sigma_to_t(sigma, log_sigmas):  # k-diffusion external.py DiscreteSchedule.sigma_to_t, quantize=False
    log_sigma = sigma.log()
    dists = log_sigma - log_sigmas[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return (1 - w) * low_idx + w * high_idx


def make(name, unet, scheduler, labels, seed):
    ac = scheduler.alphas_cumprod.float()
    sigmas_sched = ((1 - ac) / ac) ** 0.5
    log_sigmas = sigmas_sched.log()
    c, s = unet.config.in_channels, unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    # below the teacher's smallest sigma (t clamps to 0), between grid points, mid range, above its largest
    sigma = torch.tensor([float(sigmas_sched[0]) * 0.5, 0.0123, 0.7, 3.3, 80.0, float(sigmas_sched[-1]) * 2])
    b = sigma.shape[0]
    x0 = torch.rand((b, c, s, s), generator=g) * 2 - 1
    x = x0 + sigma[:, None, None, None] * torch.randn((b, c, s, s), generator=g)
    t = sigma_to_t(sigma, log_sigmas)
    c_in = 1 / (sigma ** 2 + 1) ** 0.5
    with torch.no_grad():
        out = unet(x * c_in[:, None, None, None], t, class_labels=labels).sample
    sb = sigma[:, None, None, None]
    d_eps = x - sb * out
    d_v = x / (sb ** 2 + 1) - sb / (sb ** 2 + 1) ** 0.5 * out
    tensors = {"x": x.contiguous(), "sigma": sigma, "t": t.float(), "d_eps": d_eps.contiguous(), "d_v": d_v.contiguous(),
               "alphas_cumprod": ac.contiguous()}
    if labels is not None:
        tensors["class_labels"] = labels
    save_file(tensors, os.path.join(OUT, name + ".safetensors"),
              metadata={"scheduler_config": json.dumps(dict(scheduler.config)), "source": "scripts/golden/make_ddpm_teacher_golden.py"})
    print(name, "t =", [round(float(v), 4) for v in t], "max |d_eps|", float(d_eps.abs().max()))


os.makedirs(OUT, exist_ok=True)
gray = UNet2DModel.from_pretrained(os.path.join(ROOT, "Tests", "Golden", "safetensors", "ddpm_gray_fp16"), variant="fp16").float().eval()
make("gray", gray, DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), None, 1)
tiny = UNet2DModel.from_pretrained("/work/shared/golden/ddpm_tiny").float().eval()
make("tiny", tiny, DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
     torch.tensor([0, 3, 9, 1, 5, 2]), 2)

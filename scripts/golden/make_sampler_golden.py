#!/usr/bin/env python3
"""Golden vectors for Onestep's samplers, made with diffusers (run with /work/venv/bin/python).

Writes Tests/OnestepCoreTests/Golden/:
  ddpm_cifar_tiny/   a small UNet2DModel with google/ddpm-cifar10-32 conventions (flip_sin_to_cos false,
                     freq_shift 1, downsample_padding 0, norm_eps 1e-6), briefly trained (eps-prediction, DDPM loss)
                     on smooth coloured 8x8 images so its samples are images, not saturated noise; saved as a
                     DDPMPipeline (model_index.json, unet/, scheduler/ with the cifar10 DDPMScheduler config).
  sampler_golden.safetensors
     for each case K of __metadata__["pipeline_cases"] (JSON: name, scheduler config, steps, seed, eta, loop):
       image_K (H, W, C) float in [0, 1] = the pipeline's output_type="np" image, uint8_K = round(image * 255).
       loop "DDIMPipeline" / "DDPMPipeline": diffusers' own pipeline with generator=torch.Generator().manual_seed(seed)
       (the DDPMPipeline loop runs any scheduler: unet(x, t) then scheduler.step(out, t, x, generator=...));
       loop "generic": the StableDiffusion-style loop (randn * init_noise_sigma, scale_model_input, step).
     for each case K of __metadata__["step_cases"] (scheduler configs of the text-to-image students, standalone):
       steps_K_timesteps (K,), steps_K_init_sigma (1,), steps_K_x_in (K, 1, 4, 8, 8) the scaled model inputs,
       steps_K_out (K, 1, 4, 8, 8) the fake network outputs fed back (torch.randn from seed 1000 + k),
       steps_K_prev (K, 1, 4, 8, 8) the sample after each step. Latents and step noise from manual_seed(seed).
     alphas_cumprod_<schedule> for the beta schedules used.
"""
import json, os, sys
import numpy as np
import torch
from safetensors.torch import save_file
import diffusers
from diffusers import (UNet2DModel, DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       EulerAncestralDiscreteScheduler, LCMScheduler, TCDScheduler, DDIMPipeline, DDPMPipeline)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "OnestepCoreTests", "Golden")
SHARED = "/work/shared/golden"
torch.set_num_threads(1)

# google/ddpm-cifar10-32 scheduler config (older files say GaussianDDPMScheduler and "timesteps").
CIFAR_SCHEDULER = {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
                   "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}


def make_unet():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=None,
                       flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6)
    # Brief DDPM training on smooth coloured images (gradients), so sampling gives images with mid-range pixels.
    g = torch.Generator().manual_seed(1)
    sched = DDPMScheduler(**CIFAR_SCHEDULER)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    for it in range(400):
        c = torch.rand(32, 3, 1, 1, generator=g) * 1.6 - 0.8
        d = torch.rand(32, 3, 1, 1, generator=g) * 0.4 - 0.2
        x0 = (c + d * (xx + yy)).clamp(-1, 1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (32,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(); loss.backward(); opt.step()
    print("final training loss", float(loss))
    return unet.eval()


def cfg_of(s):  # the config as save_config writes it (with _class_name)
    return json.loads(s.to_json_string())


def np_image(x):  # what output_type="np" does
    return (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()[0]


def generic_loop(unet, scheduler, steps, seed, eta=None):
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((1, 3, 8, 8), generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        kw = {"eta": eta} if eta is not None else {}
        x = scheduler.step(out, t, x, generator=g, **kw).prev_sample
    return np_image(x)


def main():
    pipe_dir = os.path.join(OUT, "ddpm_cifar_tiny")
    unet = make_unet()
    ddpm = DDPMScheduler(**CIFAR_SCHEDULER)
    DDPMPipeline(unet=unet, scheduler=ddpm).save_pretrained(pipe_dir)
    tensors, cases = {}, []

    def add(name, cfg, steps, seed, loop, image, eta=0.0):
        tensors["image_" + name] = torch.from_numpy(np.ascontiguousarray(image)).float()
        tensors["uint8_" + name] = torch.from_numpy((image * 255).round().astype(np.uint8))
        cases.append({"name": name, "scheduler": cfg | {"_class_name": cfg["_class_name"]}, "steps": steps, "seed": seed, "eta": eta, "loop": loop})

    base = dict(ddpm.config)
    with torch.no_grad():
        for seed in (0, 3):
            for steps in (4, 10):
                s = DDIMScheduler.from_config(base)
                img = DDIMPipeline(unet=unet, scheduler=s)(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                                                           eta=0.0, output_type="np").images[0]
                add(f"ddim{steps}_s{seed}", cfg_of(s), steps, seed, "DDIMPipeline", img)
                s = DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2, thresholding=True)
                img = DDPMPipeline(unet=unet, scheduler=s)(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                                                           output_type="np").images[0]
                add(f"dpmpp2m{steps}_s{seed}", cfg_of(s), steps, seed, "DDPMPipeline", img)
            s = DDIMScheduler.from_config(base)
            img = DDIMPipeline(unet=unet, scheduler=s)(generator=torch.Generator().manual_seed(seed), num_inference_steps=10,
                                                       eta=1.0, output_type="np").images[0]
            add(f"ddim10_eta1_s{seed}", cfg_of(s), 10, seed, "DDIMPipeline", img, eta=1.0)
            s = DDPMScheduler.from_config(base)
            img = DDPMPipeline(unet=unet, scheduler=s)(generator=torch.Generator().manual_seed(seed), num_inference_steps=10,
                                                       output_type="np").images[0]
            add(f"ddpm10_s{seed}", cfg_of(s), 10, seed, "DDPMPipeline", img)
        # Other prediction types and samplers on the same network (the numbers, not the meaning, are checked).
        for pred in ("epsilon", "v_prediction", "sample"):
            s = EulerDiscreteScheduler.from_config(base, prediction_type=pred)
            add(f"euler10_{pred}", cfg_of(s), 10, 5, "generic", generic_loop(unet, s, 10, 5))
            s = DDIMScheduler.from_config(base, prediction_type=pred, clip_sample=False)
            add(f"ddim4_{pred}", cfg_of(s), 4, 5, "generic", generic_loop(unet, s, 4, 5, eta=0.0))
        s = DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2, thresholding=True,
                                                    timestep_spacing="trailing")
        add("dpmpp2m20_trailing", cfg_of(s), 20, 1, "generic", generic_loop(unet, s, 20, 1))
        s = EulerAncestralDiscreteScheduler.from_config(base)
        add("euler_a10", cfg_of(s), 10, 2, "generic", generic_loop(unet, s, 10, 2))

    # Text-to-image students' schedulers, standalone with a fake network (recorded outputs fed back).
    step_cases = []

    def steps_case(name, scheduler, steps, seed, eta=None):
        g = torch.Generator().manual_seed(seed)
        scheduler.set_timesteps(steps)
        init = float(scheduler.init_noise_sigma)
        x = torch.randn((1, 4, 8, 8), generator=g) * scheduler.init_noise_sigma
        xs, outs, prevs = [], [], []
        for k, t in enumerate(scheduler.timesteps):
            xin = scheduler.scale_model_input(x, t)
            out = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1000 + k))
            kw = {"eta": eta} if eta is not None else {}
            x = scheduler.step(out, t, x, generator=g, **kw).prev_sample
            xs.append(xin); outs.append(out); prevs.append(x)
        tensors[f"steps_{name}_timesteps"] = scheduler.timesteps.float().clone()
        tensors[f"steps_{name}_init_sigma"] = torch.tensor([init], dtype=torch.float32)
        tensors[f"steps_{name}_x_in"] = torch.stack(xs).float()
        tensors[f"steps_{name}_out"] = torch.stack(outs).float()
        tensors[f"steps_{name}_prev"] = torch.stack(prevs).float()
        step_cases.append({"name": name, "scheduler": cfg_of(scheduler), "steps": steps, "seed": seed,
                           "eta": 0.0 if eta is None else eta})

    def shared_cfg(folder):
        with open(os.path.join(SHARED, folder, "scheduler", "scheduler_config.json")) as f:
            return json.load(f)

    turbo = shared_cfg("sd_turbo_tiny")
    for spacing in ("trailing", "leading", "linspace"):
        for steps in (1, 2, 4):
            steps_case(f"euler_{spacing}_{steps}", EulerDiscreteScheduler.from_config(turbo, timestep_spacing=spacing), steps, 7)
    steps_case("euler_v_trailing_4", EulerDiscreteScheduler.from_config(turbo, prediction_type="v_prediction"), 4, 7)
    steps_case("euler_a_trailing_4", EulerAncestralDiscreteScheduler.from_config(turbo), 4, 8)
    steps_case("euler_a_leading_3", EulerAncestralDiscreteScheduler.from_config(turbo, timestep_spacing="leading"), 3, 8)
    lcm = shared_cfg("lcm_tiny")
    for steps in (1, 2, 4, 8):
        steps_case(f"lcm_{steps}", LCMScheduler.from_config(lcm), steps, 9)
    tcd = shared_cfg("tcd_tiny")
    for steps, eta in ((1, 0.3), (4, 0.3), (4, 0.0), (6, 0.7)):
        steps_case(f"tcd_{steps}_eta{int(eta * 10)}", TCDScheduler.from_config(tcd), steps, 10, eta=eta)
    cfgv = shared_cfg("cfg_v_tiny")
    for steps in (1, 2, 4):
        steps_case(f"ddim_trailing_v_{steps}", DDIMScheduler.from_config(cfgv), steps, 11, eta=0.0)
    steps_case("ddim_trailing_v_eta05_4", DDIMScheduler.from_config(cfgv), 4, 11, eta=0.5)

    for name, s in (("linear", DDPMScheduler(**CIFAR_SCHEDULER)), ("scaled_linear", EulerDiscreteScheduler.from_config(turbo)),
                    ("squaredcos_cap_v2", DDIMScheduler(beta_schedule="squaredcos_cap_v2"))):
        tensors["alphas_cumprod_" + name] = s.alphas_cumprod.float().clone()

    meta = {"pipeline_cases": json.dumps(cases), "step_cases": json.dumps(step_cases),
            "made_with": f"torch {torch.__version__}, diffusers {diffusers.__version__}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "sampler_golden.safetensors"), metadata=meta)
    print("wrote", len(cases), "pipeline cases and", len(step_cases), "step cases")
    for c in cases[:4]:
        u = tensors["uint8_" + c["name"]].numpy()
        print(c["name"], "uint8 mean", u.mean(), "saturated fraction", ((u == 0) | (u == 255)).mean())


if __name__ == "__main__":
    main()

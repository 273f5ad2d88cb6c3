"""Golden vectors for LoRA fusing and the TAESD decoder override, made with diffusers 0.42.1 + peft 0.21 (CPU, fp32).

For each base pipeline of ../shared/golden (T2I_README.md):
  1. attach a random LoRA with peft: UNet rank 4 on to_q/to_k/to_v/to_out.0, proj_in/proj_out, ff.net.0.proj/ff.net.2,
     the resnets' conv1 (3x3) and conv_shortcut (1x1), time_emb_proj and time_embedding.linear_1, lora_alpha 8 with an
     alpha_pattern entry (alpha 2) for one module; text encoder rank 4 on q/k/v/out_proj and fc1, lora_alpha 6;
  2. save it as diffusers writes it (StableDiffusionPipeline.save_lora_weights: unet.<module>.lora_A/B.weight,
     text_encoder.<module>..., PEFT config in __metadata__ lora_adapter_metadata) -> lora_diffusers.safetensors,
     and converted to kohya keys (lora_unet_<module with _>.lora_down/lora_up.weight + .alpha, lora_te_...) ->
     lora_kohya.safetensors; both are reloaded by diffusers and must give the same fused UNet output;
  3. reload the base pipeline, pipe.load_lora_weights(lora_diffusers); pipe.fuse_lora(lora_scale=SCALE), and record
     in io.safetensors (T2I_README.md's names, so `onestep-serve run-pipeline --lora FILE:SCALE` reads it as input):
     prompts -> prompt_input_ids, prompt_embeds; unet_x, unet_t, unet_encoder_hidden_states [, unet_timestep_cond]
     -> unet_out; one pipeline case -> image_K, uint8_K. __metadata__ lora_scale says SCALE.
The TAESD case: sd_turbo_tiny with its AutoencoderKL swapped for sdxs_tiny's AutoencoderTiny (pipe.vae = ..., as
FastSD CPU does); io.safetensors holds vae_latents -> vae_decoded and pipeline cases.

The scheduler-override case: sd_turbo_tiny + the PEFT-format LoRA at 0.7 with TCDScheduler.from_config(its Euler config),
eta 0.3 (Hyper-SD / TCD usage), 1 and 4 steps.

    /work/venv/bin/python scripts/golden/make_lora_golden.py ../shared/golden Tests/OnestepCoreTests/Golden/lora [scheduler]
"""
import json, os, sys
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from diffusers import AutoencoderTiny, StableDiffusionPipeline, TCDScheduler
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from diffusers.utils import convert_state_dict_to_diffusers

SCALE = 0.7
PROMPTS = ["a photo of a cat", "A RED Star on a BLUE background!!", ""]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv_shortcut", "time_emb_proj", "linear_1"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]
CASES = {"sd_turbo_tiny": dict(steps=2, guidance=0.0), "lcm_tiny": dict(steps=2, guidance=8.5)}


def load(golden, case):
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(golden, case), safety_checker=None,
                                                   requires_safety_checker=False).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def randomize_lora(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)


def to_kohya(sd, metadata):
    """diffusers/PEFT keys -> kohya keys with an .alpha per module (alpha from the PEFT config, as kohya stores it)."""
    meta = json.loads(metadata["lora_adapter_metadata"])
    out = {}
    for k, v in sd.items():
        comp, rest = k.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        # kohya names the text encoder's modules from CLIPTextModel's text_model (transformers 4.x layout)
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}[comp]
        name = prefix + module.replace(".", "_")
        out[name + (".lora_down.weight" if kind.startswith("A") else ".lora_up.weight")] = v
        alpha = meta[comp + ".alpha_pattern"].get(module, meta[comp + ".lora_alpha"])
        out[name + ".alpha"] = torch.tensor(float(alpha))
    return out


def run(pipe, io_in, c, cond):
    io = {}
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        io["prompt_input_ids"] = ids
        io["prompt_embeds"] = pipe.text_encoder(ids)[0].contiguous()
        kw = {"timestep_cond": cond} if cond is not None else {}
        io["unet_out"] = pipe.unet(io_in["unet_x"], io_in["unet_t"], io_in["unet_encoder_hidden_states"], **kw).sample.contiguous()
        img = pipe("a photo of a cat", num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                   generator=torch.Generator().manual_seed(42), output_type="np").images[0]
    key = f"seed42_steps{c['steps']}"
    io["image_" + key] = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32)))
    io["uint8_" + key] = torch.from_numpy(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
    meta = {key: {"prompt": "a photo of a cat", "seed": "42", "steps": str(c["steps"]), "guidance_scale": str(c["guidance"]),
                  "negative_prompt": "", "eta": "0.0"}}
    return io, meta


def make_lora(golden, out, case):
    c = CASES[case]
    d = os.path.join(out, case)
    os.makedirs(d, exist_ok=True)
    io_in = load_file(os.path.join(golden, case, "io.safetensors"))
    cond = io_in.get("unet_timestep_cond")
    gen = torch.Generator().manual_seed(2024)

    pipe = load(golden, case)
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    ucfg = LoraConfig(r=4, lora_alpha=8, alpha_pattern={first: 2}, init_lora_weights=False, target_modules=UNET_TARGETS)
    tcfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights=False, target_modules=TE_TARGETS)
    pipe.unet.add_adapter(ucfg)
    # transformers 5.24's add_adapter wants peft >= 0.22; peft's own injection is what it calls.
    inject_adapter_in_model(tcfg, pipe.text_encoder)
    randomize_lora(pipe.unet, gen)
    randomize_lora(pipe.text_encoder, gen)
    usd = get_peft_model_state_dict(pipe.unet)
    tsd = get_peft_model_state_dict(pipe.text_encoder, adapter_name="default")
    # PEFT keys (lora_A / lora_B), what save_lora_weights writes from a peft state dict ...
    StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=usd, text_encoder_lora_layers=tsd,
                                              unet_lora_adapter_metadata=ucfg.to_dict(),
                                              text_encoder_lora_adapter_metadata=tcfg.to_dict(),
                                              weight_name="lora_diffusers.safetensors")
    # ... and the older diffusers keys the training scripts write after convert_state_dict_to_diffusers
    # (unet: .lora.down/.lora.up, text encoder attention: .lora_linear_layer.down/.up)
    StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=convert_state_dict_to_diffusers(usd),
                                              text_encoder_lora_layers=convert_state_dict_to_diffusers(tsd),
                                              unet_lora_adapter_metadata=ucfg.to_dict(),
                                              text_encoder_lora_adapter_metadata=tcfg.to_dict(),
                                              weight_name="lora_diffusers_old.safetensors")
    path = os.path.join(d, "lora_diffusers.safetensors")
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    sd = load_file(path)
    save_file(to_kohya(sd, metadata), os.path.join(d, "lora_kohya.safetensors"))

    # The reference: the adapted pipeline itself, fused in memory by PEFT (scale_layer(SCALE) + merge, what
    # fuse_lora does), before any save and reload.
    pipe.fuse_lora(lora_scale=SCALE)
    ref, meta = run(pipe, io_in, c, cond)
    for fmt in ["diffusers", "diffusers_old", "kohya"]:
        p = load(golden, case)
        p.load_lora_weights(d, weight_name=f"lora_{fmt}.safetensors")
        p.fuse_lora(lora_scale=SCALE)
        got = run(p, io_in, c, cond)[0]
        errs = {k: float((ref[k].double() - got[k].double()).norm() / max(ref[k].double().norm(), 1e-30)) for k in ref}
        print(f"{case}: diffusers' reload of lora_{fmt} vs the in-memory fused LoRA: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    a = ref
    base = run(load(golden, case), io_in, c, cond)[0]
    rel = (a["unet_out"] - base["unet_out"]).norm() / base["unet_out"].norm()
    print(f"{case} LoRA changes unet_out by rel L2 {rel:.3f}, prompt_embeds by "
          f"{((a['prompt_embeds'] - base['prompt_embeds']).norm() / base['prompt_embeds'].norm()):.3f}")
    io = ref
    io.update(unet_x=io_in["unet_x"], unet_t=io_in["unet_t"], unet_encoder_hidden_states=io_in["unet_encoder_hidden_states"])
    if cond is not None:
        io["unet_timestep_cond"] = cond
    save_file(io, os.path.join(d, "io.safetensors"),
              metadata={"cases": json.dumps(meta), "prompts": json.dumps(PROMPTS), "lora_scale": str(SCALE)})
    print(case, {k: tuple(v.shape) for k, v in io.items()})


def make_taesd(golden, out):
    d = os.path.join(out, "taesd_on_sd_turbo")
    os.makedirs(d, exist_ok=True)
    pipe = load(golden, "sd_turbo_tiny")
    pipe.vae = AutoencoderTiny.from_pretrained(os.path.join(golden, "sdxs_tiny", "vae")).to(torch.float32)
    gen = torch.Generator().manual_seed(77)
    io, meta = {}, {}
    with torch.no_grad():
        z = torch.randn(2, 4, 8, 8, generator=gen)
        io.update(vae_latents=z, vae_decoded=pipe.vae.decode(z).sample.contiguous())
        for steps in (1, 2):
            img = pipe("a red star on a blue background", num_inference_steps=steps, guidance_scale=0.0,
                       generator=torch.Generator().manual_seed(7), output_type="np").images[0]
            key = f"seed7_steps{steps}"
            io["image_" + key] = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32)))
            io["uint8_" + key] = torch.from_numpy(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
            meta[key] = {"prompt": "a red star on a blue background", "seed": "7", "steps": str(steps), "guidance_scale": "0.0",
                         "negative_prompt": "", "eta": "0.0"}
    save_file(io, os.path.join(d, "io.safetensors"), metadata={"cases": json.dumps(meta)})
    print("taesd_on_sd_turbo", {k: tuple(v.shape) for k, v in io.items()})


def make_scheduler_override(golden, out):
    """Hyper-SD / TCD usage: sd_turbo_tiny (EulerDiscreteScheduler) + the LoRA above at 0.7, run with
    pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config) and eta 0.3 (what --scheduler TCDScheduler does)."""
    d = os.path.join(out, "tcd_lora_on_sd_turbo")
    os.makedirs(d, exist_ok=True)
    pipe = load(golden, "sd_turbo_tiny")
    # the PEFT file: diffusers reloads it exactly (not so the kohya file, see docs/TEXT_TO_IMAGE.md)
    pipe.load_lora_weights(os.path.join(out, "sd_turbo_tiny"), weight_name="lora_diffusers.safetensors")
    pipe.fuse_lora(lora_scale=SCALE)
    pipe.scheduler = TCDScheduler.from_config(pipe.scheduler.config)
    io, meta = {}, {}
    with torch.no_grad():
        for steps in (1, 4):
            img = pipe("a photo of a cat", num_inference_steps=steps, guidance_scale=0.0, eta=0.3,
                       generator=torch.Generator().manual_seed(3), output_type="np").images[0]
            key = f"seed3_steps{steps}"
            io["image_" + key] = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32)))
            io["uint8_" + key] = torch.from_numpy(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
            meta[key] = {"prompt": "a photo of a cat", "seed": "3", "steps": str(steps), "guidance_scale": "0.0",
                         "negative_prompt": "", "eta": "0.3"}
    save_file(io, os.path.join(d, "io.safetensors"), metadata={"cases": json.dumps(meta), "lora_scale": str(SCALE),
                                                               "scheduler": "TCDScheduler"})
    print("tcd_lora_on_sd_turbo", {k: tuple(v.shape) for k, v in io.items()})


if __name__ == "__main__":
    golden, out = sys.argv[1], sys.argv[2]
    only = sys.argv[3:]  # e.g. "scheduler": only that case (the LoRA files of the others are kept)
    if not only:
        for case in CASES:
            make_lora(golden, out, case)
        make_taesd(golden, out)
    make_scheduler_override(golden, out)

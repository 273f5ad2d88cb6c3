"""UNet2DConditionModel outputs at latent sizes not divisible by the UNet's overall upsampling factor (the
`upsample_size` path of diffusers' forward), for Tests/OnestepCoreTests/LatentGoldenTests.swift.

Uses the random-weight UNets of ../shared/golden (T2I_README.md). Run from the repository root:
    /work/venv/bin/python scripts/golden/make_latent_odd_golden.py [GOLDEN_DIR]
Writes Tests/OnestepCoreTests/Golden/unet_odd_sizes.safetensors: for each folder F and size (H, W),
F_HxW_x (1, 4, H, W), F_HxW_t (1,), F_HxW_ehs (1, 77, D), F_HxW_out (1, 4, H, W).
"""
import sys
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

golden = sys.argv[1] if len(sys.argv) > 1 else "../shared/golden"
out = {}
g = torch.Generator().manual_seed(1234)
for folder, sizes in [("sd_turbo_tiny", [(10, 10), (9, 11)]), ("sdxs_tiny", [(6, 10)]), ("lcm_tiny", [(7, 5)])]:
    unet = UNet2DConditionModel.from_pretrained(f"{golden}/{folder}/unet").eval()
    d = unet.config.cross_attention_dim
    for h, w in sizes:
        key = f"{folder}_{h}x{w}"
        x = torch.randn((1, 4, h, w), generator=g)
        t = torch.tensor([500.0])
        ehs = torch.randn((1, 77, d), generator=g)
        kwargs = {}
        if unet.config.time_cond_proj_dim:
            cond = torch.randn((1, unet.config.time_cond_proj_dim), generator=g)
            kwargs["timestep_cond"] = cond
            out[key + "_cond"] = cond
        with torch.no_grad():
            y = unet(x, t, ehs, **kwargs).sample
        out.update({key + "_x": x, key + "_t": t, key + "_ehs": ehs, key + "_out": y})
save_file({k: v.contiguous() for k, v in out.items()}, "Tests/OnestepCoreTests/Golden/unet_odd_sizes.safetensors",
          metadata={"made_by": "scripts/golden/make_latent_odd_golden.py", "torch": torch.__version__})
print("wrote", len(out), "tensors")

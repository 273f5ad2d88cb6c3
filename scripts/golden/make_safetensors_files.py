#!/usr/bin/env python3
"""Writes the safetensors test files of Tests/Golden/safetensors with the reference `safetensors` package
(and diffusers for the variant model), so the Swift reader is checked against files it did not write.

  /work/venv/bin/python scripts/golden/make_safetensors_files.py [--golden ../shared/golden]

dtypes.safetensors: for each dtype the reader converts, a tensor `X_<dtype>` and the exact values it must read as,
  `X_<dtype>_expect` (F64 for floats: every F16/BF16/F32 value is exact in F64; I64 for integers).
ddpm_gray_fp16/: golden ddpm_gray saved by diffusers with save_pretrained(variant="fp16") (config.json +
  diffusion_pytorch_model.fp16.safetensors).
"""
import argparse, os
import torch
from safetensors.torch import save_file

ap = argparse.ArgumentParser()
ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "../../../../shared/golden"))
ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../Tests/Golden/safetensors"))
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)

g = torch.Generator().manual_seed(16)
base = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 3
# Values that exercise rounding, subnormals, signed zero and the extremes of each format.
special = torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, 6.0e-8, 1.0e-40, 3.0e38, 1 / 3], dtype=torch.float64)
t = {}
for name, dt in [("F16", torch.float16), ("BF16", torch.bfloat16), ("F32", torch.float32), ("F64", torch.float64)]:
    for tag, src in [("", base), ("special_", special)]:
        if dt == torch.float16:
            src = src.clamp(-65504, 65504)
        x = src.to(dt)
        t[f"{tag}X_{name}"] = x
        t[f"{tag}X_{name}_expect"] = x.to(torch.float64).clone()
ints = torch.tensor([0, 1, -1, 127, -128, 255, 32767, -32768, 2**31 - 1, -2**31, 2**53 + 1, -2**62], dtype=torch.int64)
for name, dt, lo, hi in [("I8", torch.int8, -128, 127), ("U8", torch.uint8, 0, 255), ("I16", torch.int16, -32768, 32767),
                         ("I32", torch.int32, -2**31, 2**31 - 1), ("I64", torch.int64, -2**63, 2**63 - 1)]:
    x = ints[(ints >= lo) & (ints <= hi)].to(dt).reshape(1, -1)
    t[f"X_{name}"] = x
    t[f"X_{name}_expect"] = x.to(torch.int64).clone()
t["X_BOOL"] = torch.tensor([True, False, True])
t["X_BOOL_expect"] = torch.tensor([1, 0, 1], dtype=torch.int64)
t["zero_size"] = torch.zeros(0, 4)  # zero-size tensors are allowed by the format
save_file(t, os.path.join(args.out, "dtypes.safetensors"), metadata={"written_by": "safetensors.torch.save_file"})

from diffusers import UNet2DModel
m = UNet2DModel.from_pretrained(os.path.join(args.golden, "ddpm_gray"))
m.to(torch.float16).save_pretrained(os.path.join(args.out, "ddpm_gray_fp16"), variant="fp16")
print("wrote", sorted(os.listdir(args.out)), sorted(os.listdir(os.path.join(args.out, "ddpm_gray_fp16"))))

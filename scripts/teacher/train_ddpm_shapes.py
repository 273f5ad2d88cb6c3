#!/usr/bin/env python3
"""A diffusers DDPM-family teacher for the distillation methods (issue 15), trained in PyTorch on the shapes data.

Run with /work/venv/bin/python (torch + diffusers). Steps:
  1. data: reads the class folders `onestep-distill data` writes (DATA/<class>/*.png, labels = sorted folder names,
     as ImageFolder does); when DATA does not exist it runs `ONESTEP_DISTILL data --out DATA --count 8000 --seed 0`.
  2. model: a class-conditional UNet2DModel with google/ddpm-cifar10-32 conventions (flip_sin_to_cos false,
     freq_shift 1, downsample_padding 0, norm_eps 1e-6), 16x16, block_out_channels (32, 64, 64), one resnet per
     level, attention at 4x4, num_class_embeds 8, GroupNorm(8).
  3. training: DDPMScheduler (cifar10 config: linear betas 1e-4..0.02, 1000 steps, epsilon prediction, clip_sample),
     the DDPM loss MSE(eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t, y), eps), t uniform; AdamW, linear warm-up,
     EMA of the weights (the EMA is what is saved); torch threads 1 (see --threads); until --minutes of wall time or --steps.
  4. save: DDPMPipeline(unet, scheduler).save_pretrained(OUT) (model_index.json, unet/, scheduler/), plus
     id2label in unet/config.json (Onestep reads the class names from it; diffusers ignores the key) and
     OUT/training.json (settings, steps done, wall and CPU time, loss curve).
  5. checks: diffusers' DDIMPipeline and DDPMPipeline sample it (class label passed to the UNet; those pipelines
     call unet(x, t) only), and `onestep-serve generate` on the same folder with a DDIMScheduler config gives the
     same uint8 image for each seed (number of differing values printed, exit status 1 if any differs).

Usage:
  /work/venv/bin/python scripts/teacher/train_ddpm_shapes.py --data /tmp/shapes16 --out models/shapes16-ddpm --minutes 18
  /work/venv/bin/python scripts/teacher/train_ddpm_shapes.py --out models/shapes16-ddpm --check-only
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
import diffusers
from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler, DDPMPipeline, DDIMPipeline
from diffusers.models.unets.unet_2d import UNet2DOutput

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CIFAR_SCHEDULER = {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
                   "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small",
                   "prediction_type": "epsilon"}


def load_folder(path):
    """(N, 3, S, S) float in [-1, 1] (x = 2 pixel / 255 - 1, as ImageFolder) and labels by sorted class folder."""
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if not classes:
        sys.exit(f"{path} has no class sub-folders; write the data with `onestep-distill data --out {path}`")
    xs, ys = [], []
    for k, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(path, c))):
            if f.lower().endswith(".png") and not f.startswith("."):
                a = np.asarray(Image.open(os.path.join(path, c, f)).convert("RGB"), dtype=np.float32)
                xs.append(a.transpose(2, 0, 1) / 127.5 - 1)
                ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys), classes


def make_unet(size, class_embeds, channels=(32, 64, 64)):
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=tuple(channels),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=32, num_class_embeds=class_embeds,
                       flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train(args):
    if not os.path.isdir(args.data):
        tool = args.onestep_distill
        print(f"{args.data} does not exist: writing it with {tool} data", flush=True)
        subprocess.run([tool, "data", "--kind", "shapes", "--size", "16", "--count", "8000", "--seed", "0", "--out", args.data], check=True)
    x_all, y_all, classes = load_folder(args.data)
    n, size = x_all.shape[0], x_all.shape[-1]
    print(f"data: {n} images {size}x{size}, classes {' '.join(classes)}", flush=True)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    k = len(classes)
    # Classifier-free guidance (Ho & Salimans 2022): with --label-dropout p the label is replaced by the null label
    # with probability p, so one network learns eps(x, t, y) and eps(x, t, null). The null label is the embedding
    # table's last row, index K (num_class_embeds = K + 1), as diffusers' DiT LabelEmbedding (class_dropout_prob > 0
    # adds one row, the null class index num_classes) and DiTPipeline (class_null = 1000 for 1000 classes) do;
    # unet/config.json records it as "null_class_label": K (see save below).
    embeds = k + 1 if args.label_dropout > 0 else k
    unet = make_unet(size, embeds, args.channels)
    ema = make_unet(size, embeds, args.channels)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DModel: {params:,} parameters", flush=True)
    sched = DDPMScheduler(**CIFAR_SCHEDULER)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    start, cpu0 = time.time(), cpu_seconds()
    losses, step, running, snaps = [], 0, None, []
    next_snap = args.snapshot_every
    while True:
        elapsed, used = time.time() - start, cpu_seconds() - cpu0
        if args.steps:
            if step >= args.steps:
                break
        elif elapsed >= 60 * args.minutes or (args.cpu_minutes and used >= 60 * args.cpu_minutes):
            break
        if args.snapshots and next_snap and used >= 60 * next_snap:
            # The EMA so far, to measure quality against training length from one run.
            d = os.path.join(args.snapshots, f"cpu{int(round(next_snap)):03d}min-step{step}")
            save_folder(ema, sched, d, classes, args.label_dropout > 0)
            snaps.append({"cpu_minutes": next_snap, "step": step, "wall_seconds": round(elapsed, 1), "path": d})
            print(f"snapshot {d}", flush=True)
            next_snap += args.snapshot_every
        idx = torch.randint(0, n, (args.batch,), generator=g)
        x0, y = x_all[idx], y_all[idx]
        if args.label_dropout > 0:
            drop = torch.rand((args.batch,), generator=g) < args.label_dropout
            y = torch.where(drop, torch.full_like(y, k), y)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        lv = loss.item()
        running = lv if running is None else 0.98 * running + 0.02 * lv
        if step % 50 == 0:
            losses.append([step, round(running, 5)])
        if step % 200 == 0:
            el = time.time() - start
            print(f"step {step} loss {running:.4f} ({el:.0f}s, {step * args.batch / el:.0f} images/s)", flush=True)
    wall, cpu = time.time() - start, cpu_seconds() - cpu0
    print(f"trained {step} steps x {args.batch} images in {wall:.0f}s wall, {cpu:.0f}s CPU", flush=True)

    save_folder(ema, sched, args.out, classes, args.label_dropout > 0)
    record = {"channels": list(args.channels), "label_dropout": args.label_dropout,
              "null_class_label": k if args.label_dropout > 0 else None,
              "cpu_minutes_budget": args.cpu_minutes or None, "snapshots": snaps, "data": args.data, "images": n, "classes": classes, "parameters": params, "steps": step,
              "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "ema": args.ema, "seed": args.seed,
              "minutes_budget": None if args.steps else args.minutes, "torch_threads": torch.get_num_threads(),
              "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "final_loss": round(running, 5),
              "loss_every_50_steps": losses,
              "made_with": f"torch {torch.__version__}, diffusers {diffusers.__version__}",
              "cpu": cpu_model(), "command": " ".join(sys.argv)}
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print("saved", args.out, flush=True)


def save_folder(ema, sched, out, classes, null_label):
    """DDPMPipeline.save_pretrained(out) plus the class names (and the null label) in unet/config.json."""
    ema.eval()
    DDPMPipeline(unet=ema, scheduler=sched).save_pretrained(out)
    ema.train()
    cfg_path = os.path.join(out, "unet", "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    # id2label names the K real classes; with a null label num_class_embeds is K + 1 and "null_class_label": K
    # says which row is the unconditional one (diffusers ignores both keys with a warning; Onestep reads them).
    cfg["id2label"] = {str(i): c for i, c in enumerate(classes)}
    if null_label:
        cfg["null_class_label"] = len(classes)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class LabelledUNet:
    """Passes class_labels to the UNet inside diffusers' DDIMPipeline / DDPMPipeline, which call unet(x, t) only.
    With `guidance` w and the null label: classifier-free guidance as diffusers' conditional pipelines do it, one
    forward of 2N images (null labels first) and noise_pred_uncond + w * (noise_pred_cond - noise_pred_uncond)."""

    def __init__(self, unet, label, guidance=None, null=None):
        self.unet, self.label, self.guidance, self.null = unet, label, guidance, null

    def __enter__(self):
        orig = self.unet.forward
        self.orig = orig
        if self.guidance is None:
            self.unet.forward = lambda x, t, **kw: orig(x, t, class_labels=torch.full((x.shape[0],), self.label), **kw)
            return
        w, null, label = self.guidance, self.null, self.label

        def guided(x, t, **kw):
            n = x.shape[0]
            labels = torch.cat([torch.full((n,), null), torch.full((n,), label)])
            u, c = orig(torch.cat([x, x]), t, class_labels=labels, **kw).sample.chunk(2)
            return UNet2DOutput(sample=u + w * (c - u))
        self.unet.forward = guided

    def __exit__(self, *exc):
        del self.unet.forward


def check(args):
    unet = UNet2DModel.from_pretrained(os.path.join(args.out, "unet")).eval()
    ddpm = DDPMScheduler.from_pretrained(os.path.join(args.out, "scheduler"))
    ddim = DDIMScheduler.from_config(ddpm.config)
    cfg = json.load(open(os.path.join(args.out, "unet", "config.json")))
    names, null = cfg["id2label"], cfg.get("null_class_label")
    serve = args.onestep_serve
    worst, total_diff, total = 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        # The same weights as a DDIMPipeline folder, as a diffusers user would switch samplers.
        ddim_dir = os.path.join(tmp, "ddim")
        os.makedirs(ddim_dir)
        os.symlink(os.path.abspath(os.path.join(args.out, "unet")), os.path.join(ddim_dir, "unet"))
        ddim.save_pretrained(os.path.join(ddim_dir, "scheduler"))
        with open(os.path.join(ddim_dir, "model_index.json"), "w") as f:
            json.dump({"_class_name": "DDIMPipeline", "_diffusers_version": diffusers.__version__,
                       "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, f)
        with torch.no_grad():
            pipe = DDPMPipeline(unet=unet, scheduler=ddpm)
            pipe.set_progress_bar_config(disable=True)
            with LabelledUNet(unet, 0):
                img = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=50, output_type="np").images[0]
            print(f"DDPMPipeline 50 steps, label {names['0']}: mean pixel {img.mean():.3f}, std {img.std():.3f}")
            pipe = DDIMPipeline(unet=unet, scheduler=ddim)
            pipe.set_progress_bar_config(disable=True)
            # Without guidance, and with classifier-free guidance when the model has a null label.
            cases = [(seed, None) for seed in args.check_seeds]
            if null is not None and args.check_guidance > 0:
                cases += [(seed, args.check_guidance) for seed in args.check_seeds]
            for seed, w in cases:
                label = seed % len(names)
                with LabelledUNet(unet, label, guidance=w, null=null):
                    img = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=args.check_steps,
                               eta=0.0, output_type="np").images[0]
                ref = (img * 255).round().astype(np.uint8)
                png = os.path.join(tmp, f"s{seed}.png")
                subprocess.run([serve, "generate", "--model", ddim_dir, "--seed", str(seed), "--label", str(label),
                                "--steps", str(args.check_steps), "--out", png] + ([] if w is None else ["--guidance", str(w)]),
                               check=True, stdout=subprocess.DEVNULL)
                ours = np.asarray(Image.open(png).convert("RGB"))
                diff = np.abs(ours.astype(int) - ref.astype(int))
                print(f"DDIMPipeline {args.check_steps} steps seed {seed} label {names[str(label)]}"
                      f"{'' if w is None else f', guidance {w} (null label {null})'}: "
                      f"{int((diff > 0).sum())} of {diff.size} uint8 values differ from onestep-serve generate (largest {diff.max()})")
                worst, total_diff, total = max(worst, int(diff.max())), total_diff + int((diff > 0).sum()), total + diff.size
    print(f"check: {total_diff} of {total} uint8 values differ, largest difference {worst}")
    return total_diff == 0


def export_conditional(src, out):
    """The conditional-only view of a guidance model: the null label's embedding row dropped (num_class_embeds K,
    no null_class_label), for tools that do not know the null-label convention. Same outputs for labels 0..K-1."""
    unet = UNet2DModel.from_pretrained(os.path.join(src, "unet"))
    cfg = json.load(open(os.path.join(src, "unet", "config.json")))
    null = cfg.get("null_class_label")
    if null is None:
        sys.exit(f"{src} has no null_class_label: it is already conditional-only")
    keep = {k: v for k, v in unet.config.items() if not k.startswith("_") and k not in ("null_class_label", "id2label")}
    cond = UNet2DModel.from_config(keep | {"num_class_embeds": null})
    state = unet.state_dict()
    state["class_embedding.weight"] = state["class_embedding.weight"][:null].clone()
    cond.load_state_dict(state)
    DDPMPipeline(unet=cond.eval(), scheduler=DDPMScheduler.from_pretrained(os.path.join(src, "scheduler"))).save_pretrained(out)
    path = os.path.join(out, "unet", "config.json")
    c = json.load(open(path))
    c.pop("null_class_label", None)
    c["id2label"] = cfg["id2label"]
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {out}: {null} classes, no null label")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/onestep-shapes16", help="class folders from `onestep-distill data`")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "shapes16-ddpm"))
    ap.add_argument("--minutes", type=float, default=18, help="wall-time budget of training (ignored with --steps)")
    ap.add_argument("--cpu-minutes", type=float, default=0,
                    help="CPU-time budget of training (process user + system time); stops at whichever of --minutes and this comes first")
    ap.add_argument("--label-dropout", type=float, default=0.0,
                    help="probability of training on the null label (classifier-free guidance; 0 = no null label)")
    ap.add_argument("--channels", type=lambda v: [int(c) for c in v.split(",")], default=[32, 64, 64],
                    help="block_out_channels, comma-separated (32,64,64 = 1.1 M parameters, 4.5 MB float32)")
    ap.add_argument("--snapshots", default="", help="save the EMA every --snapshot-every CPU minutes into this folder")
    ap.add_argument("--snapshot-every", type=float, default=0)
    ap.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of a time budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    # 1, not 2: on a machine shared with other jobs, two OpenMP threads spin in barriers while the partner is
    # descheduled (measured under load 20 on 2 vCPUs: 2.87 CPU-s per batch-64 step with 2 threads, 0.20 with 1).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check-only", action="store_true", help="skip training; check the saved folder")
    ap.add_argument("--check-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--check-steps", type=int, default=35)
    ap.add_argument("--check-guidance", type=float, default=3.0,
                    help="also compare guided sampling (classifier-free guidance at this scale) when the model has a null label; 0: skip")
    ap.add_argument("--onestep-distill", default=os.path.join(ROOT, ".build", "release", "onestep-distill"))
    ap.add_argument("--onestep-serve", default=os.path.join(ROOT, ".build", "release", "onestep-serve"))
    ap.add_argument("--export-conditional", metavar="DIR", help="write the conditional-only view of --out (null row dropped) to DIR and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.export_conditional:
        export_conditional(args.out, args.export_conditional)
        return
    if not args.check_only:
        train(args)
    if not os.path.exists(args.onestep_serve):
        sys.exit(f"{args.onestep_serve} not found: build it (swift build -c release) or pass --onestep-serve; the check did not run")
    sys.exit(0 if check(args) else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The distillation methods side by side on one diffusers DDPM teacher (issue 15, first must-show), end to end.

  1. data     `onestep-distill data`: the teacher's training set (seed 0, 8000 images) when missing, and a separate
              evaluation set (seed 1, 8000 images: 1000 reference + 1000 floor images, the classifier trains on the
              other 6000), so no evaluated image was seen by the teacher or the students.
  2. teacher  models/shapes16-ddpm (scripts/teacher/train_ddpm_shapes.py made it; --train-teacher MINUTES retrains).
  3. students `onestep-distill student --teacher T --method M` for M in cd, ect, dmd, regression, the same --steps and
              --batch each (regression: a same-size student, --student-channels of the teacher, from fresh weights,
              on cached DDIM pairs; their generation counts in its time). Wall and CPU seconds of each run.
              A run folder that already holds a finished student (timing.json) is reused, and the table says so.
  4. eval     one `onestep-distill eval` on the evaluation set: the teacher with DDIMScheduler and
              DPMSolverMultistepScheduler (from its DDPMScheduler config, as diffusers' from_config) at 35 steps
              (35 NFE) and DDIM at 1 step (leading spacing: that one step is at t = 0), and with LCMScheduler at 1
              and 2 steps (t = 999, 499: the teacher's own x0 prediction, which is what the cd/ect/dmd students
              start from when their scheduler is the teacher's), each student at 1 and 2 steps, and "initial": the
              teacher's weights in the students' own folder form (the first student's scheduler_config.json: for a
              DDPM-family teacher the LCMScheduler over its first K timesteps), i.e. every cd/ect/dmd student at step 0.
  5. table    OUT/method_table.md: method, sampler, steps, NFE, FD-cls, KID, conditional accuracy (95% bootstrap
              intervals), training wall/CPU time, eval sampling wall time. Printed at the end.

Usage (from the repository, after `swift build -c release`; any Python 3, no packages needed):
  python3 scripts/eval/method_table.py --out /tmp/onestep-methods --steps 400
"""
import argparse, json, os, re, resource, subprocess, sys, time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
METHODS = ["cd", "ect", "dmd", "regression"]


def start(cmd, log_path):
    """Starts cmd with its output going to log_path; returns (process, start time)."""
    print("$ " + " ".join(cmd) + f"   (output: {log_path})", flush=True)
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT), time.time()


def finish(proc, started, cmd, log_path):
    """Waits for proc; returns (wall s, CPU s of that process alone: user + system from wait4)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    if proc.returncode != 0:
        sys.stdout.write(open(log_path).read()[-3000:])
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime


def run(cmd, log_path):
    """Runs cmd to completion; returns (wall s, CPU s, output text)."""
    p, t0 = start(cmd, log_path)
    wall, cpu = finish(p, t0, cmd, log_path)
    out = open(log_path).read()
    sys.stdout.write("".join("  " + line + "\n" for line in out.splitlines()[-12:]))
    return wall, cpu, out


def load_average():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return ["?"] * 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=os.path.join(ROOT, "models", "shapes16-ddpm"))
    ap.add_argument("--data", default="/tmp/onestep-shapes16", help="the teacher's training images (students' data)")
    ap.add_argument("--eval-data", default="/tmp/onestep-shapes16-eval", help="held-out evaluation images (seed 1)")
    ap.add_argument("--out", default="/tmp/onestep-methods")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of every method (equal budgets)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=2048, help="regression: cached teacher (noise, DDIM sample) pairs")
    ap.add_argument("--pair-steps", type=int, default=35, help="regression: DDIM steps of the pairs")
    ap.add_argument("--samples", type=int, default=500, help="generated images per evaluated model (and real images per set)")
    ap.add_argument("--teacher-steps", type=int, default=35, help="steps (= NFE) of the teacher's DDIM and DPM-Solver++ rows")
    ap.add_argument("--workers", type=int, default=2, help="threads of each student run and of the eval")
    ap.add_argument("--parallel", type=int, default=1, help="student runs at a time (each with --workers threads)")
    ap.add_argument("--train-teacher", type=float, default=0, help="retrain the teacher for this many minutes first")
    ap.add_argument("--student-args", default="", help="more flags for every student run, e.g. \"--lcm-timesteps 600\"")
    ap.add_argument("--teacher-guidance", type=float, default=1,
                    help="classifier-free guidance W of the teacher (needs a null label): cd, dmd and regression distil "
                         "the guided teacher (`student --teacher-guidance W`; ect makes no teacher calls and takes none), "
                         "and the table gains a teacher-ddimK-guidanceW row (2 NFE per step)")
    ap.add_argument("--bin", default=os.path.join(ROOT, ".build", "release"))
    args = ap.parse_args()
    distill = os.path.join(args.bin, "onestep-distill")
    if not os.path.exists(distill):
        sys.exit(f"{distill} not found: run `swift build -c release` first (or pass --bin)")
    os.makedirs(args.out, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            sys.exit(f"--methods: unknown method {m}; expected some of {', '.join(METHODS)}")

    if not os.path.isdir(args.data):
        run([distill, "data", "--count", "8000", "--seed", "0", "--out", args.data], os.path.join(args.out, "data.log"))
    if not os.path.isdir(args.eval_data):
        run([distill, "data", "--count", "8000", "--seed", "1", "--out", args.eval_data], os.path.join(args.out, "eval-data.log"))
    if args.train_teacher > 0:
        run([os.environ.get("TORCH_PYTHON", "/work/venv/bin/python"), os.path.join(ROOT, "scripts", "teacher", "train_ddpm_shapes.py"),
             "--data", args.data, "--out", args.teacher, "--minutes", str(args.train_teacher)], os.path.join(args.out, "teacher.log"))
    teacher_cfg = json.load(open(os.path.join(args.teacher, "unet", "config.json")))
    record_path = os.path.join(args.teacher, "training.json")
    teacher_record = json.load(open(record_path)) if os.path.exists(record_path) else {}
    channels = ",".join(str(c) for c in teacher_cfg["block_out_channels"])

    timings, pending = {}, []
    for m in methods:
        run_dir = os.path.join(args.out, m)
        timing_path = os.path.join(run_dir, "timing.json")
        if os.path.exists(timing_path):
            t = json.load(open(timing_path))
            if t.get("steps") == args.steps and t.get("batch") == args.batch:
                print(f"{m}: reusing the finished run in {run_dir} (its timing.json: {t['wall']:.0f}s wall)", flush=True)
                timings[m] = t | {"reused": True}
                continue
            sys.exit(f"{run_dir} holds a run with steps {t.get('steps')} batch {t.get('batch')}, not {args.steps}/{args.batch}; "
                     f"remove it or choose another --out")
        cmd = [distill, "student", "--teacher", args.teacher, "--method", m, "--data", args.data, "--out", run_dir,
               "--steps", str(args.steps), "--batch", str(args.batch), "--workers", str(args.workers),
               "--sample-every", str(args.steps), "--checkpoint-every", str(max(50, args.steps // 4))]
        cmd += args.student_args.split()
        if args.teacher_guidance != 1 and m != "ect":
            cmd += ["--teacher-guidance", f"{args.teacher_guidance:g}"]
        if m == "regression":
            cmd += ["--student-channels", channels, "--pairs", str(args.pairs), "--heun-steps", str(args.pair_steps)]
        if m == "dmd":
            cmd.remove("--data"); cmd.remove(args.data)  # DMD uses no data images
        if os.path.exists(os.path.join(run_dir, "checkpoint.safetensors")):
            cmd.append("--resume")  # an interrupted run of this script continues from its checkpoint
        pending.append((m, cmd, run_dir, timing_path))
    # --parallel runs: each its own process; CPU seconds are per process (wait4), wall times overlap.
    while pending:
        batch, pending = pending[:args.parallel], pending[args.parallel:]
        running = {}
        for m, cmd, run_dir, tp in batch:
            log_path = os.path.join(args.out, f"train-{m}.log")
            proc, t0 = start(cmd, log_path)
            running[proc.pid] = (m, cmd, tp, load_average(), proc, t0, log_path)
        while running:
            pid, status, usage = os.wait4(-1, 0)  # whichever run ends first: its own wall and CPU time
            if pid not in running:
                continue
            m, cmd, tp, load0, proc, t0, log_path = running.pop(pid)
            wall, cpu = time.time() - t0, usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                sys.stdout.write(open(log_path).read()[-3000:])
                sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
            last = [line for line in open(log_path).read().splitlines() if line.strip()][-1:]
            print(f"{m}: {wall:.0f}s wall, {cpu:.0f}s CPU: {' '.join(last)}", flush=True)
            t = {"steps": args.steps, "batch": args.batch, "wall": round(wall, 1), "cpu": round(cpu, 1),
                 "load_before": load0, "load_after": load_average(), "resumed": "--resume" in cmd,
                 "concurrent_runs": len(batch), "workers": args.workers}
            json.dump(t, open(tp, "w"))
            timings[m] = t

    k = args.teacher_steps
    specs = [f"teacher-ddim{k}={args.teacher}:{k}@DDIMScheduler",
             f"teacher-dpmpp{k}={args.teacher}:{k}@DPMSolverMultistepScheduler",
             *([f"teacher-ddim{k}-guidance{args.teacher_guidance:g}={args.teacher}:{k}@DDIMScheduler,guidance={args.teacher_guidance:g}"]
               if args.teacher_guidance != 1 else []),
             f"teacher-ddim1={args.teacher}:1@DDIMScheduler",
             f"teacher-lcm1={args.teacher}:1@LCMScheduler",
             f"teacher-lcm2={args.teacher}:2@LCMScheduler"]
    # The students' starting point: the teacher's UNet with the first copy-initialised student's scheduler config.
    first = next((m for m in methods if m != "regression"), None)
    if first is not None:
        initial = os.path.join(args.out, "initial")
        os.makedirs(initial, exist_ok=True)
        unet_dir = os.path.join(args.teacher, "unet") if os.path.isdir(os.path.join(args.teacher, "unet")) else args.teacher
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            if not os.path.exists(os.path.join(initial, name)):
                os.symlink(os.path.abspath(os.path.join(unet_dir, name)), os.path.join(initial, name))
        open(os.path.join(initial, "scheduler_config.json"), "w").write(open(os.path.join(args.out, first, "scheduler_config.json")).read())
        specs += [f"initial-1step={initial}:1", f"initial-2step={initial}:2"]
    for m in methods:
        specs += [f"{m}-1step={os.path.join(args.out, m)}:1", f"{m}-2step={os.path.join(args.out, m)}:2"]
    cmd = [distill, "eval", "--data", args.eval_data, "--out", os.path.join(args.out, "eval"), "--samples", str(args.samples),
           "--workers", str(args.workers)]
    for s in specs:
        cmd += ["--model", s]
    load0 = load_average()
    eval_wall, _, out = run(cmd, os.path.join(args.out, "eval.log"))
    gen_seconds = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) \(.*\): FD-cls .*, (\d+(?:\.\d+)?)s to generate", out, re.M)}
    rows = {}
    for line in open(os.path.join(args.out, "eval", "eval.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] not in ("model", "---") and not cells[0].startswith("-"):
            rows[cells[0].strip("*")] = cells

    def train_cell(name):
        m = name.split("-", 1)[0]
        if m == "initial":
            return "0 steps (the teacher's weights)"
        if m == "teacher":
            return (f"PyTorch: {teacher_record.get('steps')} steps x {teacher_record.get('batch')}, "
                    f"{teacher_record.get('wall_seconds', 0) / 60:.1f} min ({teacher_record.get('cpu_seconds', 0) / 60:.1f} CPU min)")
        t = timings[m]
        return f"{t['wall'] / 60:.1f} min ({t['cpu'] / 60:.1f} CPU min){' reused' if t.get('reused') else ''}"

    lines = ["| model | sampler | NFE | FD-cls | KID | cond. accuracy | training wall (CPU) | eval sampling wall, s | ms/image |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, cells in rows.items():
        if name.startswith("real vs real"):
            lines.append(f"| {name} | {cells[1]} | - | {cells[4]} | {cells[5]} | {cells[6]} | - | - | - |")
            continue
        lines.append(f"| {name} | {cells[1]} | {cells[2]} | {cells[4]} | {cells[5]} | {cells[6]} | {train_cell(name)} | "
                     f"{gen_seconds.get(name, float('nan')):.1f} | {cells[7]} |")
    info = {}
    for line in open("/proc/cpuinfo"):
        if ":" in line:
            key, value = (x.strip() for x in line.split(":", 1))
            info.setdefault(key, value)
    cpu = f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    note = (f"\n{args.samples} generated images per model against held-out images of {args.eval_data}; students: "
            f"{args.steps} steps x {args.batch} images each"
            f"{f' (regression: + {args.pairs} DDIM-{args.pair_steps} pairs)' if 'regression' in methods else ''}"
            f"{', student flags ' + args.student_args if args.student_args else ''}"
            f"{f', teacher guidance {args.teacher_guidance:g} for cd/dmd/regression' if args.teacher_guidance != 1 else ''}. "
            f"CPU: {cpu}, {os.cpu_count()} vCPUs; load average before the eval {' '.join(load0)}, "
            f"eval wall {eval_wall:.0f}s. Timings per run: {json.dumps(timings)}\n")
    table = "\n".join(lines) + "\n" + note
    open(os.path.join(args.out, "method_table.md"), "w").write(table)
    print("\n" + table + f"\nwritten to {os.path.join(args.out, 'method_table.md')}")


if __name__ == "__main__":
    main()

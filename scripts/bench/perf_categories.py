"""Share of a forward's CPU samples by kind of work, from `perf script` of a `perf record -g` run.

    perf record -g -o unet.data .build/release/onestep-latent-bench sdxs-unet --int8-only --runs 3
    perf script -i unet.data -F comm,tid,ip,sym > unet.txt
    python3 scripts/bench/perf_categories.py unet.txt UNet2DConditionModelV7forward
    (TAESD: taesd-decoder --int8-only, root AutoencoderTinyDecoderV6decode)

Only samples with the root symbol (a substring of a mangled Swift name) on their stack count, so building the
network, quantizing its weights and the bench's own sgemm are left out. Each sample goes to a category by its
innermost (self) symbol; int8 kernel samples are further split by the runner function (Walk.*) above them.
"""
import sys, re, collections
samples = open(sys.argv[1]).read().split("\n\n")
ROOT = sys.argv[2]
total = 0; cat = collections.Counter(); other = collections.Counter()
def walk_fn(frames):
    for f in frames:
        m = re.search(r"Walk\w*?LLV\d+(\w+?)_", f) or re.search(r"Walk\w*?LLV\d+(\w+?)y", f)
        if m: return m.group(1)
    return "?"
def category(frames):
    s0 = frames[0]
    w = walk_fn(frames)
    if any(k in s0 for k in ("kernel_q8", "pack_q8", "tile_taps", "osk_conv_q8")):
        return f"int8 VNNI conv/projection kernels (in {w})"
    if "quantize_avx512" in s0 or "q8_quantize" in s0 or "range_avx512" in s0 or "encode_avx512" in s0:
        return "activation quantization to uint8 (per image)"
    if any(k in s0 for k in ("attention_bf16", "attention_block_bf16", "att_pack_")):
        return "attention heads QK^T/softmax/AV (bf16)"
    if any(k in s0 for k in ("attention_head", "softmaxRows", "expf", "crossAttention")):
        return "attention heads QK^T/softmax/AV (fp32)"
    if "erff" in s0 or "geglu" in s0.lower(): return "GEGLU (fp32)"
    if any(k in s0 for k in ("silu", "groupNorm", "centered_squares", "plane_sum")): return "GroupNorm+SiLU (fp32)"
    if "layerNorm" in s0 or "LayerNorm" in s0: return "LayerNorm (fp32)"
    if "kernel_f32" in s0 or "sgemm" in s0 or "osk_f32" in s0: return "fp32 conv/GEMM kernels (edge convs, time MLP)"
    if any(k in s0 for k in ("memmove", "memcpy", "memset")): return "memcpy/memset (copies, residuals, concat)"
    if any(k in s0 for k in ("page_fault", "anonymous_page", "handle_mm", "clear_page")): return "page faults (kernel)"
    if "LatentProfileC7measure" in s0: return f"inlined loops in profiled closures ({w})"
    if "Walk" in s0: return f"Walk {w} inline loops (relu/scale/bias)"
    other[s0[:80]] += 1
    return "other"
for smp in samples:
    lines = [l.strip() for l in smp.strip().split("\n")]
    if len(lines) < 2: continue
    frames = [l.split(None, 1)[1] if len(l.split(None,1)) > 1 else "?" for l in lines[1:]]
    if not any(ROOT in f for f in frames): continue
    total += 1
    cat[category(frames)] += 1
print(f"samples under {ROOT}: {total}")
for k, v in cat.most_common(): print(f"{100*v/total:6.1f}%  {k}")
print("-- other --")
for k, v in other.most_common(8): print(f"{100*v/total:6.1f}%  {k}")

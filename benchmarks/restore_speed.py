"""Restoration speed: seconds per image, peak memory and achieved conv FLOP/s vs GEMM FLOP/s.

Usage::

    python benchmarks/restore_speed.py [--sizes 512 1024 2048 4096] [--model hrstem] \
        [--device cpu] [--full-cgrdn] [--out bench_out/restore_speed.json]

Each (model, size) is measured in a fresh subprocess so that its peak resident
memory (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) is its own. The conv
FLOPs of one forward pass are counted with hooks on every Conv2d /
ConvTranspose2d (2·MACs); the achievable rate is a float32 GEMM (2048³, or
bf16 8192³ on CUDA) timed in the same process. Targets (issue 3): 2048² in
under 10 s on the 2-core CPU; the full 7.04 M CGRDN at 1024² under 0.1 s on an
H100.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from napari_emdenoise.engine.device import resolve_device
from napari_emdenoise.engine.predictor import restore
from napari_emdenoise.models.registry import build_model, load_model

model_name, size = sys.argv[1], int(sys.argv[2])
device_name, repeats = sys.argv[3], int(sys.argv[4])
device = resolve_device(device_name)
if model_name == "cgrdn-full":
    torch.manual_seed(0)
    model = build_model("cgrdn", "full").to(device).eval()
else:
    model, _ = load_model(model_name, device=device)
image = np.random.default_rng(0).random((size, size), dtype=np.float32)

flops = [0]
def hook(mod, inp, out):
    k = mod.kernel_size[0] * mod.kernel_size[1]
    if isinstance(mod, torch.nn.ConvTranspose2d):
        macs = inp[0].numel() // inp[0].shape[0] * mod.out_channels * k // mod.groups
        flops[0] += 2 * macs * inp[0].shape[0]
    else:
        flops[0] += 2 * out.numel() * mod.in_channels // mod.groups * k
handles = [m.register_forward_hook(hook) for m in model.modules()
           if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
restore(image, model=model, device=device)          # warm-up + FLOP count
conv_flops = flops[0]
for h in handles:
    h.remove()
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    restore(image, model=model, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
seconds = float(np.median(times))
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
    n, dt = 8192, torch.bfloat16
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n, dt = 2048, torch.float32
a = torch.randn(n, n, device=device, dtype=dt); b = torch.randn(n, n, device=device, dtype=dt)
torch.mm(a, b)
if device.type == "cuda": torch.cuda.synchronize()
t0 = time.perf_counter(); reps = 3
for _ in range(reps): torch.mm(a, b)
if device.type == "cuda": torch.cuda.synchronize()
gemm = 2 * n**3 * reps / (time.perf_counter() - t0)
print(json.dumps({"model": model_name, "size": size, "device": str(device),
                  "threads": torch.get_num_threads(), "seconds": seconds,
                  "peak_mib": peak, "conv_gflop": conv_flops / 1e9,
                  "conv_gflops_per_s": conv_flops / seconds / 1e9,
                  "gemm_gflops_per_s": gemm / 1e9,
                  "fraction_of_gemm": conv_flops / seconds / gemm}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--model", default="hrstem")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--full-cgrdn",
        action="store_true",
        help="also time the full 7.04 M-parameter CGRDN (random weights)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench_out/restore_speed.json"))
    args = ap.parse_args(argv)

    runs = [(args.model, s) for s in args.sizes]
    if args.full_cgrdn:
        runs += [("cgrdn-full", s) for s in args.sizes if s <= 2048 or args.device != "cpu"]
    results = []
    for model, size in runs:
        repeats = args.repeats if size <= 2048 else 1
        res = subprocess.run(
            [sys.executable, "-c", CHILD, model, str(size), args.device, str(repeats)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            print(f"{model} {size}²: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"  {model} {size}²: {r['seconds']:.3f} s", file=sys.stderr)

    rows = [
        [
            r["model"],
            f"{r['size']}²",
            r["device"],
            f"{r['seconds']:.3f}",
            f"{r['peak_mib']:.0f}",
            f"{r['conv_gflops_per_s']:.1f}",
            f"{r['gemm_gflops_per_s']:.1f}",
            f"{100 * r['fraction_of_gemm']:.0f} %",
        ]
        for r in results
    ]
    print(
        markdown_table(
            [
                "model",
                "size",
                "device",
                "s / image",
                "peak MiB",
                "conv GFLOP/s",
                "GEMM GFLOP/s",
                "conv / GEMM",
            ],
            rows,
        )
    )
    path = write_json(args.out, {"benchmark": "restore_speed", "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

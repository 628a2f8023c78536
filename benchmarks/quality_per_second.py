"""Quality per CPU-second: what each restoration buys on the physics set for its inference time.

Usage::

    python benchmarks/quality_per_second.py [--size 512] [--threads 2] [--repeats 3] \
        [--out benchmarks/results/quality_per_second.json]

Two parts:

1. **Cost of each architecture and size** (measured here). Every network is
   built with :func:`napari_emdenoise.models.registry.build_model` (random
   weights: the time does not depend on them) and timed through
   :func:`napari_emdenoise.engine.restore` with ``refine=False`` (the network
   alone) on a ``size``² frame, on ``--threads`` CPU threads, median of
   ``--repeats`` after a warm-up, with the engine's automatic back end (ONNX
   Runtime when installed, exported beforehand so no run pays the export).
   Rows: CGRDN tiny / small / the bundled `hrstem` (small + the
   full-resolution block) / full (the published size), and DnCNN small / full
   (20 layers × 64 features, the network of Vincent et al.). Parameters and
   conv GFLOP per megapixel are counted with hooks. When ``tk_r_em`` and
   TensorFlow are installed, the authors' released CGRDN (``sfr_hrstem``) is
   timed on the same frame in TensorFlow.

2. **Quality for that cost** (read, not measured here): the mean PSNR on
   the multislice physics set at 2 / 5 / 20 counts/pixel and the median
   seconds per 256² image of every method, from
   ``benchmarks/results/restore_quality_hr.json`` (``restore_quality.py``).
   Only methods with trained weights have a quality: our bundled models and
   the authors' GPU-trained full-size CGRDN. The CGRDN rows of part 1
   without a quality are architectures we have not trained (the full size
   needs a GPU); their time says what they would cost.

The time per 2048² frame is extrapolated from ``size``² by pixel count
(inference is linear in pixels once the frame is tiled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    conv_flops_per_pixel,
    machine_info,
    markdown_table,
    median_seconds,
    write_json,
)

#: (label, architecture, named config or config dict, trained model it stands for)
ARCHITECTURES: tuple[tuple[str, str, Any, str | None], ...] = (
    ("CGRDN tiny", "cgrdn", "tiny", None),
    ("CGRDN small", "cgrdn", "small", None),
    ("CGRDN small + full-resolution block (bundled `hrstem`)", "bundled", "hrstem", "hrstem"),
    ("CGRDN full (published size)", "cgrdn", "full", None),
    ("DnCNN small (10 × 32)", "dncnn", "small", None),
    ("DnCNN full (20 × 64, Vincent et al.)", "dncnn", "full", None),
)
QUALITY_FILE = Path("benchmarks/results/restore_quality_hr.json")
DOSES = (2.0, 5.0, 20.0)
#: Methods of restore_quality_hr.json shown in part 2, per technique.
METHODS = {
    "HAADF": (
        "gaussian",
        "bm3d-gat",
        "model:hrstem",
        "refined:hrstem",
        "ref:sfr_hrstem",
    ),
    "HRTEM": (
        "gaussian",
        "bm3d-gat",
        "model:hrtem",
        "refined:hrtem",
        "ref:sfr_hrtem",
    ),
}
LABELS = {
    "gaussian": "Gaussian (best σ, oracle)",
    "bm3d-gat": "BM3D-GAT (true noise)",
    "model:hrstem": "`hrstem`, network alone",
    "refined:hrstem": "`hrstem`, default (+ Wiener + lattice pass)",
    "ref:sfr_hrstem": "authors' CGRDN `sfr_hrstem` (full size, GPU-trained, TensorFlow)",
    "model:hrtem": "`hrtem`, network alone",
    "refined:hrtem": "`hrtem`, default (+ Wiener + lattice pass)",
    "ref:sfr_hrtem": "authors' CGRDN `sfr_hrtem` (full size, GPU-trained, TensorFlow)",
}


def conv_gflop_per_mpix(module: Any) -> float:
    """Conv GFLOP (2·MACs) of one forward pass per megapixel."""
    return conv_flops_per_pixel(module) * 1e6 / 1e9


def build(arch: str, config: Any) -> Any:
    from napari_emdenoise.models.registry import build_model, load_model

    if arch == "bundled":
        return load_model(config, device="cpu")[0]
    module = build_model(arch, config)
    module.eval()
    return module


def time_architectures(size: int, repeats: int) -> list[dict[str, Any]]:
    from napari_emdenoise.engine import restore

    frame = np.random.default_rng(0).poisson(5.0, (size, size)).astype(np.float32)
    rows = []
    for label, arch, config, trained in ARCHITECTURES:
        module = build(arch, config)
        seconds = median_seconds(lambda m=module: restore(frame, model=m, refine=False), repeats)
        rows.append(
            {
                "label": label,
                "architecture": arch,
                "config": config,
                "trained_model": trained,
                "parameters": int(sum(p.numel() for p in module.parameters())),
                "conv_gflop_per_mpix": conv_gflop_per_mpix(module),
                "seconds": seconds,
                "seconds_2048_extrapolated": seconds * (2048 / size) ** 2,
            }
        )
        print(f"{label}: {seconds:.2f} s at {size}²", flush=True)
    return rows


def time_reference(size: int, repeats: int) -> dict[str, Any] | None:
    from restore_quality import reference_available, run_reference

    missing = reference_available()
    if missing is not None:
        print(f"authors' models not timed: {missing}")
        return None
    frame = np.random.default_rng(0).poisson(5.0, (size, size)).astype(np.float32)
    seconds = median_seconds(lambda: run_reference("sfr_hrstem", frame), repeats)
    print(f"authors' sfr_hrstem: {seconds:.2f} s at {size}²", flush=True)
    return {
        "label": "authors' CGRDN `sfr_hrstem` (TensorFlow)",
        "seconds": seconds,
        "seconds_2048_extrapolated": seconds * (2048 / size) ** 2,
    }


def quality_table(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Mean physics-set PSNR per dose and median seconds per image, per method."""
    payload = json.loads(path.read_text())
    out: dict[str, list[dict[str, Any]]] = {}
    for technique, methods in METHODS.items():
        rows = []
        for method in methods:
            sel = [
                r
                for r in payload["rows"]
                if r["group"] == "physics" and r["technique"] == technique and r["method"] == method
            ]
            if not sel:
                continue
            psnr = {
                str(d): float(np.mean([r["psnr"] for r in sel if r["dose"] == d])) for d in DOSES
            }
            rows.append(
                {
                    "method": method,
                    "label": LABELS[method],
                    "psnr_db": psnr,
                    "seconds_per_256": float(np.median([r["seconds"] for r in sel])),
                    "images": len({r["case"] for r in sel}),
                }
            )
        out[technique] = rows
    return out


def tables(payload: dict[str, Any]) -> str:
    size = payload["settings"]["size"]
    cost = [
        [
            r["label"],
            f"{r['parameters']:,}",
            f"{r['conv_gflop_per_mpix']:.1f}",
            f"{r['seconds']:.2f}",
            f"{r['seconds_2048_extrapolated']:.0f}",
        ]
        for r in payload["architectures"]
    ]
    ref = payload.get("reference")
    if ref is not None:
        cost.append(
            [
                ref["label"],
                "–",
                "–",
                f"{ref['seconds']:.2f}",
                f"{ref['seconds_2048_extrapolated']:.0f}",
            ]
        )
    parts = [
        markdown_table(
            [
                "network (random weights; time does not depend on them)",
                "parameters",
                "conv GFLOP / Mpixel",
                f"seconds at {size}²",
                "seconds at 2048² (extrapolated)",
            ],
            cost,
        )
    ]
    for technique, rows in payload["quality"].items():
        gauss = next((r for r in rows if r["method"] == "gaussian"), None)
        body = []
        for r in rows:
            gain = (
                " / ".join(f"{r['psnr_db'][str(d)] - gauss['psnr_db'][str(d)]:+.2f}" for d in DOSES)
                if gauss is not None
                else "–"
            )
            body.append(
                [
                    r["label"],
                    " / ".join(f"{r['psnr_db'][str(d)]:.2f}" for d in DOSES),
                    gain,
                    f"{r['seconds_per_256']:.3f}",
                ]
            )
        parts.append(
            f"\n{technique} physics set ({rows[0]['images']} images of 256²):\n\n"
            + markdown_table(
                [
                    "method",
                    "PSNR [dB] at 2 / 5 / 20 counts/px",
                    "over the best Gaussian [dB]",
                    "seconds per image (median)",
                ],
                body,
            )
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="frame side for the timings, pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality", type=Path, default=QUALITY_FILE)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quality_per_second.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"size": args.size, "threads": args.threads, "repeats": args.repeats},
        "architectures": time_architectures(args.size, args.repeats),
        "reference": time_reference(args.size, args.repeats),
        "quality": quality_table(args.quality) if args.quality.exists() else {},
    }
    text = tables(payload)
    payload["tables_markdown"] = text
    print(text)
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

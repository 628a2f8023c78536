"""Restoration quality on a held-out synthetic test set: bundled models vs classical baselines.

Usage::

    python benchmarks/restore_quality.py [--modalities stem tem] [--n 24] [--size 256] \
        [--out bench_out/restore_quality.json]

The test pairs come from the ``"test"`` stream of
:mod:`napari_emdenoise.training.datasets` (seed 0): disjoint by construction
from every training and validation pair. Noise parameters are drawn as the
paper draws them, so doses span 0.5–750 e⁻/pixel; results are also binned by
dose. Baselines:

* ``gaussian``: Gaussian filter with the best σ for *each* image (oracle).
* ``nlm``: scikit-image non-local means, h = k·σ̂ with σ̂ from
  ``estimate_sigma`` and k tuned on 8 validation pairs.
* ``bm3d``: BM3D (``pip install bm3d``) given the *true* noise std of each
  image (oracle; favours BM3D).

PSNR uses the clean target's peak-to-peak range; SSIM is Gaussian-weighted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

from napari_emdenoise.metrics import psnr, ssim  # noqa: E402
from napari_emdenoise.training.datasets import PairConfig, make_training_pair  # noqa: E402

DOSE_BINS = ((0.0, 5.0, "< 5"), (5.0, 50.0, "5–50"), (50.0, np.inf, "≥ 50"))
GAUSS_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
NLM_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2)


def dose_of(params) -> float:
    """Dose of a pair in e⁻/pixel (the shot/detector-noise layer's), inf if that layer is off."""
    for name in ("detector_noise", "shot_noise"):
        if name in params.layers and params[name].enabled:
            return float(params[name].dose)
    return float("inf")


def gaussian_best(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    outs = [gaussian_filter(x, s) for s in GAUSS_SIGMAS]
    return max(outs, key=lambda o: psnr(o, y))


def nlm(x: np.ndarray, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(x))
    return denoise_nl_means(
        x, h=factor * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
    ).astype(np.float32)


def tune_nlm(cfg: PairConfig) -> float:
    pairs = [make_training_pair(cfg, i, "val") for i in range(8)]
    scores = {k: np.mean([psnr(nlm(x, k), y) for x, y in pairs]) for k in NLM_FACTORS}
    return max(scores, key=scores.get)


def bm3d_oracle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import bm3d

    sigma = float(np.std(x - y))
    return np.asarray(bm3d.bm3d(x, sigma_psd=max(sigma, 1e-6)), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=["stem", "tem"])
    ap.add_argument("--kind", default="hr", choices=["hr", "lr"])
    ap.add_argument("--n", type=int, default=24, help="test images per modality")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="model names (default: the bundled model of each modality)",
    )
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_out/restore_quality.json"))
    args = ap.parse_args(argv)

    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.models.registry import list_models

    cards = list_models()
    try:
        import bm3d  # noqa: F401

        have_bm3d = not args.no_bm3d
    except ImportError:
        have_bm3d = False
        print("bm3d not installed: BM3D column skipped (pip install bm3d)")

    report: dict = {
        "benchmark": "restore_quality",
        "size": args.size,
        "n": args.n,
        "kind": args.kind,
        "split": "test",
        "seed": 0,
        "results": {},
    }
    for modality in args.modalities:
        cfg = PairConfig(modality=modality, kind=args.kind, patch_size=args.size, seed=0)
        models = (
            args.models
            if args.models is not None
            else [
                name for name, c in cards.items() if c.modality == modality and c.kind == args.kind
            ]
        )
        factor = tune_nlm(cfg)
        methods = ["raw", "gaussian (best σ)", f"nlm (h={factor}σ̂)"]
        if have_bm3d:
            methods.append("bm3d (true σ)")
        methods += [f"model:{m}" for m in models]
        rows: list[dict] = []
        timings = {m: 0.0 for m in methods}
        for i in range(args.n):
            x, y, params = make_training_pair(cfg, i, "test", return_params=True)
            row = {"index": i, "dose": dose_of(params)}
            for method in methods:
                t0 = time.perf_counter()
                if method == "raw":
                    out = x
                elif method.startswith("gaussian"):
                    out = gaussian_best(x, y)
                elif method.startswith("nlm"):
                    out = nlm(x, factor)
                elif method.startswith("bm3d"):
                    out = bm3d_oracle(x, y)
                else:
                    out = restore(x, model=method.split(":", 1)[1], device="cpu")
                timings[method] += time.perf_counter() - t0
                row[method] = {"psnr": psnr(out, y), "ssim": ssim(out, y)}
            rows.append(row)
            print(f"  {modality} {i + 1}/{args.n}", end="\r", file=sys.stderr)

        header = ["method", "PSNR all [dB]", "SSIM all"]
        bins = []
        for lo, hi, label in DOSE_BINS:
            members = [r for r in rows if lo <= r["dose"] < hi]
            if members:
                bins.append((label, members))
                header += [f"PSNR {label} e⁻/px (n={len(members)})"]
        table = []
        summary = {}
        for method in methods:
            p_all = float(np.mean([r[method]["psnr"] for r in rows]))
            s_all = float(np.mean([r[method]["ssim"] for r in rows]))
            cells = [method, f"{p_all:.2f}", f"{s_all:.3f}"]
            per_bin = {}
            for label, members in bins:
                v = float(np.mean([r[method]["psnr"] for r in members]))
                per_bin[label] = v
                cells.append(f"{v:.2f}")
            table.append(cells)
            summary[method] = {
                "psnr": p_all,
                "ssim": s_all,
                "psnr_by_dose": per_bin,
                "seconds_per_image": timings[method] / args.n,
            }
        print(
            f"\n### {args.kind.upper()}-{modality.upper()}: {args.n} held-out "
            f"{args.size}² test images\n"
        )
        print(markdown_table(header, table))
        best_classic = max(
            (m for m in methods if not m.startswith("model:") and m != "raw"),
            key=lambda m: summary[m]["psnr"],
        )
        for m in methods:
            if m.startswith("model:"):
                gain = summary[m]["psnr"] - summary[best_classic]["psnr"]
                print(f"\n{m}: {gain:+.2f} dB vs the best classical baseline ({best_classic})")
                if have_bm3d:
                    g = summary[m]["psnr"] - summary["bm3d (true σ)"]["psnr"]
                    print(f"{m}: {g:+.2f} dB vs BM3D (paper's margin: +6.51 dB)")
        report["results"][modality] = {"summary": summary, "per_image": rows, "nlm_factor": factor}
    path = write_json(args.out, report)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

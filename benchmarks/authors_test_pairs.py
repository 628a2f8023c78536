"""The authors' own synthetic test pairs: our models against theirs on their data.

Lobato, Friedrich & Van Aert ("Deep convolutional neural networks to restore
single-shot electron microscopy images", npj Computational Materials, 2024;
arXiv:2303.17025) ship eight distorted/clean pairs of 256² pixels for five of
their models with their released package ``tk_r_em`` (``sfr_hrstem``,
``sfr_hrsem``, ``sfr_lrstem``, ``sfr_lrtem``, ``sfr_lrsem``; ``sfr_hrtem``
comes without clean images). They were made by **their** implementation of
the distortion model this project re-implements from the paper, so they test
two things the other benchmarks cannot: whether our re-implementation of the
generator matches theirs (our models trained on ours, scored on theirs), and
how far our CPU-trained models are from theirs on the data theirs were made
for (a home game for the reference). They are not a physics test (see
``restore_quality.py`` for that). The pairs are read where ``tk_r_em`` is
installed and never copied into this repository; without it the script says
so and exits.

The distorted and clean images come in different 16-bit scalings, so every
output (the raw image included) is scored after the least-squares affine map
``a·output + b`` onto the clean image; PSNR uses the clean image's range.
The Gaussian filter gets its best σ per image (an oracle). A pair whose
input is its clean image (one of the ``sfr_lrsem`` pairs) is left out of the
means.

Methods: raw; best Gaussian; BM3D after the generalized Anscombe transform
and its exact unbiased inverse, with the noise parameters estimated blindly
from the image and their deviation scaled by the best of 0.25–4 per pair
(the pairs' noise is not known; an oracle like the Gaussian's σ); our model
of the same name alone
(``refine=False``), by default and with the safeguard; the authors' model of
the same name when ``tk_r_em`` and TensorFlow are installed.

Run: ``python benchmarks/authors_test_pairs.py [--models lrstem lrtem ...]``;
prints a table and writes ``benchmarks/results/authors_test_pairs.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import restore_quality as rq  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402

from napari_emdenoise.evaluation import (  # noqa: E402
    bm3d_gat,
    estimate_poisson_gaussian,
    psnr,
    ssim,
)

RESULTS = HERE / "results"
#: Our model for each of the authors' test files (their names, without "sfr_").
MODELS = ("hrstem", "hrsem", "lrstem", "lrtem", "lrsem")
#: Raw PSNR (dB) above which a pair's input is its clean image, up to rounding.
EXACT_INPUT_DB = 60.0
#: Factors on the blindly estimated noise deviation tried for BM3D (the best is kept).
BM3D_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: σ grid of the oracle Gaussian filter, pixels.
SIGMAS = np.geomspace(0.3, 8.0, 18)


def authors_pairs(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(distorted, clean)`` of ``sfr_<name>``, float64 ``(8, 256, 256)``; None if absent."""
    data = rq.authors_test_data(f"sfr_{name}")
    if data is None or "y" not in data:
        return None
    return data["x"].astype(np.float64), data["y"].astype(np.float64)


def affine_fit(output: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """``a·output + b`` with the least-squares ``a, b`` against ``clean``."""
    design = np.stack([output.ravel(), np.ones(output.size)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, clean.ravel(), rcond=None)
    return a * output + b


def scores(output: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    fitted = affine_fit(np.asarray(output, dtype=np.float64), clean)
    rng = float(np.ptp(clean))
    return {"psnr": psnr(fitted, clean, rng), "ssim": ssim(fitted, clean, rng)}


def best_gaussian_fitted(noisy: np.ndarray, clean: np.ndarray) -> tuple[dict[str, float], float]:
    """The Gaussian filter (σ = 0 included) with the best affine-fitted PSNR."""
    from scipy import ndimage

    best, best_sigma = scores(noisy, clean), 0.0
    for sigma in SIGMAS:
        s = scores(ndimage.gaussian_filter(noisy, sigma, mode="reflect"), clean)
        if s["psnr"] > best["psnr"]:
            best, best_sigma = s, float(sigma)
    return best, best_sigma


def best_bm3d_fitted(noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """BM3D-GAT with the blind noise estimate scaled by the best of ``BM3D_SCALES``.

    The pairs' noise is not known, and the blind estimate (a high-pass in
    small blocks) also counts row lines and scan noise: alone it made BM3D
    flatten some pairs below the raw image's score. Like the Gaussian's σ,
    the noise deviation's scale is chosen per pair against the clean image
    (an oracle).
    """
    gain, read = estimate_poisson_gaussian(noisy)
    best: dict[str, float] = {"psnr": -np.inf}
    for k in BM3D_SCALES:
        s = scores(bm3d_gat(noisy, gain=gain * k * k, sigma=read * k), clean)
        if s["psnr"] > best["psnr"]:
            best = {**s, "noise_scale": k, "gain": gain * k * k, "sigma": read * k}
    return best


def evaluate(name: str, reference: bool, bm3d: bool) -> list[dict] | None:
    pairs = authors_pairs(name)
    if pairs is None:
        return None
    rows = []
    for i, (x, y) in enumerate(zip(*pairs, strict=True)):
        x32 = x.astype(np.float32)
        gauss, sigma = best_gaussian_fitted(x, y)
        row = {
            "model": name,
            "index": i,
            "raw": scores(x, y),
            "best Gaussian": {**gauss, "sigma": sigma},
        }
        if bm3d:
            row["BM3D-GAT (best noise scale)"] = best_bm3d_fitted(x, y)
        row |= {
            "ours alone": scores(rq.run_model(name, x32, refine=False), y),
            "ours default": scores(rq.run_model(name, x32), y),
            "ours + safeguard": scores(rq.run_model(name, x32, safeguard=True), y),
        }
        if reference:
            row["authors'"] = scores(rq.run_reference(f"sfr_{name}", x32), y)
        rows.append(row)
        print(
            f"sfr_{name}[{i}]: "
            + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in row.items() if isinstance(v, dict)),
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-reference", action="store_true", help="skip the authors' models")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D")
    ap.add_argument("--out", type=Path, default=RESULTS / "authors_test_pairs.json")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("tk_r_em") is None:
        print("tk_r_em is not installed: its test pairs are not available; nothing to do")
        return 0
    why = rq.reference_available()
    reference = not args.no_reference and why is None
    if not args.no_reference and why is not None:
        print(f"authors' models skipped: {why}")
    bm3d = not args.no_bm3d and importlib.util.find_spec("bm3d") is not None
    all_rows: list[dict] = []
    for name in args.models:
        rows = evaluate(name, reference, bm3d)
        if rows is None:
            print(f"sfr_{name}: no clean images in tk_r_em's test data; skipped")
            continue
        all_rows += rows
    methods = [k for k in all_rows[0] if isinstance(all_rows[0][k], dict)] if all_rows else []
    table = []
    for name in args.models:
        pairs = [r for r in all_rows if r["model"] == name]
        # A pair whose input is its clean image (no distortion drawn) has an
        # unbounded raw PSNR that would swamp the mean: counted apart.
        rows = [r for r in pairs if r["raw"]["psnr"] < EXACT_INPUT_DB]
        if not rows:
            continue
        exact = len(pairs) - len(rows)
        table.append(
            [f"sfr_{name} ({len(rows)}" + (f"; {exact} undistorted left out)" if exact else ")")]
            + [
                f"{np.mean([r[m]['psnr'] for r in rows]):.2f} / "
                f"{np.mean([r[m]['ssim'] for r in rows]):.3f}"
                for m in methods
            ]
        )
    text = markdown_table(["pairs", *methods], table)
    print("\nmean PSNR [dB] / SSIM after the affine fit to the clean image\n" + text)
    write_json(args.out, {"rows": all_rows, "methods": methods, "table_markdown": text})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

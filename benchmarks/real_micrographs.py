"""Real micrographs, no ground truth: how much of the lattice each restoration keeps.

A restoration is only trusted if it holds on images nobody here generated.
Real micrographs have no clean reference, so this benchmark measures what can
be measured without one (``napari_emdenoise.evaluation.bragg``):

* **Bragg transfer**: at each lattice peak of the input's power spectrum
  (power ≥ 50 × the median at that frequency), the share of the input's
  Fourier coefficient the output keeps (1 kept, 0 erased; noise biases it
  by < 2 %). Reported as the mean over the peaks of each band of periods:
  2–4 pixels (near the Nyquist limit, where real scans also carry
  periodic scan noise), 4–8 pixels and 8 pixels up.
* **Residual / noise**: the variance of ``input − output`` divided by the
  noise variance expected from the image's own mean–variance line
  (``estimate_poisson_gaussian``): about 1 when only noise was removed,
  above 1 when signal went with it (or when the restoration corrects scan
  distortions, which real S(T)EM images have), below 1 when noise was left.

Images: files given with ``--images`` (anything the plugin's reader opens:
2-D images or stacks, one image per frame), and, when the ``tk_r_em``
package is installed, the experimental HR-STEM images that Lobato et al.
ship with their released models ("Deep convolutional neural networks to
restore single-shot electron microscopy images", npj Computational Materials,
2024; arXiv:2303.17025), read where the package is installed and never copied
into this repository. Without either, it says so and exits.

Methods: the raw image; our ``hrstem`` alone, with the Wiener refinement,
with the refinement and the lattice pass (the default) and with the safeguard; a
Gaussian filter of 1 pixel (a linear reference with a known transfer);
BM3D after the generalized Anscombe transform with blindly estimated noise
parameters; and the authors' released ``sfr_hrstem`` when ``tk_r_em`` and
TensorFlow are installed (outputs compared, nothing copied).

Run: ``python benchmarks/real_micrographs.py [--images FILE ...] [--no-bm3d]``;
it prints a table, writes ``benchmarks/results/real_micrographs.json`` and a
montage ``benchmarks/results/real_micrographs_montage.png`` (input | outputs
| residuals ``input − output``, a 160-pixel crop of each image).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import restore_quality as rq  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402

from napari_emdenoise.evaluation import (  # noqa: E402
    bm3d_gat,
    bragg_peaks,
    bragg_transfer,
    estimate_poisson_gaussian,
)

RESULTS = HERE / "results"
#: Bands of lattice periods (pixels) over which the transfer is averaged.
BANDS = ((2.0, 4.0), (4.0, 8.0), (8.0, np.inf))
#: Largest side processed (a central crop of larger images), pixels.
MAX_SIDE = 1024
CROP = 160


def authors_images() -> list[tuple[str, np.ndarray]]:
    """The experimental HR-STEM images shipped with ``tk_r_em`` (empty if not installed).

    Oriented as ``tk_r_em``'s own loader gives them (fast-scan axis along x);
    see ``restore_quality.authors_test_data``.
    """
    images = []
    for name in ("exp_hrstem", "sgl_exp_hrstem"):
        data = rq.authors_test_data(name)
        if data is None:
            continue
        images += [(f"{name}[{i}]", frame) for i, frame in enumerate(data["x"])]
    return images


def file_images(paths: list[str]) -> list[tuple[str, np.ndarray]]:
    from napari_emdenoise.io.readers import read_em

    images = []
    for path in paths:
        for data, meta in read_em(path):
            arr = np.asarray(data, dtype=np.float32)
            frames = arr.reshape(-1, *arr.shape[-2:])
            name = meta.get("name", Path(path).stem)
            images += [(f"{name}[{i}]", f) for i, f in enumerate(frames)]
    return images


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    r0, c0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return image[r0 : r0 + side, c0 : c0 + side]


def methods(bm3d: bool) -> dict[str, Callable[[np.ndarray, tuple[float, float]], np.ndarray]]:
    from scipy import ndimage

    table: dict[str, Callable[[np.ndarray, tuple[float, float]], np.ndarray]] = {
        "hrstem (network alone)": lambda x, _n: rq.run_model("hrstem", x, refine=False),
        "hrstem + Wiener": lambda x, _n: rq.run_model("hrstem", x, lattice=False),
        "hrstem + Wiener + lattice (default)": lambda x, _n: rq.run_model("hrstem", x),
        "hrstem + Wiener + lattice + safeguard": lambda x, _n: rq.run_model(
            "hrstem", x, safeguard=True
        ),
        "Gaussian 1 px": lambda x, _n: ndimage.gaussian_filter(x, 1.0).astype(np.float32),
    }
    if bm3d and importlib.util.find_spec("bm3d") is not None:
        table["BM3D-GAT (blind)"] = lambda x, n: bm3d_gat(x, gain=n[0], sigma=n[1]).astype(
            np.float32
        )
    if rq.reference_available() is None:
        table["authors' sfr_hrstem"] = lambda x, _n: rq.run_reference("sfr_hrstem", x)
    return table


def band_label(band: tuple[float, float]) -> str:
    lo, hi = band
    return f"{lo:g}–{hi:g} px" if np.isfinite(hi) else f"≥ {lo:g} px"


def score(image: np.ndarray, out: np.ndarray, peaks, noise: tuple[float, float]) -> dict:
    t = bragg_transfer(image, out, peaks)
    period = 1.0 / np.maximum(peaks.frequency, 1e-12)
    bands = {}
    for band in BANDS:
        sel = (period >= band[0]) & (period < band[1])
        bands[band_label(band)] = float(np.mean(t[sel])) if sel.any() else float("nan")
    expected_var = noise[0] * float(np.mean(image)) + noise[1] ** 2
    return {
        "transfer": bands,
        "transfer_min": float(np.min(t)) if t.size else float("nan"),
        "residual_over_noise": float(np.var(image - out) / max(expected_var, 1e-12)),
    }


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    sep = np.full((tiles[0].shape[0], 2), 255, np.uint8)
    return np.concatenate(sum(([t, sep] for t in tiles), []), axis=1)


def montage(rows: list[tuple[str, np.ndarray, dict[str, np.ndarray]]], path: Path) -> None:
    """One block per image: top row input and outputs, bottom row residuals."""
    from PIL import Image, ImageDraw

    blocks = []
    for name, image, outs in rows:
        x = central_crop(image, CROP)
        lo, hi = np.percentile(x, [0.5, 99.5])
        span = 0.5 * (hi - lo)
        top = [rq._to_u8(x, lo, hi)] + [
            rq._to_u8(central_crop(o, CROP), lo, hi) for o in outs.values()
        ]
        bottom = [np.full_like(top[0], 255)] + [
            rq._to_u8(x - central_crop(o, CROP), -span, span) for o in outs.values()
        ]
        header = Image.new("L", (_row(top).shape[1], 16), 255)
        draw = ImageDraw.Draw(header)
        for i, label in enumerate(["input " + name, *outs]):
            text = label.replace("σ", "sigma").replace("’", "'")[:26]
            draw.text((i * (CROP + 2) + 3, 2), text, fill=0)
        blocks.append(
            np.concatenate(
                [
                    np.asarray(header),
                    _row(top),
                    np.full((2, _row(top).shape[1]), 255, np.uint8),
                    _row(bottom),
                ]
            )
        )
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 6), (0, width - b.shape[1])), constant_values=255) for b in blocks]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(blocks)).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", nargs="*", default=[], help="image files (2-D or stacks)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D (slow on large images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "real_micrographs.json")
    ap.add_argument("--montage", type=Path, default=RESULTS / "real_micrographs_montage.png")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    images = file_images(args.images) + authors_images()
    if not images:
        print(
            "no real micrographs: pass --images FILE..., or install tk_r_em "
            "(its experimental HR-STEM images are read where it is installed)"
        )
        return 0
    table = methods(not args.no_bm3d)
    results, rows, shown = [], [], []
    for name, image in images:
        image = central_crop(np.asarray(image, np.float32), MAX_SIDE)
        noise = estimate_poisson_gaussian(image)
        peaks = bragg_peaks(image)
        period = 1.0 / np.maximum(peaks.frequency, 1e-12)
        entry = {
            "image": name,
            "shape": list(image.shape),
            "noise_gain_sigma": list(noise),
            "peaks_per_band": {
                band_label(b): int(np.sum((period >= b[0]) & (period < b[1]))) for b in BANDS
            },
            "periods_px": sorted(round(float(x), 2) for x in period),
            "methods": {},
        }
        outs = {}
        for label, fn in table.items():
            t0 = time.perf_counter()
            out = np.asarray(fn(image, noise), dtype=np.float32)
            entry["methods"][label] = {
                **score(image, out, peaks, noise),
                "seconds": time.perf_counter() - t0,
            }
            outs[label] = out
        results.append(entry)
        shown.append((name, image, outs))
        counts = "/".join(str(v) for v in entry["peaks_per_band"].values())
        for label, m in entry["methods"].items():
            rows.append(
                [name, counts, label]
                + [f"{v:.2f}" for v in m["transfer"].values()]
                + [
                    f"{m['transfer_min']:.2f}",
                    f"{m['residual_over_noise']:.2f}",
                    f"{m['seconds']:.1f}",
                ]
            )
        print(f"{name}: done", flush=True)
    bands = [band_label(b) for b in BANDS]
    header = ["image", "peaks per band", "method", *(f"transfer {b}" for b in bands),
              "transfer min", "residual / noise var", "s"]  # fmt: skip
    text = markdown_table(header, rows)
    summary = []
    for label in table:
        row = [label]
        for b in bands:
            vals = [e["methods"][label]["transfer"][b] for e in results]
            row.append(f"{np.nanmean(vals):.2f}" if np.isfinite(vals).any() else "–")
        resid = [e["methods"][label]["residual_over_noise"] for e in results]
        summary.append([*row, f"{np.mean(resid):.2f}"])
    text += "\n\nmean over images (each image counts once per band it has peaks in)\n"
    text += markdown_table(
        ["method", *(f"transfer {b}" for b in bands), "residual / noise var"], summary
    )
    print(text)
    montage(shown, args.montage)
    write_json(args.out, {"results": results, "tables_markdown": text})
    print(f"\nwrote {args.out} and {args.montage}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

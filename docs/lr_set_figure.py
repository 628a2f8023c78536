"""The figure of docs/restoration_fidelity.md, section 18: LR models on low-magnification scenes.

Input | truth | network alone | default | default − truth, for a TEM scene (gold
particles on amorphous carbon, 1 Å/pixel) restored with ``lrtem`` and
``hrtem`` at 100 counts/pixel, and a HAADF scene restored with ``lrstem`` at
100 and 5 counts/pixel (central 128² pixels). Needs the cached set
(``python benchmarks/physics_set_lr.py``). Writes ``docs/lr_set_residuals.png``.
Run from the repository root::

    python docs/lr_set_figure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import physics_set  # noqa: E402

from napari_emdenoise.engine import restore  # noqa: E402
from napari_emdenoise.evaluation import psnr  # noqa: E402

ROWS = ((1, "lrtem", 100.0), (1, "hrtem", 100.0), (4, "lrstem", 100.0), (3, "lrstem", 5.0))


def main() -> None:
    records, arrays = physics_set.load(ROOT / "benchmarks/data/lr")
    fig, axes = plt.subplots(len(ROWS), 5, figsize=(12.5, 10.4))
    crop = (slice(64, 192), slice(64, 192))
    for ax_row, (index, model, dose) in zip(axes, ROWS, strict=True):
        clean01 = arrays["images"][index].astype(np.float64)
        noisy, clean = physics_set.add_noise(
            clean01, dose, np.random.default_rng(0), read_noise=0.5
        )
        noisy = noisy.astype(np.float32)
        net = restore(noisy, model=model, refine=False)
        out = restore(noisy, model=model)
        panels = (
            ("input", noisy),
            ("truth", clean),
            (f"{model} alone {psnr(net, clean):.1f} dB", net),
            (f"{model} default {psnr(out, clean):.1f} dB", out),
            ("default − truth", out - clean),
        )
        lo, hi = np.percentile(clean[crop], (0.5, 99.5))
        name = records[index]["simulation"]
        for k, (ax, (title, image)) in enumerate(zip(ax_row, panels, strict=True)):
            scale = {} if k == 4 else {"vmin": lo, "vmax": hi}
            ax.imshow(image[crop], cmap="gray", **scale)
            ax.set_title(f"{name}, {dose:g} c/px: {title}" if k == 0 else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(ROOT / "docs/lr_set_residuals.png", dpi=60)


if __name__ == "__main__":
    main()

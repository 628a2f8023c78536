"""The figure of docs/restoration_fidelity.md, section 12: what each step of `restore` keeps.

Multislice images of the physics set (``benchmarks/physics_set.py``, cached in
``benchmarks/data``) at 5 counts/pixel with Poisson noise, one row each:
input | network alone | + Wiener refinement | + lattice pass (the default) |
clean | default − clean, a 128-pixel corner, PSNR in the titles. Run from the
repository root::

    python docs/lattice_pass_figure.py

It writes ``docs/lattice_pass.png`` (about a minute on one core).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

ROWS = ("sto001_haadf@0.2", "au001_hrtem@0.14", "graphene_hrtem@0.09", "graphene_hrtem@0.15")
DOSE = 5.0
CROP = 128


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import restore_quality as rq

    from napari_emdenoise.engine import restore
    from napari_emdenoise.evaluation import psnr

    cases = rq.physics_cases((DOSE,), 0.0, False, rq.HERE / "data")
    cases = [next(c for c in cases if c.name.startswith(prefix)) for prefix in ROWS]
    fig, axes = plt.subplots(len(cases), 6, figsize=(15, 2.7 * len(cases)))
    for row, case in zip(axes, cases):
        model = "hrstem" if case.modality == "stem" else "hrtem"
        default = restore(case.noisy, model=model, device="cpu")
        panels = [
            ("input", case.noisy),
            (f"{model} alone", restore(case.noisy, model=model, device="cpu", refine=False)),
            ("+ Wiener", restore(case.noisy, model=model, device="cpu", lattice=False)),
            ("+ lattice pass (default)", default),
        ]
        lo, hi = np.percentile(case.clean, [1, 99])
        for ax, (title, image) in zip(row, panels):
            ax.imshow(image[:CROP, :CROP], cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{title}: {psnr(image, case.clean):.1f} dB", fontsize=8)
        row[4].imshow(case.clean[:CROP, :CROP], cmap="gray", vmin=lo, vmax=hi)
        row[4].set_title(f"clean: {case.name}, {DOSE:g} counts/px", fontsize=8)
        error = default - case.clean
        span = float(np.percentile(np.abs(error), 99))
        row[5].imshow(error[:CROP, :CROP], cmap="RdBu", vmin=-span, vmax=span)
        row[5].set_title("default − clean", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    out = ROOT / "docs" / "lattice_pass.png"
    fig.savefig(out, dpi=56)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

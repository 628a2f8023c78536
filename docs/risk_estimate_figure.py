"""The figure of docs/restoration_fidelity.md, section 16: estimated against true error.

Reads ``benchmarks/results/risk_accuracy.json`` (``python
benchmarks/risk_accuracy.py``): every image of the multislice physics set at
2 / 5 / 20 counts/pixel, four restorations each, the error estimated from the
noisy image with the fitted noise against the true one. Writes
``docs/risk_estimate_physics.png``. Run from the repository root::

    python docs/risk_estimate_figure.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {"default": "o", "network alone": "s", "gaussian 1 px": "^", "gaussian 2 px": "v"}


def main() -> None:
    rows = json.loads((ROOT / "benchmarks/results/risk_accuracy.json").read_text())["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, tech in zip(axes, ("HAADF", "HRTEM"), strict=True):
        hidden = 0
        for method, marker in MARKERS.items():
            sel = [r for r in rows if r["technique"] == tech and r["method"] == method]
            true = np.array([r["mse"] for r in sel])
            est = np.array([r["estimate_fitted"] for r in sel])
            hidden += int((est <= 0).sum())
            ok = est > 0
            ax.loglog(true[ok], est[ok], marker, ms=4, alpha=0.7, label=method)
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        for factor in (2.0, 0.5):  # a factor of two either way
            ax.plot([lo, hi], [factor * lo, factor * hi], "k:", lw=0.6)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("true mean squared error [counts²]")
        ax.set_ylabel("estimated from the noisy image [counts²]")
        note = f" ({hidden} estimate{'s' if hidden != 1 else ''} ≤ 0 not shown)" if hidden else ""
        ax.set_title(f"{tech}, 2–20 counts/pixel{note}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs/risk_estimate_physics.png", dpi=110)


if __name__ == "__main__":
    main()

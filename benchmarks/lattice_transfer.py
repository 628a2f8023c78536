"""How much of a fine lattice each restoration keeps, by lattice period.

    python benchmarks/lattice_transfer.py [--models hrstem hrtem] [--weights PATH ...]

A noisy square lattice of cosine columns (``evaluation.lattice_gain``: no
component constant along a row or a column, so removing scan-line offsets is
not charged) at 20 and 200 counts/pixel and periods of 4–24 pixels, at 0° and
30°. The gain is the lattice's amplitude after restoration over its amplitude
in the noise-free image: 1 keeps it, 0 erases it. A multislice HAADF image of
Au [001] at 0.3 Å/pixel repeats every 6.8 pixels, MoS₂ at 0.25 Å/pixel every
11 pixels with harmonics at 6.3 and 5.5.

Rows: BM3D after the generalized Anscombe transform (true noise), each
bundled model alone, with the Wiener refinement, with the Wiener refinement
and the lattice pass (the default) and with the safeguard, any ``--weights``
files (e.g. a training run's ``.safetensors``) and, when ``tk_r_em`` and
TensorFlow are installed (see ``restore_quality.py``), the authors' released
``sfr_hrstem`` and ``sfr_hrtem`` (outputs compared only). Results in
``benchmarks/results/lattice_transfer.json``; about 2 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info, markdown_table, write_json  # noqa: E402

from napari_emdenoise.evaluation import bm3d_gat, lattice_gain  # noqa: E402

PERIODS = (4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)
DOSES = (20.0, 200.0)
ANGLES = (0.0, 30.0)
SEED = 12


def methods(models: list[str], weights: list[Path], have_bm3d: bool, reference: bool) -> dict:
    from napari_emdenoise.engine import restore

    out = {}
    if have_bm3d:
        out["BM3D-GAT"] = lambda x: bm3d_gat(x, 1.0, 0.0)
    for name in models:
        out[f"{name} (network alone)"] = lambda x, n=name: restore(
            x, model=n, device="cpu", refine=False
        )
        out[f"{name} + Wiener"] = lambda x, n=name: restore(x, model=n, device="cpu", lattice=False)
        out[f"{name} + Wiener + lattice (default)"] = lambda x, n=name: restore(
            x, model=n, device="cpu"
        )
        out[f"{name} + Wiener + lattice + safeguard"] = lambda x, n=name: restore(
            x, model=n, device="cpu", safeguard=True
        )
    for path in weights:
        out[path.as_posix()] = lambda x, p=path: restore(x, model=p, device="cpu")
    if reference:
        from restore_quality import run_reference

        for name in ("sfr_hrstem", "sfr_hrtem"):
            out[f"authors' {name}"] = lambda x, n=name: run_reference(n, x)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["hrstem", "hrtem"])
    ap.add_argument("--weights", nargs="*", type=Path, default=[], help="extra .safetensors")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the authors' models")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lattice_transfer.json")
    args = ap.parse_args(argv)
    have_bm3d = not args.no_bm3d
    if have_bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            print("bm3d not installed: BM3D row skipped")
            have_bm3d = False
    reference = False
    if not args.no_reference:
        from restore_quality import reference_available

        why_not = reference_available()
        reference = why_not is None
        if why_not:
            print(f"authors' models skipped: {why_not}")
    t0 = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, fn in methods(args.models, args.weights, have_bm3d, reference).items():
        results[label] = {}
        for j, dose in enumerate(DOSES):
            gains = {}
            for i, period in enumerate(PERIODS):
                g = [
                    lattice_gain(fn, period, dose, np.random.default_rng([SEED, i, j, k]), angle=a)
                    for k, a in enumerate(ANGLES)
                ]
                gains[f"{period:g}"] = float(np.mean(g))
            results[label][f"{dose:g}"] = gains
    header = ["method"] + [f"{p:g} px" for p in PERIODS]
    tables = []
    for dose in DOSES:
        rows = [
            [label] + [f"{results[label][f'{dose:g}'][f'{p:g}']:.2f}" for p in PERIODS]
            for label in results
        ]
        title = f"Lattice gain at {dose:g} counts/pixel (1 = kept, 0 = erased), by period"
        table = markdown_table(header, rows)
        print(f"\n#### {title}\n\n{table}")
        tables.append(f"#### {title}\n\n{table}")
    payload = {
        "benchmark": "lattice_transfer",
        "machine": machine_info(),
        "seed": SEED,
        "periods_px": list(PERIODS),
        "doses": list(DOSES),
        "angles_deg": list(ANGLES),
        "modulation": 0.5,
        "size_px": 128,
        "gain": results,
        "seconds_total": time.perf_counter() - t0,
        "tables_markdown": "\n\n".join(tables),
    }
    print(f"\nwrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

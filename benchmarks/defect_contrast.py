"""How much of a vacancy's and a substitution's contrast each restoration keeps.

    python benchmarks/defect_contrast.py [--models hrstem] [--seeds 3] [--no-reference]

The defect probe (``evaluation.defect_probe``): a square lattice of Gaussian
columns (σ 0.7 px every 4 px, 0.8 px every 5 px, 1 px every 6 or 12 px, 256²,
background 0.1 of a column peak) in which 3 % of the sites are empty
(vacancies) and 3 % hold a column 1.5 times as strong (substitutions, a
heavier atom in HAADF), with Poisson noise at 2, 5 and 20 counts/pixel.
Defects are what atomic-resolution images are usually recorded for, and the
perfect crystals of the physics set (``benchmarks/physics_set.py``) have
none: there, averaging over unit cells scores well. Here it fills the
vacancies and dims the substitutions.

For each image, the intensity summed over a 1.5-px disk at every site,
relative to the normal sites, is compared with the clean image's
(``evaluation.defect_contrast``): the share of the vacancy contrast kept (1 =
as empty as in the clean image, 0 = as bright as a normal column), the share
of the substitution contrast kept, and the RMS site-intensity error (relative
to a normal column). Methods: the raw image, the Gaussian filter of best PSNR
(oracle σ), BM3D with the generalized Anscombe transform (when ``bm3d`` is
installed), each model alone / + Wiener refinement / the default (+ Wiener +
lattice pass) / the default with ``keep_defects=True`` (``engine/deviations.py``),
and the authors' released CGRDN (``tk_r_em``) when installed.
Means over ``--seeds`` noise and defect draws. The probe is an incoherent,
Z-contrast image (intensity proportional to the column's weight), so the
default is the HAADF model; in HRTEM a column's contrast is not proportional
to its weight (``--models hrtem`` runs it anyway, as a stress test).

What ``keep_defects`` costs where there is no defect to keep: the mean PSNR of
the default (``hrstem`` and ``hrtem``) with and without it on the multislice physics set
(``benchmarks/physics_set.py``, both techniques, 5 and 20 counts/pixel) and on
24 held-out pairs per modality of our own generator (whose scan distortions
the network corrects and the pass puts back). ``--no-cost`` skips it. Results in
``benchmarks/results/defect_contrast.json``; about 15 minutes on 2 cores
(the cost part about 6).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info, markdown_table, write_json  # noqa: E402

#: (spacing, column σ) of the probe lattices, pixels.
LATTICES = ((4.0, 0.7), (5.0, 0.8), (6.0, 1.0), (12.0, 1.0))
DOSES = (2.0, 5.0, 20.0)
REFERENCE = {"hrstem": "sfr_hrstem", "hrtem": "sfr_hrtem"}


def methods_for(models: list[str], reference: bool) -> dict[str, Callable]:
    """Label → function(noisy, clean) returning the restored image."""
    from napari_emdenoise.engine import restore
    from napari_emdenoise.evaluation import best_gaussian, bm3d_gat

    methods: dict[str, Callable] = {
        "raw": lambda x, c: x,
        "best Gaussian (oracle σ)": lambda x, c: best_gaussian(x, c)[0],
    }
    if importlib.util.find_spec("bm3d") is not None:
        methods["BM3D-GAT"] = lambda x, c: bm3d_gat(x, 1.0, 0.0)
    for m in models:
        methods[f"{m} (network alone)"] = lambda x, c, m=m: restore(x, model=m, refine=False)
        methods[f"{m} + Wiener"] = lambda x, c, m=m: restore(x, model=m, lattice=False)
        methods[f"{m} (default)"] = lambda x, c, m=m: restore(x, model=m)
        methods[f"{m} default + keep defects"] = lambda x, c, m=m: restore(
            x, model=m, keep_defects=True
        )
    if reference:
        import restore_quality

        why = restore_quality.reference_available()
        if why is None:
            for m in models:
                if m in REFERENCE:
                    name = REFERENCE[m]
                    methods[f"authors' {name}"] = lambda x, c, n=name: (
                        restore_quality.run_reference(n, x)
                    )
        else:
            print(f"authors' models not run: {why}")
    return methods


def keep_defects_cost(models: list[str]) -> dict[str, dict[str, float]]:
    """Mean PSNR of the default with and without ``keep_defects`` where defects are absent."""
    import physics_set
    import restore_quality

    from napari_emdenoise.engine import restore
    from napari_emdenoise.evaluation import psnr

    groups: dict[str, list[tuple[float, float]]] = {}
    modality = {"hrstem": "stem", "hrtem": "tem"}
    try:
        cases = restore_quality.physics_cases((5.0, 20.0), 0.5, False, physics_set.DEFAULT_DIR)
    except FileNotFoundError:
        cases = []
    cases += restore_quality.synthetic_cases(24)
    for case in cases:
        model = next((m for m in models if modality.get(m) == case.modality), None)
        if model is None:
            continue
        default = restore(case.noisy, model=model)
        kept = restore(case.noisy, model=model, keep_defects=True)
        name = (
            f"physics {case.meta['technique']}, {case.dose:g} counts/px ({model})"
            if case.group == "physics"
            else f"synthetic {case.modality} pairs ({model})"
        )
        groups.setdefault(name, []).append((psnr(default, case.clean), psnr(kept, case.clean)))
    return {
        name: {
            "default": float(np.mean([a for a, _ in v])),
            "keep_defects": float(np.mean([b for _, b in v])),
            "worst": float(min(b - a for a, b in v)),
            "images": len(v),
        }
        for name, v in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["hrstem"])
    ap.add_argument("--seeds", type=int, default=3, help="noise and defect draws per case")
    ap.add_argument("--no-reference", action="store_true", help="skip the authors' models")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost of keep_defects")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "defect_contrast.json")
    args = ap.parse_args(argv)

    from napari_emdenoise.evaluation import defect_contrast, defect_probe, psnr

    methods = methods_for(args.models, not args.no_reference)
    results: dict[str, dict[str, dict[str, float]]] = {}
    t0 = time.perf_counter()
    for spacing, width in LATTICES:
        for dose in DOSES:
            key = f"{spacing:g} px, {dose:g} counts/px"
            scores: dict[str, list] = {label: [] for label in methods}
            for seed in range(args.seeds):
                rng = np.random.default_rng([11, int(spacing), int(dose), seed])
                probe = defect_probe(rng, spacing=spacing, width=width, dose=dose)
                for label, method in methods.items():
                    out = np.asarray(method(probe.noisy, probe.clean), dtype=np.float64)
                    c = defect_contrast(out, probe)
                    scores[label].append(
                        (c.vacancy, c.substitution, c.intensity_rms, psnr(out, probe.clean))
                    )
            for label, s in scores.items():
                v, sub, rms, p = np.mean(s, axis=0)
                results.setdefault(label, {})[key] = {
                    "vacancy_kept": float(v),
                    "substitution_kept": float(sub),
                    "intensity_rms": float(rms),
                    "psnr_db": float(p),
                }
            print(f"{key}: done ({time.perf_counter() - t0:.0f} s)", flush=True)

    cases = list(next(iter(results.values())))
    header = ["method"] + cases

    def table(fmt: Callable[[dict], str]) -> str:
        rows = [[label] + [fmt(v[c]) for c in cases] for label, v in results.items()]
        return markdown_table(header, rows)

    tables = {
        "vacancy / substitution contrast kept": table(
            lambda e: f"{e['vacancy_kept']:.2f} / {e['substitution_kept']:.2f}"
        ),
        "site-intensity RMS error / PSNR [dB]": table(
            lambda e: f"{e['intensity_rms']:.3f} / {e['psnr_db']:.2f}"
        ),
    }
    cost = {} if args.no_cost else keep_defects_cost(["hrstem", "hrtem"])
    if cost:
        rows = [[k, f"{v['default']:.2f}", f"{v['keep_defects']:.2f}", f"{v['worst']:+.2f}"]
                for k, v in cost.items()]  # fmt: skip
        header = ["images", "default [dB]", "+ keep defects [dB]", "worst image [dB]"]
        tables["cost of keep_defects (mean PSNR)"] = markdown_table(header, rows)
    for title, t in tables.items():
        print(f"\n{title}\n\n{t}")
    payload = {
        "benchmark": "defect_contrast",
        "machine": machine_info(),
        "probe": {"size": 256, "width_px": 1.0, "vacancies": 0.03, "substitutions": 0.03},
        "seeds": args.seeds,
        "seconds_total": time.perf_counter() - t0,
        "lattices": [list(lw) for lw in LATTICES],
        "results": results,
        "keep_defects_cost": cost,
        "tables_markdown": tables,
    }
    print(f"\nwrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

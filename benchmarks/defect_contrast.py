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

A multislice check of the same question (validation only): a monolayer MoS₂
supercell with S mono-vacancies and W substitutions simulated with abTEM
(``physics_set.mos2_with_defects``, HAADF, cached in
``benchmarks/data/defects_mos2.npz``, about 5 minutes once), at 0.1 and
0.2 Å/pixel and 2, 5 and 20 counts/pixel (Poisson): the share of the S
vacancy's contrast against the S₂ columns and of the W column's against the
Mo columns kept (intensity summed over 0.5 Å).

What ``keep_defects`` costs where there is no defect to keep: the mean PSNR of
the default (``hrstem`` and ``hrtem``) with and without it on the multislice physics set
(``benchmarks/physics_set.py``, both techniques, 5 and 20 counts/pixel) and on
24 held-out pairs per modality of our own generator (whose scan distortions
the network corrects and the pass puts back). ``--no-cost`` skips it. Results in
``benchmarks/results/defect_contrast.json``; about 10 minutes on 2 cores
(the cost part about 5; the first run simulates the MoS₂ supercell, about 19
more minutes on one core).
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


#: The multislice defect set: monolayer MoS₂ with S mono-vacancies and W substitutions
#: (``physics_set.mos2_with_defects``), HAADF, rendered at these pixel sizes [Å].
DEFECT_PIXEL_SIZES = (0.1, 0.2)
DEFECT_CACHE = HERE / "data" / "defects_mos2.npz"
#: Integration radius of a column in the multislice images, Å.
MULTISLICE_RADIUS_A = 0.5


def multislice_defects(path: Path = DEFECT_CACHE) -> list[dict]:
    """Clean HAADF images of the MoS₂ defect supercell (abTEM), cached in ``path``.

    Each entry: ``image`` (mean 1), ``pixel_size`` [Å], and the pixel positions
    of the normal and defect columns: ``Mo``, ``W``, ``S2``, ``S`` (a
    mono-vacancy). About 5 minutes to simulate on 2 cores, once.
    """
    import physics_set

    if not path.exists():
        physics_set._configure_abtem()
        sim = physics_set.Simulation(
            "mos2_defects_haadf", physics_set.DEFECT_CRYSTAL, "[001]", "HAADF", 300e3, 1,
            DEFECT_PIXEL_SIZES, physics_set._HAADF,
        )  # fmt: skip
        t0 = time.perf_counter()
        cell_img, info = physics_set.simulate_cell(sim, 2, physics_set.DEFECT_SEED)
        cell = physics_set.structure(sim.crystal, sim.zone_axis)
        xy, labels = physics_set.projected_columns(cell)
        cell_A = tuple(info["cell_A"])
        rng = np.random.default_rng(physics_set.DEFECT_SEED)
        arrays: dict[str, np.ndarray] = {}
        sigma = sim.optics["source_fwhm_A"] / (2 * np.sqrt(2 * np.log(2)))
        for k, p in enumerate(DEFECT_PIXEL_SIZES):
            rot = float(rng.uniform(0, 2 * np.pi))
            origin = (float(rng.uniform(0, cell_A[0])), float(rng.uniform(0, cell_A[1])))
            img = physics_set.render(
                cell_img, cell_A, 256, p, rot, origin, info["band_limit_per_A"],
                source_sigma_A=sigma,
            )  # fmt: skip
            img = np.clip(img, 0, None)
            arrays[f"image_{k}"] = (img / img.mean()).astype(np.float32)
            pos, kinds = physics_set.column_pixels(xy, cell_A, 256, p, rot, origin, margin=-4)
            arrays[f"columns_{k}"] = pos.astype(np.float32)
            arrays[f"kinds_{k}"] = kinds
        arrays["labels"] = np.array(labels)
        arrays["pixel_sizes"] = np.array(DEFECT_PIXEL_SIZES)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        print(f"simulated the MoS2 defect supercell in {time.perf_counter() - t0:.0f} s -> {path}")
    with np.load(path) as z:
        labels = [str(v) for v in z["labels"]]
        out = []
        for k, p in enumerate(z["pixel_sizes"]):
            pos, kinds = z[f"columns_{k}"], z[f"kinds_{k}"]
            sites = {name: pos[[labels[t] == name for t in kinds]] for name in set(labels)}
            out.append({"image": z[f"image_{k}"], "pixel_size": float(p), "sites": sites})
    return out


def keep_defects_cost(models: list[str]) -> dict[str, dict[str, float]]:
    """Mean PSNR of the default with and without ``keep_defects`` where defects are absent."""
    import physics_set
    import restore_quality

    from napari_emdenoise.engine import restore
    from napari_emdenoise.engine.deviations import restore_deviations
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
        # = restore(..., keep_defects=True), without running the network twice
        # (tests/test_deviations.py checks the equality)
        kept = restore_deviations(case.noisy, default)
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
    ap.add_argument(
        "--no-multislice", action="store_true", help="skip the multislice MoS2 defect images"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "defect_contrast.json")
    args = ap.parse_args(argv)

    from napari_emdenoise.evaluation import defect_contrast, defect_probe, psnr, site_contrast

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

    # The multislice MoS2 supercell: S mono-vacancies against S2 columns, W against Mo.
    import physics_set

    multislice: dict[str, dict[str, dict[str, float]]] = {}
    for image in [] if args.no_multislice else multislice_defects():
        p, sites = image["pixel_size"], image["sites"]
        radius = MULTISLICE_RADIUS_A / p
        for dose in DOSES:
            key = f"MoS2 {p:g} Å/px, {dose:g} counts/px"
            scores = {label: [] for label in methods}
            for seed in range(args.seeds):
                rng = np.random.default_rng([12, int(100 * p), int(dose), seed])
                noisy, clean = physics_set.add_noise(image["image"], dose, rng, read_noise=0.0)
                for label, method in methods.items():
                    out = np.asarray(method(noisy, clean), dtype=np.float64)
                    scores[label].append(
                        (
                            site_contrast(out, clean, sites["S2"], sites["S"], radius),
                            site_contrast(out, clean, sites["Mo"], sites["W"], radius),
                            psnr(out, clean),
                        )
                    )
            for label, sc in scores.items():
                v, w, q = np.mean(sc, axis=0)
                multislice.setdefault(label, {})[key] = {
                    "s_vacancy_kept": float(v),
                    "w_substitution_kept": float(w),
                    "psnr_db": float(q),
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
    if multislice:
        mcases = list(next(iter(multislice.values())))
        rows = [
            [label]
            + [
                f"{v[c]['s_vacancy_kept']:.2f} / {v[c]['w_substitution_kept']:.2f}; "
                f"{v[c]['psnr_db']:.2f}"
                for c in mcases
            ]
            for label, v in multislice.items()
        ]
        tables["multislice MoS2: S vacancy / W kept; PSNR [dB]"] = markdown_table(
            ["method"] + mcases, rows
        )
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
        "multislice_mos2": multislice,
        "keep_defects_cost": cost,
        "tables_markdown": tables,
    }
    print(f"\nwrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Adaptation as a "quality mode": adapt to each noisy image, then restore; whole physics set.

Usage::

    python benchmarks/adapt_physics.py [--steps 200] [--doses 2 5 20] \\
        [--techniques HAADF HRTEM] [--jobs 2] [--quick] \\
        [--out benchmarks/results/adapt_physics.json]

Issue 8 asks for PSNR ≥ BM3D-GAT + 1 dB at 2–20 counts/pixel on the multislice
physics set (``benchmarks/physics_set.py``) and welcomes "a slower quality
model if its time is stated". The bundled networks are small (trained on this
project's CPU) and miss the target; :func:`napari_emdenoise.training.adapt.adapt`
fine-tunes one on the noisy image itself (a blind-spot loss on the image plus
the synthetic pairs as an anchor; no clean data). This script measures what
that buys on every image of the set, with the same noisy draws as
``restore_quality.py`` (same seed, Poisson noise + 0.5 counts read noise).

Methods, per noisy image:

* ``raw``;
* ``bm3d-gat``: BM3D after the generalized Anscombe transform with the true
  noise parameters and its exact unbiased inverse (Mäkitalo & Foi, 2013;
  skipped when the ``bm3d`` package is not installed);
* ``default``: ``restore(noisy, model)`` with the bundled ``hrstem`` (HAADF)
  or ``hrtem`` (HRTEM): network, Wiener refinement, lattice pass;
* ``adapted-net``: the network after ``adapt(model, noisy, steps=--steps)``,
  alone (``refine=False``);
* ``adapted``: ``restore(noisy, model=<adapted network>)``, the whole default
  chain on top of the adapted network;
* ``selected``: the quality mode, :func:`napari_emdenoise.training.adapt_select.
  restore_with_adapted`: of ``default``, ``adapted`` and ``adapted-net``, the
  one with the lowest unbiased risk estimate (:mod:`napari_emdenoise.engine.
  risk`), computed from the noisy image and the noise fitted during adaptation
  only. The estimates and the choice are in each row.

The step count, not a wall-time budget, bounds each adaptation, so the result
does not depend on how busy the machine is; the seconds are reported (one
torch thread per job). Nothing here trains on a clean image of the physics
set: adaptation sees only the noisy image, as a user's run would.

Metrics: PSNR and SSIM with the clean image's range, and the atom-column RMS
position error in pm against the clean image's own column fits (2-D Gaussian
fits, as in ``restore_quality.py``).

Runtime: about 75 s per image and dose at 200 steps on one core (adaptation
about 65 s, BM3D and the restorations the rest), so the full set (27 images ×
3 doses) took 52 minutes with ``--jobs 2`` on a 2-core machine; ``--quick``
(SrTiO3 [001] only, one HAADF and one HRTEM image) about 8 minutes at the
three doses.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import physics_set  # noqa: E402
from _common import machine_info, markdown_table, write_json  # noqa: E402

READ_NOISE = 0.5
DOSES = (2.0, 5.0, 20.0)
TECHNIQUES = ("HAADF", "HRTEM")
#: seed of the risk estimate's probes (with the image index and dose)
SEED = 15
MODEL_FOR = {"HAADF": "hrstem", "HRTEM": "hrtem"}
METHODS = ("raw", "bm3d-gat", "default", "adapted-net", "adapted", "selected")
#: restore_with_adapted's candidate names for the methods above
CANDIDATE_METHOD = {
    "bundled": "default",
    "adapted": "adapted",
    "adapted, no Wiener step": "adapted-net",
}
RESULTS = HERE / "results"


def cases(techniques, doses, quick: bool) -> list[dict]:
    """The noisy images of ``restore_quality.py`` (the same draws), as picklable dicts."""
    import restore_quality

    out = []
    for c in restore_quality.physics_cases(
        restore_quality.DOSES, READ_NOISE, quick, physics_set.DEFAULT_DIR
    ):
        if c.meta["technique"] in techniques and c.dose in doses:
            out.append(
                {
                    "name": c.name,
                    "technique": c.meta["technique"],
                    "modality": c.modality,
                    "dose": c.dose,
                    "noisy": c.noisy,
                    "clean": c.clean,
                    "columns": c.positions,
                    "pixel_size": c.pixel_size,
                    "index": [c.meta["image_index"], int(c.dose)],
                }
            )
    return out


def run_case(case: dict, steps: int) -> list[dict]:
    """Every method on one noisy image; one row per method."""
    import torch

    from napari_emdenoise.engine import restore
    from napari_emdenoise.evaluation import (
        bm3d_gat,
        column_errors,
        column_reference,
        psnr,
        ssim,
    )
    from napari_emdenoise.training.adapt import AdaptConfig, adapt
    from napari_emdenoise.training.adapt_select import restore_with_adapted

    torch.set_num_threads(1)
    noisy, clean = case["noisy"], case["clean"]
    model = MODEL_FOR[case["technique"]]
    outputs: dict[str, np.ndarray] = {"raw": noisy}
    seconds: dict[str, float] = {}

    if importlib.util.find_spec("bm3d") is not None:
        t0 = time.perf_counter()
        outputs["bm3d-gat"] = bm3d_gat(noisy, 1.0, READ_NOISE)
        seconds["bm3d-gat"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs["default"] = restore(noisy, model=model, device="cpu")
    seconds["default"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # The step count bounds the run; the wall-time budget is only a backstop.
    result = adapt(model, noisy, minutes=60.0, steps=steps, config=AdaptConfig(threads=1))
    t_adapt = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs["adapted-net"] = restore(noisy, model=result.model, device="cpu", refine=False)
    seconds["adapted-net"] = t_adapt + time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs["adapted"] = restore(noisy, model=result.model, device="cpu")
    seconds["adapted"] = t_adapt + time.perf_counter() - t0
    t0 = time.perf_counter()
    choice = restore_with_adapted(
        noisy, result, parent=model, rng=np.random.default_rng([SEED, *case["index"]]), device="cpu"
    )
    outputs["selected"] = choice.output
    seconds["selected"] = t_adapt + time.perf_counter() - t0
    # the candidates are the methods above, recomputed: they must agree
    for name, out in choice.outputs.items():
        same = np.array_equal(out, outputs[CANDIDATE_METHOD[name]])
        assert same, f"{name} differs from {CANDIDATE_METHOD[name]}"

    ref = column_reference(clean, case["columns"], pixel_size=case["pixel_size"])
    rows = []
    for method in (m for m in METHODS if m in outputs):
        out = outputs[method]
        cols = column_errors(out, ref)
        row = {
            "case": case["name"],
            "technique": case["technique"],
            "dose": case["dose"],
            "method": method,
            "psnr": psnr(out, clean),
            "ssim": ssim(out, clean),
            "column_rms_pm": cols.get("rms_pm"),
            "column_bias_pm": cols.get("bias_pm"),
            "seconds": seconds.get(method, 0.0),
        }
        if method.startswith("adapted"):
            row.update(
                adapt_steps=result.steps,
                adapt_best_step=result.best_step,
                adapt_stopped=result.stopped,
                adapt_mask=result.mask.kind,
            )
        if method == "selected":
            row.update(
                chosen=CANDIDATE_METHOD[choice.name],
                estimated_mse={CANDIDATE_METHOD[k]: v.mse for k, v in choice.risks.items()},
            )
        rows.append(row)
    return rows


def _run_all(todo: list[dict], steps: int, jobs: int) -> Iterator[list[dict]]:
    """Rows of every case, in order: in this process, or in ``jobs`` spawned ones."""
    if jobs == 1:
        for case in todo:
            yield run_case(case, steps)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for fut in [pool.submit(run_case, c, steps) for c in todo]:
            yield fut.result()


def summary(rows: list[dict]) -> dict:
    """Mean PSNR and column RMS per technique, dose and method; gaps to BM3D-GAT."""
    out: dict = {}
    for tech in TECHNIQUES:
        for dose in DOSES:
            sel = [r for r in rows if r["technique"] == tech and r["dose"] == dose]
            if not sel:
                continue
            entry: dict = {"n_images": len({r["case"] for r in sel})}
            # column errors only where the fits of every method succeeded
            fitted = {
                r["case"]
                for r in sel
                if all(q["column_rms_pm"] is not None for q in sel if q["case"] == r["case"])
            }
            entry["n_images_with_columns"] = len(fitted)
            for m in METHODS:
                ms = [r for r in sel if r["method"] == m]
                if not ms:  # BM3D-GAT without the bm3d package
                    continue
                rms = [r["column_rms_pm"] for r in ms if r["case"] in fitted]
                entry[m] = {
                    "psnr": float(np.mean([r["psnr"] for r in ms])),
                    "ssim": float(np.mean([r["ssim"] for r in ms])),
                    # mean over images of each image's RMS, as restore_quality.py reports it
                    "column_rms_pm": float(np.mean(rms)) if rms else None,
                    "seconds": float(np.mean([r["seconds"] for r in ms])),
                }
            bm3d_psnr = entry["bm3d-gat"]["psnr"] if "bm3d-gat" in entry else np.nan
            for m in ("default", "adapted-net", "adapted", "selected"):
                if m not in entry:  # runs made before "selected" existed
                    continue
                entry[f"{m}_minus_bm3d_db"] = entry[m]["psnr"] - bm3d_psnr
                entry[f"{m}_column_rms_vs_raw"] = (
                    entry[m]["column_rms_pm"] / entry["raw"]["column_rms_pm"] if fitted else None
                )
            bm3d = {r["case"]: r["psnr"] for r in sel if r["method"] == "bm3d-gat"}
            default = {r["case"]: r["psnr"] for r in sel if r["method"] == "default"}
            for m in ("adapted", "selected"):
                per_image = {r["case"]: r["psnr"] for r in sel if r["method"] == m}
                entry[f"{m}_below_bm3d"] = sorted(
                    c for c in per_image if c in bm3d and per_image[c] < bm3d[c]
                )
                # images where the quality mode loses more than 0.05 dB against the default
                entry[f"{m}_below_default"] = sorted(
                    c for c in per_image if per_image[c] < default[c] - 0.05
                )
            chosen = [r["chosen"] for r in sel if r["method"] == "selected"]
            entry["chosen"] = {m: chosen.count(m) for m in sorted(set(chosen))}
            out[f"{tech}@{dose:g}"] = entry
    return out


def report(summ: dict) -> str:
    header = [
        "technique",
        "counts/px",
        "images",
        "BM3D-GAT",
        "default",
        "adapted net",
        "adapted",
        "quality mode (chosen by risk)",
        "quality − BM3D",
        "column RMS ÷ raw",
        "s / image",
    ]
    body = []
    for key, e in summ.items():
        tech, dose = key.split("@")
        body.append(
            [
                tech,
                dose,
                e["n_images"],
                f"{e['bm3d-gat']['psnr']:.2f}" if "bm3d-gat" in e else "–",
                f"{e['default']['psnr']:.2f}",
                f"{e['adapted-net']['psnr']:.2f}",
                f"{e['adapted']['psnr']:.2f}",
                f"{e['selected']['psnr']:.2f}",
                f"{e['selected_minus_bm3d_db']:+.2f}",
                "–"
                if e["selected_column_rms_vs_raw"] is None
                else f"{e['selected_column_rms_vs_raw']:.2f} (default "
                f"{e['default_column_rms_vs_raw']:.2f}; {e['n_images_with_columns']} images)",
                f"{e['selected']['seconds']:.0f}",
            ]
        )
    return markdown_table(header, body)


def parse_case_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Add ``--doses``, ``--techniques``, ``--quick``, ``--out`` to ``ap`` and parse ``argv``."""
    ap.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    ap.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    ap.add_argument("--quick", action="store_true", help="one image per technique")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{ap.prog.removesuffix('.py')}.json")
    args = ap.parse_args(argv)
    unknown = [d for d in args.doses if d not in DOSES]
    if unknown:
        ap.error(f"doses must be among {DOSES}, got {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="adapt_physics", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="adaptation steps per image")
    ap.add_argument("--jobs", type=int, default=1, help="images adapted at once (1 thread each)")
    args = parse_case_args(ap, argv)
    if args.steps < 1 or args.jobs < 1:
        ap.error("--steps and --jobs must be at least 1")

    todo = cases(args.techniques, args.doses, args.quick)
    print(f"{len(todo)} images × doses, {args.steps} adaptation steps each, {args.jobs} job(s)")
    rows: list[dict] = []
    t_start = time.perf_counter()

    def payload(summ: dict | None) -> dict:
        return {
            "benchmark": "adapt_physics",
            "machine": machine_info(),
            "steps": args.steps,
            "jobs": args.jobs,
            "read_noise_counts": READ_NOISE,
            "quick": args.quick,
            "complete": summ is not None,
            "seconds_total": time.perf_counter() - t_start,
            "summary": summ,
            "rows": rows,
        }

    for k, case_rows in enumerate(_run_all(todo, args.steps, args.jobs)):
        rows.extend(case_rows)
        r0 = case_rows[0]
        scores = ", ".join(f"{r['method']} {r['psnr']:.2f}" for r in case_rows)
        print(
            f"[{k + 1}/{len(todo)} {time.perf_counter() - t_start:.0f} s] "
            f"{r0['case']} @ {r0['dose']:g}: {scores} dB",
            flush=True,
        )
        write_json(args.out, payload(None))  # a crash later loses nothing
    summ = summary(rows)
    print(report(summ))
    write_json(args.out, payload(summ))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

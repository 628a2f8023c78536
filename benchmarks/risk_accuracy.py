"""How well the unbiased risk estimate orders restorations, on the multislice physics set.

Usage::

    python benchmarks/risk_accuracy.py [--doses 2 5 20] [--techniques HAADF HRTEM] \\
        [--quick] [--out benchmarks/results/risk_accuracy.json]

The quality mode (``emdenoise restore --adapt-steps``) keeps whichever
restoration has the lowest error estimated from the noisy image alone
(:mod:`napari_emdenoise.engine.risk`: Stein's unbiased risk estimate in its
first-order Poisson–Gaussian form, the divergence by one Monte-Carlo probe).
This script checks that estimate where the truth is known: every image of the
physics set (``benchmarks/physics_set.py``; the noisy draws of
``restore_quality.py``, Poisson noise + 0.5 counts read noise), four
restorations of each (the default ``restore``, the network alone, Gaussian
filters of 1 and 2 px), with the noise fitted from the noisy image
(:func:`napari_emdenoise.noise.fit.fit_noise`, as the quality mode does) and,
for reference, with the true noise.

Reported: for every pair of restorations of one image, whether the estimate
orders them as the true mean squared error does, and what a wrong order costs
(the PSNR between the pair); the ratio estimate ÷ true error per restoration.
About 6 minutes on one core for the full set.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_info, markdown_table, write_json  # noqa: E402
from adapt_physics import (  # noqa: E402
    DOSES,
    MODEL_FOR,
    READ_NOISE,
    TECHNIQUES,
    cases,
    parse_case_args,
)

METHODS = ("default", "network alone", "gaussian 1 px", "gaussian 2 px")
#: seed of the probes (with the image index and dose)
SEED = 16


def restorations(model: str) -> dict:
    import torch

    from napari_emdenoise.engine import restore

    torch.set_num_threads(1)

    def net(z, **kw):
        return np.asarray(restore(z, model=model, device="cpu", **kw), dtype=np.float64)

    return {
        "default": net,
        "network alone": lambda z: net(z, refine=False, lattice=False),
        "gaussian 1 px": lambda z: ndimage.gaussian_filter(np.asarray(z, np.float64), 1.0),
        "gaussian 2 px": lambda z: ndimage.gaussian_filter(np.asarray(z, np.float64), 2.0),
    }


def run_case(case) -> list[dict]:
    """Every restoration of one noisy image: true error and the two estimates."""
    from napari_emdenoise.engine.risk import NoiseLine, estimate_risk
    from napari_emdenoise.noise.fit import fit_noise

    noisy = np.asarray(case["noisy"], dtype=np.float32)
    clean = np.asarray(case["clean"], dtype=np.float64)
    fitted = NoiseLine.from_fit(fit_noise(noisy, modality=case["modality"], offset="auto"))
    lines = {"fitted": fitted, "true": NoiseLine(1.0, READ_NOISE**2)}
    rows = []
    for method, fn in restorations(MODEL_FOR[case["technique"]]).items():
        t0 = time.perf_counter()
        out = fn(noisy)
        row = {
            "case": case["name"],
            "technique": case["technique"],
            "dose": case["dose"],
            "method": method,
            "mse": float(np.mean((out - clean) ** 2)),
            "fitted_noise": {"gain": fitted.gain, "read_variance": fitted.read_variance},
        }
        for key, line in lines.items():
            # the same probe for every restoration of this image, as choose_restoration does
            rng = np.random.default_rng([SEED, *case["index"]])
            row[f"estimate_{key}"] = estimate_risk(noisy, fn, line, rng=rng, restored=out).mse
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for tech in TECHNIQUES:
        for dose in DOSES:
            sel = [r for r in rows if r["technique"] == tech and r["dose"] == dose]
            if not sel:
                continue
            by_case: dict = {}
            for r in sel:
                by_case.setdefault(r["case"], {})[r["method"]] = r
            entry: dict = {"n_images": len(by_case)}
            for key in ("fitted", "true"):
                pairs = wrong = 0
                lost: list[float] = []
                ratios = [r[f"estimate_{key}"] / r["mse"] for r in sel]
                for methods in by_case.values():
                    for a, b in itertools.combinations(methods.values(), 2):
                        pairs += 1
                        true_order = np.sign(a["mse"] - b["mse"])
                        if np.sign(a[f"estimate_{key}"] - b[f"estimate_{key}"]) != true_order:
                            wrong += 1
                            lost.append(
                                10 * np.log10(max(a["mse"], b["mse"]) / min(a["mse"], b["mse"]))
                            )
                entry[key] = {
                    "pairs": pairs,
                    "misordered": wrong,
                    "largest_loss_db": max(lost, default=0.0),
                    "ratio_median": float(np.median(ratios)),
                    "ratio_p05": float(np.percentile(ratios, 5)),
                    "ratio_p95": float(np.percentile(ratios, 95)),
                }
            out[f"{tech}@{dose:g}"] = entry
    return out


def report(summ: dict) -> str:
    header = [
        "technique",
        "counts/px",
        "images",
        "pairs misordered (fitted noise)",
        "worst misorder [dB]",
        "estimate ÷ true: median (5–95 %)",
        "misordered (true noise)",
    ]
    body = []
    for key, e in summ.items():
        tech, dose = key.split("@")
        f, t = e["fitted"], e["true"]
        body.append(
            [
                tech,
                dose,
                e["n_images"],
                f"{f['misordered']} of {f['pairs']}",
                f"{f['largest_loss_db']:.2f}",
                f"{f['ratio_median']:.2f} ({f['ratio_p05']:.2f}–{f['ratio_p95']:.2f})",
                f"{t['misordered']} of {t['pairs']}",
            ]
        )
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="risk_accuracy", description=__doc__.splitlines()[0])
    args = parse_case_args(ap, argv)
    todo = cases(args.techniques, args.doses, args.quick)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for k, case in enumerate(todo):
        rows.extend(run_case(case))
        elapsed = time.perf_counter() - t_start
        print(
            f"[{k + 1}/{len(todo)} {elapsed:.0f} s] {case['name']} @ {case['dose']:g}", flush=True
        )
    summ = summary(rows)
    print(report(summ))
    write_json(
        args.out,
        {
            "benchmark": "risk_accuracy",
            "machine": machine_info(),
            "read_noise_counts": READ_NOISE,
            "quick": args.quick,
            "seconds_total": time.perf_counter() - t_start,
            "summary": summ,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

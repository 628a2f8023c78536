"""Drift-estimation accuracy against dose: our CNN pipeline, our NCC and skimage phase correlation.

Held-out frame pairs (seeds never used in training) of four content types —
lattices (shifts below 0.45 of the shortest repeat distance, so the true shift
is the nearest correlation peak), amorphous films, particles and mixed scenes —
with S(T)EM and TEM noise from the project's distortion model, at each dose.
Shifts are uniform in a disc of radius a third of the frame.

Methods:

* ``skimage best``: ``skimage.registration.phase_cross_correlation`` (upsample
  20) in the best of 32 classical set-ups chosen *per dose on the same pairs*
  (an oracle choice that favours the baseline): Hann window on/off, Gaussian
  pre-filter σ ∈ {0, 1, 2, 4} px, phase or plain correlation, and with or
  without subtracting a 16-px Gaussian background;
* ``ncc raw`` / ``ncc``: our overlap-normalised cross-correlation + parabola,
  on raw frames (σ = 1.5 px) or on frames denoised by the matching bundled
  restoration model (``hrstem``, ``lrtem``…);
* ``phase``: our phase correlation (periodic component, no window) on denoised frames;
* ``cnn raw`` / ``cnn``: the CNN refinement (Vasudevan & Jesse, 2019) on raw or
  denoised frames;
* ``oracle``: not a method but a limit: our NCC + parabola (σ = 1.5 px) of the
  **noise-free** reference frame against the noisy moving frame. No method has
  the noise-free frame, and a pair of noisy frames carries less information
  than one noisy frame and its noise-free template, so where even this row
  fails the pair is beyond any correlation-based estimator.

Reported per dose: RMS error (px), bias (length of the mean error vector, px),
median error, success rate (error < 1 px), pairs/s (denoising included), and
for our methods the fraction of errors within the reported 2σ per axis. At low
dose the RMS is set by a few gross failures (a wrong correlation peak tens of
pixels away), so the cnn / skimage ratio comes with a 95 % paired-bootstrap
interval and the share of the squared error due to the single worst pair.

Run: ``OMP_NUM_THREADS=1 python benchmarks/drift_accuracy.py [--pairs 240]``; it
prints markdown tables and writes ``benchmarks/results/drift_accuracy.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

DOSES = (0.5, 1.0, 2.0, 5.0, 20.0, 100.0, 1000.0)
SIZE = (128, 128)
SKIMAGE_SIGMAS = (0.0, 1.0, 2.0, 4.0)
#: Gaussian background subtraction (σ in px) — not in the issue's grid, added so that the
#: baseline is not defeated by the frames' background gradients alone.
SKIMAGE_HIGHPASS = (None, 16.0)
#: Shifts up to this length (px) are also scored separately (typical frame-to-frame drift).
SMALL_SHIFT = 8.0
OURS = ("ncc raw", "ncc", "phase", "cnn raw", "cnn")
ORACLE = "oracle"
SEED = 20261130  # the training shards use seeds [0, k]


def rms_ratio_interval(
    ours: np.ndarray, baseline: np.ndarray, rng: np.random.Generator, n_boot: int = 2000
) -> tuple[float, float]:
    """95 % paired-bootstrap interval of RMS(ours) / RMS(baseline).

    The pairs are resampled jointly (both methods see the same resampled
    pairs). RMS errors at low dose are set by a few gross failures, so the
    interval shows how much one run of ``n`` pairs can be trusted.
    """
    sq_a = np.sum(np.asarray(ours) ** 2, axis=1)
    sq_b = np.sum(np.asarray(baseline) ** 2, axis=1)
    idx = rng.integers(0, len(sq_a), size=(n_boot, len(sq_a)))
    ratio = np.sqrt(sq_a[idx].mean(1) / np.maximum(sq_b[idx].mean(1), 1e-18))
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return float(lo), float(hi)


def worst_pair_share(errors: np.ndarray) -> float:
    """Share of the summed squared error that comes from the single worst pair."""
    sq = np.sum(np.asarray(errors) ** 2, axis=1)
    return float(sq.max() / max(sq.sum(), 1e-18))


def skimage_setups() -> list[tuple[bool, float, str | None, float | None]]:
    return [
        (w, s, n, hp)
        for w in (False, True)
        for s in SKIMAGE_SIGMAS
        for n in ("phase", None)
        for hp in SKIMAGE_HIGHPASS
    ]


def skimage_shift(
    ref: np.ndarray, mov: np.ndarray, window: bool, sigma: float, norm, highpass=None
) -> np.ndarray:
    from scipy import ndimage
    from skimage.filters import window as hann
    from skimage.registration import phase_cross_correlation

    a, b = ref.astype(np.float64), mov.astype(np.float64)
    if sigma:
        a, b = ndimage.gaussian_filter(a, sigma), ndimage.gaussian_filter(b, sigma)
    if highpass:
        a = a - ndimage.gaussian_filter(a, highpass)
        b = b - ndimage.gaussian_filter(b, highpass)
    a, b = a - a.mean(), b - b.mean()
    if window:
        w = hann("hann", a.shape)
        a, b = a * w, b * w
    shift, _e, _p = phase_cross_correlation(a, b, upsample_factor=20, normalization=norm)
    return np.asarray(shift, np.float64)


def summarise(
    errors: np.ndarray, sigmas: np.ndarray | None, seconds: float, small: np.ndarray
) -> dict[str, Any]:
    err = np.asarray(errors, np.float64)
    dist = np.hypot(err[:, 0], err[:, 1])
    out = {
        "rms_px": float(np.sqrt(np.mean(dist**2))),
        "rms_small_shift_px": float(np.sqrt(np.mean(dist[small] ** 2))) if small.any() else None,
        "bias_px": float(np.hypot(*err.mean(axis=0))),
        "bias_yx_px": err.mean(axis=0).tolist(),
        "median_px": float(np.median(dist)),
        "success_1px": float(np.mean(dist < 1.0)),
        "pairs_per_s": float(len(err) / max(seconds, 1e-9)),
    }
    if sigmas is not None:
        s = np.asarray(sigmas, np.float64)
        out["within_2sigma"] = float(np.mean(np.abs(err) <= 2 * s))
        ok = dist < 1.0
        out["within_2sigma_successes"] = (
            float(np.mean(np.abs(err[ok]) <= 2 * s[ok])) if ok.any() else float("nan")
        )
    return out


def run(n_pairs: int, doses: tuple[float, ...]) -> dict[str, Any]:
    import torch

    from napari_emdenoise.drift import synthetic
    from napari_emdenoise.drift.correlation import bandpass, ncc_map, parabolic_peak
    from napari_emdenoise.drift.pipeline import (
        Prepared,
        _denoise,
        _estimate_prepared,
        _resolve_regressor,
    )
    from napari_emdenoise.drift.regressor import load_regressor
    from napari_emdenoise.models.registry import load_model

    torch.set_num_threads(1)
    regressor = _resolve_regressor("cnn", None, None)
    _model, card = load_regressor()
    denoisers: dict[str, Any] = {}
    results: dict[str, Any] = {}
    setups = skimage_setups()
    for d_index, dose in enumerate(doses):
        rng = np.random.default_rng([SEED, d_index])
        errors: dict[str, list] = {}
        sigmas: dict[str, list] = {m: [] for m in OURS}
        seconds: dict[str, float] = {}
        contents: list[str] = []
        lengths: list[float] = []
        start = time.perf_counter()
        for i in range(n_pairs):
            content = synthetic.CONTENT_TYPES[i % len(synthetic.CONTENT_TYPES)]
            modality = synthetic.MODALITIES[(i // len(synthetic.CONTENT_TYPES)) % 2]
            pair = synthetic.random_pair(SIZE, rng, content=content, modality=modality, dose=dose)
            contents.append(content)
            truth = np.asarray(pair.shift)
            lengths.append(float(np.hypot(*truth)))
            for setup in setups:
                t0 = time.perf_counter()
                est = skimage_shift(pair.reference, pair.moving, *setup)
                seconds[str(setup)] = seconds.get(str(setup), 0.0) + time.perf_counter() - t0
                errors.setdefault(str(setup), []).append(est - truth)
            t0 = time.perf_counter()
            oracle = ncc_map(bandpass(pair.clean_reference, 1.5), bandpass(pair.moving, 1.5))
            est = np.asarray(parabolic_peak(oracle, oracle.peak()))
            seconds[ORACLE] = seconds.get(ORACLE, 0.0) + time.perf_counter() - t0
            errors.setdefault(ORACLE, []).append(est - truth)
            name = pair.denoiser
            if name not in denoisers:
                denoisers[name] = load_model(name)[0]
            t0 = time.perf_counter()
            den = (
                _denoise(pair.reference, denoisers[name]),
                _denoise(pair.moving, denoisers[name]),
            )
            t_den = time.perf_counter() - t0
            for label in OURS:
                method = label.split()[0]
                raw = label.endswith("raw")
                frames = (
                    (Prepared(pair.reference), Prepared(pair.moving))
                    if raw
                    else (Prepared(pair.reference, den[0]), Prepared(pair.moving, den[1]))
                )
                t0 = time.perf_counter()
                est = _estimate_prepared(
                    *frames, method, None, None, regressor if method == "cnn" else None
                )
                seconds[label] = (
                    seconds.get(label, 0.0) + time.perf_counter() - t0 + (0.0 if raw else t_den)
                )
                errors.setdefault(label, []).append(np.asarray(est) - truth)
                sigmas[label].append(est.sigma)
        small = np.asarray(lengths) <= SMALL_SHIFT
        per_setup = {
            k: summarise(np.array(v), None, seconds[k], small)
            for k, v in errors.items()
            if k not in (*OURS, ORACLE)
        }
        best_key = min(per_setup, key=lambda k: per_setup[k]["rms_px"])
        window, sigma, norm, highpass = {str(s): s for s in setups}[best_key]
        entry = {
            "skimage best": {
                **per_setup[best_key],
                "setup": {
                    "hann_window": window,
                    "gaussian_sigma_px": sigma,
                    "normalization": norm or "none",
                    "highpass_sigma_px": highpass,
                },
            },
        }
        for label in OURS:
            entry[label] = summarise(
                np.array(errors[label]), np.array(sigmas[label]), seconds[label], small
            )
        entry[ORACLE] = summarise(np.array(errors[ORACLE]), None, seconds[ORACLE], small)
        by_content = {}
        for content in synthetic.CONTENT_TYPES:
            sel = [j for j, c in enumerate(contents) if c == content]
            by_content[content] = {
                label: summarise(np.array(errors[key])[sel], None, 1.0, small[sel])["rms_px"]
                for label, key in (("skimage best", best_key), ("ncc", "ncc"), ("cnn", "cnn"))
            }
        entry["rms_by_content"] = by_content
        entry["cnn_over_skimage_ci95"] = rms_ratio_interval(
            np.array(errors["cnn"]), np.array(errors[best_key]), np.random.default_rng([SEED, 99])
        )
        entry["worst_pair_share"] = {
            "skimage best": worst_pair_share(np.array(errors[best_key])),
            "cnn": worst_pair_share(np.array(errors["cnn"])),
        }
        entry["skimage_all_setups_rms"] = {k: v["rms_px"] for k, v in per_setup.items()}
        entry["small_shift_pairs"] = int(small.sum())
        results[str(dose)] = entry
        print(f"dose {dose}: {n_pairs} pairs in {time.perf_counter() - start:.0f} s", flush=True)
    return {"results": results, "regressor_card": {k: card.get(k) for k in ("name", "metrics")}}


def tables(payload: dict[str, Any]) -> str:
    res = payload["results"]
    methods = ("skimage best", *OURS)
    if all(ORACLE in entry for entry in res.values()):
        methods = (*methods, ORACLE)
    out = []
    rows = []
    for dose, entry in res.items():
        lo, hi = entry["cnn_over_skimage_ci95"]
        share = entry["worst_pair_share"]
        rows.append(
            [dose]
            + [f"{entry[m]['rms_px']:.2f}" for m in methods]
            + [
                f"{entry['cnn']['rms_px'] / max(entry['skimage best']['rms_px'], 1e-9):.2f}"
                f" ({lo:.2f}–{hi:.2f})",
                f"{share['cnn']:.0%} / {share['skimage best']:.0%}",
            ]
        )
    out.append(
        "RMS shift error (px), lower is better; cnn / skimage best with its 95 % paired-"
        "bootstrap interval; share of the squared error from the single worst pair"
    )
    out.append(
        markdown_table(
            ["dose (counts/px)", *methods, "cnn/skimage (95 %)", "worst pair: cnn / skimage"],
            rows,
        )
    )
    rows = [
        [dose, entry["small_shift_pairs"]]
        + [
            "–"
            if entry[m]["rms_small_shift_px"] is None
            else f"{entry[m]['rms_small_shift_px']:.2f}"
            for m in methods
        ]
        for dose, entry in res.items()
    ]
    out.append(f"\nRMS error (px) on the pairs whose shift is at most {SMALL_SHIFT:g} px")
    out.append(markdown_table(["dose", "pairs", *methods], rows))
    rows = [
        [dose]
        + [
            f"{entry[m]['median_px']:.2f} / {entry[m]['success_1px']:.0%} / "
            f"{entry[m]['bias_px']:.2f}"
            for m in methods
        ]
        for dose, entry in res.items()
    ]
    out.append("\nmedian error (px) / success rate (error < 1 px) / bias (px)")
    out.append(markdown_table(["dose", *methods], rows))
    rows = [
        [dose] + [f"{entry[m]['within_2sigma']:.0%}" for m in OURS] for dose, entry in res.items()
    ]
    out.append("\nfraction of per-axis errors within the reported 2σ (0.95 if calibrated)")
    out.append(markdown_table(["dose", *OURS], rows))
    rows = [
        [
            dose,
            entry["skimage best"]["setup"]["hann_window"],
            entry["skimage best"]["setup"]["gaussian_sigma_px"],
            entry["skimage best"]["setup"]["normalization"],
            entry["skimage best"]["setup"]["highpass_sigma_px"],
        ]
        for dose, entry in res.items()
    ]
    out.append("\nbest skimage set-up per dose")
    out.append(
        markdown_table(
            ["dose", "Hann window", "Gaussian σ (px)", "normalization", "high-pass σ (px)"], rows
        )
    )
    first = next(iter(res.values()))
    rows = [
        [m, f"{np.mean([e[m]['pairs_per_s'] for e in res.values()]):.1f}"]
        for m in methods
        if m != ORACLE
    ]
    out.append("\nthroughput, pairs/s on this CPU (one thread; denoising included where used)")
    out.append(markdown_table(["method", "pairs/s"], rows))
    rows = [
        [dose]
        + [
            " / ".join(
                f"{entry['rms_by_content'][c][m]:.2f}" for m in ("skimage best", "ncc", "cnn")
            )
            for c in first["rms_by_content"]
        ]
        for dose, entry in res.items()
    ]
    out.append("\nRMS by content (skimage best / ncc / cnn), px")
    out.append(markdown_table(["dose", *first["rms_by_content"]], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=240, help="pairs per dose")
    parser.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "drift_accuracy.json")
    )
    args = parser.parse_args(argv)
    payload = run(args.pairs, tuple(args.doses))
    payload["settings"] = {
        "pairs_per_dose": args.pairs,
        "frame": list(SIZE),
        "doses_counts_per_px": list(args.doses),
        "seed": SEED,
        "max_shift": "a third of the frame (lattices: 0.45 repeat distance)",
    }
    text = tables(payload)
    payload["tables_markdown"] = text
    print(text)
    write_json(args.out, payload)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Drift correction of whole low-dose movies: frame grouping against scikit-image.

``benchmarks/drift_accuracy.py`` scores frame *pairs* with shifts of up to a
third of the frame. A movie is different: the drift from one frame to the next
is small, and every frame may be too noisy to register on its own. This
benchmark aligns synthetic drifting movies (held-out seeds; 12 frames of 128²,
a random walk of 1.5 px per frame and axis, so up to about 8 px from the first
frame; amorphous films, particles and mixed scenes with the TEM and S(T)EM
noise of the distortion model; lattices, and scenes that repeat themselves
within the frame, are left out, because a walk longer than half the repeat
makes the answer ambiguous) and scores every frame's shift.

Methods:

* ``no correction``: every shift 0 (what a method that fails safe returns);
* ``skimage``: ``skimage.registration.phase_cross_correlation`` (upsample 10)
  of every frame against the first, in the best of twelve set-ups per dose
  (Gaussian pre-filter σ ∈ {1, 2, 3} px, phase or plain correlation, with or
  without a Hann window; an oracle choice that favours it), and the same
  followed by a second pass against the mean of the frames it aligned
  (``skimage, 2 passes``);
* ``align_stack`` with ``reference="first"`` and ``"previous"`` (frame by
  frame);
* ``align_stack``: ``reference="mean"`` with the matching bundled denoiser and
  the CNN refinement, frame by frame (``group=1``) and on groups of 2 and 4
  consecutive frames (``group=2``, ``group=4``: shifts measured on the groups'
  means and interpolated between their centres), and with the search
  restricted to ±12 px (``max_shift=12``, group 1 and 4), which a user who
  knows that the drift stays that small can ask for.

Score: RMS over frames of the error in pixels after removing each movie's mean
error (a shift common to all frames moves the aligned movie as a whole and
does not misalign it), with a 95 % bootstrap interval over movies.

Run: ``OMP_NUM_THREADS=1 python benchmarks/drift_movies.py [--movies 12]``
(about 25 minutes on one core); it prints a markdown table and writes
``benchmarks/results/drift_movies.json``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

DOSES = (0.5, 1.0, 2.0, 5.0, 20.0)
CONTENTS = ("amorphous", "particles", "mixed")
SKIMAGE_SETUPS = tuple(
    (sigma, norm, window)
    for sigma in (1.0, 2.0, 3.0)
    for norm in ("phase", None)
    for window in (False, True)
)
GROUPS = (1, 2, 4)
#: (group, max_shift px) of the runs with a restricted search: a user who knows the drift
#: stays within about ±12 px says so with ``max_shift`` (CLI ``--max-shift``).
SEARCH = ((1, 12.0), (4, 12.0))
#: References run besides ``"mean"`` (frame by frame, default search).
OTHER_REFERENCES = ("first", "previous")
FRAMES, SHAPE, STEP = 12, (128, 128), 1.5
SEED = 20261202  # not a training stream


def skimage_register(
    reference: np.ndarray, frames: np.ndarray, sigma: float, norm, window: bool
) -> np.ndarray:
    from skimage.filters import window as make_window
    from skimage.registration import phase_cross_correlation

    taper = make_window("hann", reference.shape) if window else 1.0

    def prepared(frame: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(frame, sigma)
        return (smooth - smooth.mean()) * taper

    ref = prepared(reference)
    return np.array(
        [
            phase_cross_correlation(ref, prepared(f), upsample_factor=10, normalization=norm)[0]
            for f in frames
        ]
    )


def aligned_mean(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    total, count = np.zeros(frames[0].shape), np.zeros(frames[0].shape)
    for frame, shift in zip(frames, shifts):
        moved = ndimage.shift(frame, shift, order=1, cval=np.nan)
        ok = np.isfinite(moved)
        total[ok] += moved[ok]
        count += ok
    return total / np.maximum(count, 1)


def aperiodic_movie(make, seed: list[int], content: str, modality: str, dose: float):
    """A drifting movie whose scene does not repeat itself within the frame.

    Some generated scenes are nearly periodic (an "amorphous" film drawn at
    0.7 Å/pixel correlates at 0.98 with itself 6 px away): a drift is then only
    defined modulo the repeat, as on a lattice. Such scenes are redrawn (the
    same seed with an attempt number appended), as ``drift_accuracy.py`` keeps
    lattice shifts below half their repeat distance.
    """
    from napari_emdenoise.drift.synthetic import repeat_distance_px

    for attempt in range(20):
        key = [*seed, attempt]
        kwargs = {"content": content, "modality": modality, "step": STEP}
        clean, _, _ = make(FRAMES, SHAPE, np.random.default_rng(key), dose=None, **kwargs)
        if repeat_distance_px(clean[0]) is None:
            return make(FRAMES, SHAPE, np.random.default_rng(key), dose=dose, **kwargs)
    raise RuntimeError(f"no aperiodic {content} scene in 20 attempts for seed {seed}")


def errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame squared error (px²) after removing the movie's mean error."""
    err = np.asarray(estimate, float) - truth
    err -= err.mean(axis=0)
    return np.sum(err**2, axis=1)


def rms_interval(per_movie: list[np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """95 % bootstrap interval of the RMS error, movies resampled."""
    sq = np.array([m.mean() for m in per_movie])
    idx = rng.integers(0, len(sq), size=(2000, len(sq)))
    lo, hi = np.percentile(np.sqrt(sq[idx].mean(1)), [2.5, 97.5])
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--movies", type=int, default=12, help="movies per content type and dose")
    ap.add_argument("--doses", type=float, nargs="+", default=list(DOSES))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/drift_movies.json")
    args = ap.parse_args(argv)

    import torch

    from napari_emdenoise.drift import align_stack
    from napari_emdenoise.drift.synthetic import drifting_movie

    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    rows = []
    for dose in args.doses:
        scores: dict[str, list[np.ndarray]] = {}
        for k in range(args.movies):
            for c, content in enumerate(CONTENTS):
                modality = ("tem", "stem")[(k + c) % 2]
                frames, truth, info = aperiodic_movie(
                    drifting_movie, [SEED, int(dose * 10), k, c], content, modality, dose
                )
                frames = frames.astype(np.float64)
                denoiser = f"{info.get('kind', 'hr')}{modality}"
                scores.setdefault("no correction", []).append(errors(np.zeros_like(truth), truth))
                for setup in SKIMAGE_SETUPS:
                    first = skimage_register(frames[0], frames, *setup)
                    scores.setdefault(f"skimage {setup}", []).append(errors(first, truth))
                    second = skimage_register(aligned_mean(frames, first), frames, *setup)
                    scores.setdefault(f"skimage 2 passes {setup}", []).append(errors(second, truth))
                runs = [
                    (f"align_stack reference={other}", {"reference": other})
                    for other in OTHER_REFERENCES
                ]
                runs += [
                    (f"align_stack group={group}", {"reference": "mean", "group": group})
                    for group in GROUPS
                ]
                runs += [
                    (
                        f"align_stack group={group} max_shift={limit:g}",
                        {"reference": "mean", "group": group, "max_shift": limit},
                    )
                    for group, limit in SEARCH
                ]
                for name, kwargs in runs:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _, shifts = align_stack(frames, denoise=denoiser, **kwargs)
                    scores.setdefault(name, []).append(errors(shifts, truth))

        def rms(name: str, scores: dict[str, list[np.ndarray]] = scores) -> float:
            return float(np.sqrt(np.mean(np.concatenate(scores[name]))))

        best = {}
        for kind in ("skimage", "skimage 2 passes"):
            names = [f"{kind} {s}" for s in SKIMAGE_SETUPS]
            best[kind] = min(names, key=rms)
        shown = {
            "no correction": "no correction",
            "skimage": best["skimage"],
            "skimage, 2 passes": best["skimage 2 passes"],
            **{f"reference={r}": f"align_stack reference={r}" for r in OTHER_REFERENCES},
            **{f"group={g}": f"align_stack group={g}" for g in GROUPS},
            **{
                f"group={g}, ±{m:g} px": f"align_stack group={g} max_shift={m:g}" for g, m in SEARCH
            },
        }
        ci_rng = np.random.default_rng(0)
        entry = {}
        for label, name in shown.items():
            lo, hi = rms_interval(scores[name], ci_rng)
            entry[label] = {"method": name, "rms_px": rms(name), "ci95_px": [lo, hi]}
        results[f"{dose:g}"] = entry
        row = [f"{dose:g}"]
        for label in shown:
            e = entry[label]
            row.append(f"{e['rms_px']:.2f} ({e['ci95_px'][0]:.2f}–{e['ci95_px'][1]:.2f})")
        rows.append(row)
        print(f"dose {dose:g}: " + "  ".join(f"{k} {v['rms_px']:.2f}" for k, v in entry.items()))
    header = ["counts/px", "no correction", "skimage (best)", "skimage, 2 passes (best)"]
    header += [f"align_stack, reference={r}" for r in OTHER_REFERENCES]
    header += [f"align_stack, mean, group={g}" for g in GROUPS]
    header += [f"group={g}, search ±{m:g} px" for g, m in SEARCH]
    table = markdown_table(header, rows)
    print(table)
    settings = {
        "frames": FRAMES, "shape": SHAPE, "step_px": STEP, "movies_per_content": args.movies,
        "contents": CONTENTS, "seed": SEED,
    }  # fmt: skip
    write_json(args.out, {"benchmark": "drift_movies", "settings": settings, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

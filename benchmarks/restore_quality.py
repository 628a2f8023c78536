"""Restoration quality on data no generator of this project made: models vs classical baselines.

Usage::

    python benchmarks/restore_quality.py [--quick] [--models hrstem hrtem ...] \\
        [--doses 2 5 20 100 200] [--read-noise 0.5] [--synthetic-n 8] [--no-reference] \\
        [--out benchmarks/results/restore_quality.json]

Cases
-----
* **Physics set** (``benchmarks/physics_set.py``, made once with abTEM and
  cached): multislice HAADF-STEM and HRTEM images of several crystals and zone
  axes at 0.05–0.3 Å/px, with Poisson noise at each dose (counts per pixel)
  plus Gaussian read noise, drawn here from a seeded generator. Validation
  only: never used for training.
* **Lattice probes** (:mod:`napari_emdenoise.evaluation.probes`): Gaussian
  columns on a lag-free lattice (σ 2.5 px every 20 px, as in issue 8, and
  σ 1.2 px every 12 px), Poisson noise at 5 and 50 counts/px. Every model
  runs on them whatever its modality.
* **Synthetic held-out set**: the ``"test"`` stream of
  :mod:`napari_emdenoise.training.datasets` (disjoint from training and
  validation by construction), for continuity with earlier results.

Methods
-------
* ``raw``: the noisy input.
* ``gaussian``: Gaussian filter with the best σ for each image (an oracle).
* ``nlm``: scikit-image non-local means in the variance-stabilised domain
  (unit noise), h chosen per image among 0.6–1.2 by PSNR (an oracle).
* ``bm3d-gat``: generalized Anscombe transform with the true noise
  parameters, BM3D at unit σ, exact unbiased inverse (Mäkitalo & Foi, 2013).
* On the synthetic set, whose distortions (scan noise, jitter, post-processing
  of normalised images) are not Poisson–Gaussian, no VST is used: NLM and
  BM3D run on the image with h and σ chosen per image by PSNR (oracles).
* ``model:<name>``: each bundled model alone (``restore(..., refine=False)``),
  on the cases of its modality.
* ``wiener:<name>``: ``restore(..., lattice=False)``: the network's output
  as the pilot of an empirical Wiener filter of the raw image
  (:mod:`napari_emdenoise.engine.wiener`).
* ``refined:<name>``: what ``restore`` gives by default: the Wiener
  refinement, then the lattice pass (:mod:`napari_emdenoise.engine.lattice`:
  the Bragg peaks that stand out in the spectrum of what the restoration
  removed are added back).
* ``safeguard:<name>``: ``restore(..., safeguard=True)``: the refined
  restoration's change kept per frequency band by its SURE-optimal weight
  (:mod:`napari_emdenoise.engine.safeguard`).
* ``ensemble:<name>`` / ``ensemble+safeguard:<name>`` (with ``--ensemble``):
  ``restore(..., ensemble=8)``, the mean of the restorations of the 8 flips
  and 90° rotations of the image (:mod:`napari_emdenoise.engine.self_ensemble`),
  refined, without and with the safeguard.
* ``ref:<name>``: the released models of Lobato, Friedrich & Van Aert, "Deep
  convolutional neural networks to restore single-shot electron microscopy
  images" (npj Computational Materials, 2024; ``tk_r_em`` on PyPI), when
  ``tk_r_em`` and TensorFlow (with ``tf_keras``: the models are Keras-2
  SavedModels) import. Outputs are only compared; nothing of theirs is copied.

Metrics: PSNR and SSIM with the clean image's range; atom-column position bias
and RMS (pm on the physics set, px on the probe) against the clean image's
own column fits, by a 2-D Gaussian fit and by centre of mass; column
integrated-intensity error; Nyquist-spike excess of the output over the input
(issue 8's criterion) and over the clean image (a lattice reflection that
falls near the Nyquist frequency is signal, not an artefact), and the
amplitude of the 2-px pattern; seconds per image on one core.

Runtime: ``--quick`` about 1 minute without and 4 with the authors' models
(loading TensorFlow dominates); the full run about 40 minutes, both measured on
a 2-core machine shared with other jobs.
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
import physics_set  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402

from napari_emdenoise.evaluation import (  # noqa: E402
    best_gaussian,
    bm3d_gat,
    column_errors,
    column_reference,
    gat_forward,
    gat_inverse,
    lattice_probe,
    nyquist_amplitude,
    nyquist_excess,
    nyquist_ratio,
    position_crlb,
    psnr,
    ssim,
)

SEED = 8
DOSES = (2.0, 5.0, 20.0, 100.0, 200.0)
PROBE_DOSES = (5.0, 50.0)
#: Lattice probes: (spacing, column σ) in pixels; the first is the one printed in issue 8.
PROBES = ((20.0, 2.5), (12.0, 1.2))
NLM_H = (0.6, 0.8, 1.0, 1.2)
REFERENCE_MODELS = {"stem": "sfr_hrstem", "tem": "sfr_hrtem"}
#: The authors' low-magnification models, for ``--reference-kind lr`` (the LR set).
REFERENCE_MODELS_LR = {"stem": "sfr_lrstem", "tem": "sfr_lrtem"}
#: Transforms of the self-ensemble rows (``--ensemble``; see ``restore(..., ensemble=)``).
ENSEMBLE = 8
RESULTS = HERE / "results"

Denoiser = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- methods


def nlm_gat(noisy: np.ndarray, clean: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """Non-local means in the GAT domain, h tuned per image by PSNR (oracle)."""
    from skimage.restoration import denoise_nl_means

    z = gat_forward(noisy, gain, sigma)
    best, best_p = None, -np.inf
    for h in NLM_H:
        d = denoise_nl_means(z, h=h, sigma=1.0, patch_size=5, patch_distance=6, fast_mode=True)
        out = gat_inverse(d, gain, sigma)
        p = psnr(out, clean)
        if p > best_p:
            best, best_p = out, p
    return np.asarray(best, dtype=np.float32)


def nlm_oracle(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Non-local means on the raw image, h = k · σ̂ with k chosen per image by PSNR (oracle)."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    s = float(estimate_sigma(noisy))
    outs = [
        denoise_nl_means(noisy, h=k * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True)
        for k in (0.6, 1.0, 1.6)
    ]
    return np.asarray(max(outs, key=lambda o: psnr(o, clean)), dtype=np.float32)


def bm3d_oracle(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """BM3D on the raw image with σ chosen per image by PSNR among fractions of std(x − y)."""
    import bm3d

    s = float(np.std(noisy - clean))
    outs = [
        np.asarray(bm3d.bm3d(noisy, sigma_psd=max(f * s, 1e-6)), np.float32)
        for f in (0.25, 0.5, 1.0)
    ]
    return max(outs, key=lambda o: psnr(o, clean))


def reference_available() -> str | None:
    """None if the authors' released models can be run here, else why not."""
    for module in ("tk_r_em", "tensorflow"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if importlib.util.find_spec("tf_keras") is None:
        return "tf_keras is not installed (the released models are Keras-2 SavedModels)"
    return None


_REF_CACHE: dict[str, object] = {}


def reference_model(name: str):
    """Load one of the authors' released networks (TensorFlow, one thread)."""
    if name not in _REF_CACHE:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised
            pass
        from tk_r_em import load_network

        _REF_CACHE[name] = load_network(name)
    return _REF_CACHE[name]


def authors_test_data(name: str) -> dict[str, np.ndarray] | None:
    """The arrays of ``tk_r_em``'s ``test_data/<name>.h5`` as images, or None if absent.

    The files store each image transposed (column-major), and ``tk_r_em``'s
    own loaders swap the two image axes back; so does this, so that the
    fast-scan axis of the S(T)EM images is x, as our S(T)EM models expect.
    Every array comes back as float32 ``(n, height, width)``. The files are
    read where the package is installed and never copied into this repository.
    """
    spec = importlib.util.find_spec("tk_r_em")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "test_data" / f"{name}.h5"
    if not path.exists():
        return None
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for key in f:
            a = np.asarray(f[key][:], dtype=np.float32)
            if a.ndim == 4:  # (n, 1, width, height) in the file
                a = a.reshape(-1, *a.shape[-2:])
            elif a.ndim == 3:  # (width, height, n)
                a = np.moveaxis(a, -1, 0)
            else:  # (width, height)
                a = a[None]
            out[key] = np.ascontiguousarray(a.transpose(0, 2, 1))
    return out


def run_reference(name: str, noisy: np.ndarray) -> np.ndarray:
    net = reference_model(name)
    return np.asarray(net.predict(noisy.astype(np.float32)), dtype=np.float32).reshape(noisy.shape)


def run_model(
    name: str,
    noisy: np.ndarray,
    *,
    safeguard: bool = False,
    ensemble: int = 1,
    refine: bool = True,
    lattice: bool = True,
) -> np.ndarray:
    from napari_emdenoise.engine import restore

    out = restore(
        noisy,
        model=name,
        device="cpu",
        safeguard=safeguard,
        ensemble=ensemble,
        refine=refine,
        lattice=lattice,
    )
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- cases


class Case:
    """One noisy image with its clean expectation and what is known about it."""

    def __init__(
        self,
        group: str,
        name: str,
        modality: str,
        noisy: np.ndarray,
        clean: np.ndarray,
        *,
        dose: float,
        noise: tuple[float, float] | None,
        positions: np.ndarray | None = None,
        pixel_size: float | None = None,
        meta: dict | None = None,
    ) -> None:
        self.group, self.name, self.modality = group, name, modality
        self.noisy, self.clean = noisy, clean
        self.dose, self.noise = dose, noise
        self.positions, self.pixel_size = positions, pixel_size
        self.meta = meta or {}


def physics_cases(doses, read_noise: float, quick: bool, directory: Path) -> list[Case]:
    try:
        records, arrays = physics_set.load(directory)
    except FileNotFoundError:
        print(
            "physics set not found: run `python benchmarks/physics_set.py` first "
            "(about 20 CPU-minutes); physics cases skipped"
        )
        return []
    if quick:
        # One image per technique, SrTiO3 [001] when there.
        chosen = {}
        for r in sorted(records, key=lambda r: not r["simulation"].startswith("sto001")):
            chosen.setdefault(r["technique"], r)
        records = list(chosen.values())
    cases = []
    for r in records:
        i = r["index"]
        clean01 = arrays["images"][i].astype(np.float64)
        columns = arrays[f"columns_{i}"]  # none in the low-magnification set
        for j, dose in enumerate(doses):
            rng = np.random.default_rng([SEED, i, j])
            noisy, clean = physics_set.add_noise(clean01, dose, rng, read_noise=read_noise)
            cases.append(
                Case(
                    "physics",
                    f"{r['simulation']}@{r['pixel_size_A']}Å",
                    r["modality"],
                    noisy,
                    clean.astype(np.float64),
                    dose=dose,
                    noise=(1.0, read_noise),
                    positions=columns if len(columns) else None,
                    pixel_size=r["pixel_size_A"],
                    meta={"technique": r["technique"], "image_index": i},
                )
            )
    return cases


def probe_cases(doses, probes=PROBES) -> list[Case]:
    cases = []
    for k, (spacing, width) in enumerate(probes):
        for j, dose in enumerate(doses):
            rng = np.random.default_rng([SEED, 1000 + k, j])
            p = lattice_probe(rng, dose=dose, spacing=spacing, width=width)
            cases.append(
                Case(
                    "probe",
                    f"lattice w{width:g}px a{spacing:g}px",
                    "any",
                    p.noisy,
                    p.clean,
                    dose=dose,
                    noise=(1.0, 0.0),
                    positions=p.positions,
                )
            )
    return cases


def synthetic_cases(n: int) -> list[Case]:
    from napari_emdenoise.training.datasets import PairConfig, make_training_pair

    cases = []
    for modality in ("stem", "tem"):
        cfg = PairConfig(modality=modality, kind="hr", patch_size=256, seed=0)
        for i in range(n):
            x, y, params = make_training_pair(cfg, i, "test", return_params=True)
            dose = float("inf")
            for layer in ("detector_noise", "shot_noise"):
                if layer in params.layers and params[layer].enabled:
                    dose = float(params[layer].dose)
                    break
            cases.append(
                Case(
                    "synthetic",
                    f"test #{i}",
                    modality,
                    np.asarray(x, np.float32),
                    np.asarray(y, np.float64),
                    dose=dose,
                    noise=None,
                )
            )
    return cases


# --------------------------------------------------------------------------- evaluation


def methods_for(
    case: Case,
    models: dict[str, str],
    have_bm3d: bool,
    refs: dict[str, str] | None,
    ensemble: bool = False,
) -> list[str]:
    """Method names for ``case``; ``refs``: the authors' model per modality, or None."""
    names = ["raw", "gaussian", "nlm"]
    if have_bm3d:
        names.append("bm3d-gat")
    names += [
        f"{prefix}:{m}"
        for prefix in ("model", "wiener", "refined")
        for m, mod in models.items()
        if case.modality in ("any", mod)
    ]
    names += [f"safeguard:{m}" for m, mod in models.items() if case.modality in ("any", mod)]
    if ensemble:
        names += [
            f"{prefix}:{m}"
            for prefix in ("ensemble", "ensemble+safeguard")
            for m, mod in models.items()
            if case.modality in ("any", mod)
        ]
    if refs:
        if case.modality == "any":
            names.append(f"ref:{refs['stem']}")
        elif case.modality in refs:
            names.append(f"ref:{refs[case.modality]}")
    return names


def restore_with(method: str, case: Case) -> np.ndarray:
    x = case.noisy
    if method == "raw":
        return x
    if method == "gaussian":
        return best_gaussian(x, case.clean)[0]
    if case.noise is None:
        # Synthetic pairs: normalised images whose distortions (scan noise, jitter,
        # post-processing) are not Poisson–Gaussian, so no VST; oracle σ / h instead.
        if method == "nlm":
            return nlm_oracle(x, case.clean)
        if method == "bm3d-gat":
            return bm3d_oracle(x, case.clean)
    gain, sigma = case.noise if case.noise is not None else (1.0, 0.0)
    if method == "nlm":
        return nlm_gat(x, case.clean, gain, sigma)
    if method == "bm3d-gat":
        return bm3d_gat(x, gain, sigma)
    if method.startswith("model:"):
        return run_model(method.split(":", 1)[1], x, refine=False)
    if method.startswith("wiener:"):
        return run_model(method.split(":", 1)[1], x, lattice=False)
    if method.startswith("refined:"):
        return run_model(method.split(":", 1)[1], x)
    if method.startswith("safeguard:"):
        return run_model(method.split(":", 1)[1], x, safeguard=True)
    if method.startswith("ensemble:"):
        return run_model(method.split(":", 1)[1], x, ensemble=ENSEMBLE)
    if method.startswith("ensemble+safeguard:"):
        return run_model(method.split(":", 1)[1], x, safeguard=True, ensemble=ENSEMBLE)
    if method.startswith("ref:"):
        return run_reference(method.split(":", 1)[1], x)
    raise ValueError(method)


def evaluate(
    cases: list[Case], models, have_bm3d, refs, montage_keys, ensemble: bool = False
) -> tuple[list, dict]:
    rows = []
    montages: dict[str, list] = {}
    t_start = time.perf_counter()
    for k, case in enumerate(cases):
        ref = None
        if case.positions is not None:
            ref = column_reference(case.clean, case.positions, pixel_size=case.pixel_size)
            # Centre of mass on the same columns, for comparison with the Gaussian fit.
            ref_com = column_reference(
                case.clean,
                ref.nominal,
                pixel_size=case.pixel_size,
                radius=ref.radius,
                polarity=ref.polarity,
                method="com",
            )
        key = f"{case.group}:{case.name}@{case.dose:g}"
        clean_ratio = max(nyquist_ratio(case.clean), 1.0)
        for method in methods_for(case, models, have_bm3d, refs, ensemble):
            t0 = time.perf_counter()
            try:
                out = restore_with(method, case)
            except Exception as exc:  # a broken optional back-end must not stop the run
                print(f"  {method} failed on {key}: {type(exc).__name__}: {exc}")
                continue
            seconds = time.perf_counter() - t0
            row = {
                "group": case.group,
                "case": case.name,
                "modality": case.modality,
                "technique": case.meta.get("technique", ""),
                "dose": case.dose,
                "method": method,
                "psnr": psnr(out, case.clean),
                "ssim": ssim(out, case.clean),
                "seconds": seconds,
                "nyquist_excess": nyquist_excess(out, case.noisy) if method != "raw" else 1.0,
                # Against the clean image: a lattice reflection near Nyquist is not an artefact.
                "nyquist_excess_vs_clean": nyquist_ratio(out) / clean_ratio,
                # Size of the 2-px pattern, relative to the clean image's range.
                "nyquist_amplitude": nyquist_amplitude(out) / float(np.ptp(case.clean)),
            }
            if ref is not None:
                row["columns"] = column_errors(out, ref)
                row["columns_com"] = column_errors(out, ref_com)
                if method == "raw":
                    row["columns"].update(crlb_entries(case, ref))
            rows.append(row)
            if key in montage_keys:
                montages.setdefault(key, []).append((method, out))
        if key in montage_keys:
            montages[key].insert(0, ("clean", case))
        elapsed = time.perf_counter() - t_start
        print(f"  {k + 1}/{len(cases)} cases, {elapsed:.0f} s", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    return rows, montages


def crlb_entries(case: Case, ref) -> dict[str, float]:
    """The Cramér–Rao bound of the column RMS error on this case's counts (px, pm)."""
    try:
        bound = position_crlb(case.clean, ref)
    except ValueError:  # e.g. zero expected counts somewhere: no bound
        return {}
    if bound.size == 0:
        return {}
    rms = float(np.sqrt(np.mean(bound**2)))
    out = {"crlb_rms_px": rms}
    if case.pixel_size is not None:
        out["crlb_rms_pm"] = 100.0 * case.pixel_size * rms
    return out


# --------------------------------------------------------------------------- tables


def _mean(values) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def _order(methods) -> list[str]:
    def rank(m: str) -> tuple[int, str]:
        base = ["raw", "gaussian", "nlm", "bm3d-gat"]
        if m in base:
            return (base.index(m), m)
        prefixes = {
            "model": 10,
            "wiener": 11,
            "refined": 12,
            "safeguard": 15,
            "ensemble": 16,
            "ensemble+safeguard": 17,
        }
        return (prefixes.get(m.split(":", 1)[0], 20), m)

    return sorted(set(methods), key=rank)


LABEL = {
    "raw": "raw",
    "gaussian": "Gaussian (best σ)",
    "nlm": "NLM-GAT (best h)",
    "bm3d-gat": "BM3D-GAT (true noise)",
}


CRLB_LABEL = "Cramér–Rao bound (unbiased estimate, exact column shape known)"


def label(m: str) -> str:
    if m.startswith("model:"):
        return f"{m.split(':', 1)[1]} (network alone)"
    if m.startswith("wiener:"):
        return f"{m.split(':', 1)[1]} + Wiener"
    if m.startswith("refined:"):
        return f"{m.split(':', 1)[1]} + Wiener + lattice (default)"
    if m.startswith("safeguard:"):
        return f"{m.split(':', 1)[1]} + Wiener + lattice + safeguard"
    if m.startswith("ensemble:"):
        return f"{m.split(':', 1)[1]} × {ENSEMBLE} flips/rotations + Wiener + lattice"
    if m.startswith("ensemble+safeguard:"):
        return f"{m.split(':', 1)[1]} × {ENSEMBLE} + Wiener + lattice + safeguard"
    return LABEL.get(m, m)


def by_dose_table(rows, metric: Callable[[dict], float], fmt: str) -> tuple[list, list, dict]:
    doses = sorted({r["dose"] for r in rows})
    header = ["method"] + [f"{d:g} e⁻/px" for d in doses]
    table, summary = [], {}
    for m in _order(r["method"] for r in rows):
        cells, per = [label(m)], {}
        for d in doses:
            v = _mean(metric(r) for r in rows if r["method"] == m and r["dose"] == d)
            per[f"{d:g}"] = v
            cells.append(fmt.format(v) if np.isfinite(v) else "–")
        table.append(cells)
        summary[m] = per
    return header, table, summary


def col(key: str, which: str = "columns") -> Callable[[dict], float]:
    return lambda r: r.get(which, {}).get(key, float("nan"))


def report_group(rows, title: str, unit: str) -> dict:
    out: dict = {}
    pos_unit = "pm" if unit == "pm" else "px"
    specs = [
        ("psnr", "PSNR [dB]", lambda r: r["psnr"], "{:.2f}"),
        ("ssim", "SSIM", lambda r: r["ssim"], "{:.3f}"),
        (
            f"rms_{pos_unit}",
            f"column RMS position error [{pos_unit}]",
            col(f"rms_{pos_unit}"),
            "{:.2f}",
        ),
        (
            f"com_rms_{pos_unit}",
            f"column RMS position error, centre of mass instead of Gaussian fit [{pos_unit}]",
            col(f"rms_{pos_unit}", "columns_com"),
            "{:.2f}",
        ),
        (
            f"bias_{pos_unit}",
            f"column position bias (length of mean shift) [{pos_unit}]",
            col(f"bias_{pos_unit}"),
            "{:.2f}",
        ),
        (
            "intensity_rms",
            "column intensity RMS error [%]",
            lambda r: 100 * col("intensity_rms")(r),
            "{:.1f}",
        ),
        (
            "intensity_bias",
            "column intensity bias [%]",
            lambda r: 100 * col("intensity_bias")(r),
            "{:+.1f}",
        ),
    ]
    for key, name, fn, fmt in specs:
        if key not in ("psnr", "ssim") and not any("columns" in r for r in rows):
            continue
        header, table, summary = by_dose_table(rows, fn, fmt)
        if key == f"rms_{pos_unit}":
            # The lowest RMS error any unbiased estimate from the same counts can have.
            doses = sorted({r["dose"] for r in rows})
            raw = [r for r in rows if r["method"] == "raw"]
            bound = {
                f"{d:g}": _mean(col(f"crlb_{key}")(r) for r in raw if r["dose"] == d) for d in doses
            }
            table.append(
                [CRLB_LABEL] + [fmt.format(v) if np.isfinite(v) else "–" for v in bound.values()]
            )
            summary["crlb"] = bound
        print(f"\n#### {title}: {name}\n")
        print(markdown_table(header, table))
        out[key] = summary
    return out


def timing_table(rows) -> dict:
    header = [
        "method",
        "seconds / 256² image",
        "Nyquist excess vs input, median (max)",
        "vs clean, median (max)",
        "2-px amplitude, max [% of range]",
    ]
    table, summary = [], {}
    for m in _order(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == m]
        s = _mean(r["seconds"] for r in sel)
        ny = [r["nyquist_excess"] for r in sel]
        nc = [r["nyquist_excess_vs_clean"] for r in sel]
        amp = 100 * max(r["nyquist_amplitude"] for r in sel)
        table.append(
            [
                label(m),
                f"{s:.2f}",
                f"{np.median(ny):.1f} ({max(ny):.1f})",
                f"{np.median(nc):.1f} ({max(nc):.1f})",
                f"{amp:.2f}",
            ]
        )
        summary[m] = {
            "seconds": s,
            "median_nyquist_excess": float(np.median(ny)),
            "max_nyquist_excess": max(ny),
            "median_nyquist_excess_vs_clean": float(np.median(nc)),
            "max_nyquist_excess_vs_clean": max(nc),
            "max_nyquist_amplitude_rel": amp / 100,
        }
    print("\n#### Timing (one core) and Nyquist spike\n")
    print(markdown_table(header, table))
    return summary


def _psnr_gap(
    mean_of, method: str, baseline: str, label: str, doses, target: float, shown: str
) -> str:
    """One issue-8 target line: mean PSNR of ``method`` minus ``baseline`` at each dose."""
    gap = [
        mean_of(method, (d,), lambda r: r["psnr"]) - mean_of(baseline, (d,), lambda r: r["psnr"])
        for d in doses
    ]
    ok = all(g >= target for g in gap)
    gaps = ", ".join(f"{g:+.2f}" for g in gap)
    return f"PSNR − {label} at {doses} = {gaps} dB (target ≥ {shown}: {'met' if ok else 'missed'})"


def targets(rows) -> list[str]:
    """Issue 8's targets for each model and reference, per physics technique."""
    lines = []
    for tech in ("HAADF", "HRTEM"):
        sel = [r for r in rows if r["group"] == "physics" and r["technique"] == tech]
        if not sel:
            continue

        def mean_of(m, doses, fn, sel=sel):
            return _mean(fn(r) for r in sel if r["method"] == m and r["dose"] in doses)

        low = tuple(d for d in (2.0, 5.0, 20.0) if any(r["dose"] == d for r in sel))
        high = tuple(d for d in (100.0, 200.0) if any(r["dose"] == d for r in sel))
        for m in _order(r["method"] for r in sel):
            if not m.startswith(("model:", "refined:", "safeguard:", "ensemble", "ref:")):
                continue
            parts = [f"{tech} {m}:"]
            if low and any(r["method"] == "bm3d-gat" for r in sel):
                parts.append(_psnr_gap(mean_of, m, "bm3d-gat", "BM3D-GAT", low, 1.0, "+1"))
            if 5.0 in low:
                ratio = mean_of(m, (5.0,), col("rms_pm")) / mean_of("raw", (5.0,), col("rms_pm"))
                floor = mean_of("raw", (5.0,), col("crlb_rms_pm")) / mean_of(
                    "raw", (5.0,), col("rms_pm")
                )
                parts.append(
                    f"column RMS / raw at 5 e⁻/px = {ratio:.2f} (target ≤ 0.5: "
                    f"{'met' if ratio <= 0.5 else 'missed'}; the Cramér–Rao bound is "
                    f"{floor:.2f} × raw)"
                )
            if high:
                parts.append(_psnr_gap(mean_of, m, "gaussian", "best Gaussian", high, 0.0, "0"))
            lines.append(" ".join(parts[:1]) + "\n    " + "\n    ".join(parts[1:]))
    return lines


# --------------------------------------------------------------------------- montages


def _to_u8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (255 * np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)).astype(np.uint8)


def save_montage(key: str, entries: list, path: Path, crop: int = 96, zoom: int = 2) -> None:
    """Rows: methods. Columns: input | output | output − clean | input − output."""
    from PIL import Image, ImageDraw

    case = entries[0][1]
    h, w = case.clean.shape
    r0, c0 = (h - crop) // 2, (w - crop) // 2
    sl = (slice(r0, r0 + crop), slice(c0, c0 + crop))
    clean = case.clean[sl]
    lo, hi = np.percentile(case.clean, [0.5, 99.5])
    err_scale = 0.25 * (hi - lo)
    tile = crop * zoom
    label_w = 170
    rows_img = []
    header = Image.new("L", (label_w + 4 * (tile + 2), 18), 255)
    d = ImageDraw.Draw(header)
    for i, text in enumerate(["input (noisy)", "output", "output - clean", "input - output"]):
        d.text((label_w + i * (tile + 2) + 4, 3), text, fill=0)
    rows_img.append(np.asarray(header))
    first = [("clean", case.clean)] + [(m, o) for m, o in entries[1:]]
    for method, out in first:
        out = out[sl]
        x = case.noisy[sl]
        panels = [
            _to_u8(x, lo, hi),
            _to_u8(out, lo, hi),
            _to_u8(out - clean, -err_scale, err_scale),
            _to_u8(x - out, -err_scale * 2, err_scale * 2),
        ]
        big = [np.kron(p, np.ones((zoom, zoom), np.uint8)) for p in panels]
        lab = Image.new("L", (label_w, tile), 255)
        text = label(method).replace("σ", "sigma")  # the default bitmap font is ASCII
        ImageDraw.Draw(lab).text((4, tile // 2 - 6), text, fill=0)
        sep = np.full((tile, 2), 255, np.uint8)
        parts = [np.asarray(lab)]
        for b in big:
            parts += [b, sep]
        rows_img.append(np.concatenate(parts, axis=1))
    width = max(r.shape[1] for r in rows_img)
    rows_img = [np.pad(r, ((0, 2), (0, width - r.shape[1])), constant_values=255) for r in rows_img]
    img = Image.fromarray(np.concatenate(rows_img, 0))
    title = key.split(":", 1)[-1].replace("Å", "A") + " e/px"
    ImageDraw.Draw(img).text((4, 3), title[: label_w // 6], fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subset (< 3 min on one core)")
    ap.add_argument("--models", nargs="*", default=None, help="bundled model names (default all)")
    ap.add_argument("--doses", nargs="+", type=float, default=None, help="counts per pixel")
    ap.add_argument("--read-noise", type=float, default=0.5, help="read noise σ, counts")
    ap.add_argument("--synthetic-n", type=int, default=None, help="held-out pairs per modality")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the authors' models")
    ap.add_argument("--no-montages", action="store_true")
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help=f"add rows for each model with the {ENSEMBLE}-transform self-ensemble (8× slower)",
    )
    ap.add_argument("--physics-dir", type=Path, default=physics_set.DEFAULT_DIR)
    ap.add_argument(
        "--reference-kind",
        choices=("hr", "lr"),
        default="hr",
        help="which of the authors' models are the reference: hr (atomic resolution) or lr "
        "(low magnification, for benchmarks/physics_set_lr.py's set)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "restore_quality.json")
    args = ap.parse_args(argv)

    import torch

    from napari_emdenoise.models import list_models

    torch.set_num_threads(1)
    cards = list_models()
    names = list(cards) if args.models is None else args.models
    unknown = [n for n in names if n not in cards]
    if unknown:
        ap.error(f"unknown models {unknown}; available: {sorted(cards)}")
    models = {n: cards[n].modality for n in names}

    have_bm3d = not args.no_bm3d and importlib.util.find_spec("bm3d") is not None
    if not have_bm3d and not args.no_bm3d:
        print("bm3d not installed: BM3D-GAT rows skipped (pip install bm3d)")
    references = REFERENCE_MODELS_LR if args.reference_kind == "lr" else REFERENCE_MODELS
    refs: dict[str, str] | None = None
    if not args.no_reference:
        why = reference_available()
        if why is None:
            try:
                t0 = time.perf_counter()
                for name in references.values():
                    reference_model(name)
                refs = references
                print(f"authors' released models loaded in {time.perf_counter() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001 - report and go on without them
                print(f"authors' released models not usable: {type(exc).__name__}: {exc}")
        else:
            print(f"authors' released models skipped: {why}")

    doses = tuple(args.doses) if args.doses else ((5.0, 100.0) if args.quick else DOSES)
    n_syn = args.synthetic_n if args.synthetic_n is not None else (1 if args.quick else 8)
    cases = (
        physics_cases(doses, args.read_noise, args.quick, args.physics_dir)
        + probe_cases((50.0,) if args.quick else PROBE_DOSES)
        + synthetic_cases(n_syn)
    )
    montage_keys = set()
    if not args.no_montages:
        wanted = [
            ("physics", "sto001_haadf", 5.0),
            ("physics", "si110_haadf", 20.0),
            ("physics", "sto001_hrtem", 5.0),
            ("physics", "au001_hrtem", 20.0),
            ("probe", "lattice w2.5px", 50.0),
        ]
        for group, prefix, dose in wanted:
            for c in cases:
                if c.group == group and c.name.startswith(prefix) and c.dose == dose:
                    montage_keys.add(f"{c.group}:{c.name}@{c.dose:g}")
                    break
    print(f"{len(cases)} cases; models {sorted(models)}; bm3d {have_bm3d}; reference {bool(refs)}")
    t0 = time.perf_counter()
    rows, montages = evaluate(cases, models, have_bm3d, refs, montage_keys, args.ensemble)
    total = time.perf_counter() - t0

    report: dict = {
        "benchmark": "restore_quality",
        "seed": SEED,
        "read_noise_counts": args.read_noise,
        "doses": list(doses),
        "quick": args.quick,
        "models": {n: {"modality": m, "kind": cards[n].kind} for n, m in models.items()},
        "reference_models": sorted(refs.values()) if refs else [],
        "seconds_total": total,
        "summary": {},
        "rows": rows,
    }
    for tech, title in (
        ("HAADF", "Physics set, HAADF-STEM (abTEM)"),
        ("HRTEM", "Physics set, HRTEM (abTEM)"),
    ):
        sel = [r for r in rows if r["group"] == "physics" and r["technique"] == tech]
        if sel:
            n_img = len({r["case"] for r in sel})
            report["summary"][f"physics:{tech}"] = report_group(
                sel, f"{title}, {n_img} images", "pm"
            )
    for name in sorted({r["case"] for r in rows if r["group"] == "probe"}, reverse=True):
        sel = [r for r in rows if r["group"] == "probe" and r["case"] == name]
        report["summary"][f"probe:{name}"] = report_group(
            sel, f"Lattice probe {name} (lag-free, Poisson)", "px"
        )
    for modality in ("stem", "tem"):
        sel = [r for r in rows if r["group"] == "synthetic" and r["modality"] == modality]
        if sel:
            header = ["method", "PSNR [dB]", "SSIM"]
            table, summary = [], {}
            for m in _order(r["method"] for r in sel):
                p = _mean(r["psnr"] for r in sel if r["method"] == m)
                s = _mean(r["ssim"] for r in sel if r["method"] == m)
                name = {"nlm": "NLM (best h)", "bm3d-gat": "BM3D (best σ)"}.get(m, label(m))
                table.append([name, f"{p:.2f}", f"{s:.3f}"])
                summary[m] = {"psnr": p, "ssim": s}
            n_img = len({r["case"] for r in sel})
            print(f"\n#### Synthetic held-out HR-{modality.upper()} ({n_img} images)\n")
            print(markdown_table(header, table))
            report["summary"][f"synthetic:{modality}"] = summary
    report["summary"]["timing"] = timing_table(rows)
    lines = targets(rows)
    if lines:
        print("\n#### Issue 8 targets (physics set)\n")
        print("\n".join(lines))
    report["targets"] = lines

    for key, entries in montages.items():
        safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in ".-@" else "_" for ch in key)
        path = args.out.parent / f"montage_{safe}.png"
        save_montage(key, entries, path)
        print(f"montage: {path}")
    path = write_json(args.out, report)
    print(f"\nwrote {path} in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality of 4D-STEM pattern denoising: raw, best Gaussian, PCA and the bundled Pix2Pix model.

Data (never used in training):

* held-out synthetic scans from :func:`napari_emdenoise.synth.diffraction.simulate_4dstem`
  (seeds outside the training streams), 64² patterns, with the full detector
  model (defects included);
* multislice simulations made with abTEM (J. Madsen and T. Susi, "The abTEM
  code: transmission electron microscopy from first principles", Open Research
  Europe 2021): SrTiO3 [001] nano-beam diffraction (2.5 mrad, separated disks)
  and Si [110] CBED (12 mrad, overlapping disks), plus GaAs [110] CBED (10 mrad)
  and Au [001] NBED (5 mrad, touching disks), added after the current model was
  chosen on the first two; 5×5 probe positions over one unit cell, two
  frozen-phonon configurations, detector resampled to 64².
  They are cached in ``benchmarks/data/stem4d_abtem.npz`` (``--simulate``
  rebuilds it) and noised here with a counting detector (Poisson only).

Methods: raw; a Gaussian filter in the detector plane with the best σ per
dose and data set (an oracle choice); PCA/SVD denoising in the hyperspy style
(Poisson-normalised, number of components at the elbow of the scree plot);
the bundled ``pix2pix-4dstem`` model (or ``--model``) as ``restore_4dstem``
runs it by default (``pix2pix``: with the raw counts put back above 2 detector
pixels in 3 passes, see ``local_counts_sigma`` and ``local_counts_passes``,
then the residuals that neighbouring scan positions share put back, see
``neighbour_residuals``), the same without the neighbour stage
(``pix2pix-pattern``: each pattern on its own, with the same count
correction) and the network output alone (``pix2pix-net``).

Metrics, averaged over the patterns: PSNR and SSIM after the Anscombe
transform 2·sqrt(x + 3/8) (data range of the clean pattern); Bragg-disk
positions (template-correlation peak, pixels) and integrated intensities
(relative error, and signed bias) measured on the clean pattern's disks;
contrast SNR of bright-field and annular-dark-field virtual images
(10·log10(var(clean) / MSE)); total-count error per pattern against the
clean and against the raw pattern; error of the scan-averaged pattern.

Usage::

    python benchmarks/stem4d_quality.py                 # table + JSON + montage
    python benchmarks/stem4d_quality.py --simulate      # rebuild the abTEM cache first
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / "data" / "stem4d_abtem.npz"
RESULTS = HERE / "results"
DOSES = (100.0, 300.0, 1000.0, 3000.0, 10000.0)
SIGMAS = (0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0)
PATTERN = 64


# ------------------------------------------------------------------ data sets
def simulate_abtem(out: Path = CACHE, scan: int = 5, only: list[str] | None = None) -> None:
    """Multislice 4D-STEM with abTEM; patterns resampled to 64² and saved as float32.

    ``only`` simulates just those set names and keeps the others already in ``out``.
    """
    import abtem
    from ase import Atoms
    from ase.build import bulk, surface
    from physics_set import _configure_abtem

    _configure_abtem()
    a = 3.905
    sto = Atoms(
        "SrTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[a, a, a],
        pbc=True,
    )
    si = abtem.orthogonalize_cell(
        surface(bulk("Si", "diamond", a=5.431, cubic=True), (1, 1, 0), 1, periodic=True)
    )
    gaas = abtem.orthogonalize_cell(
        surface(bulk("GaAs", "zincblende", a=5.653, cubic=True), (1, 1, 0), 1, periodic=True)
    )
    au = bulk("Au", "fcc", a=4.078, cubic=True)
    mgo = bulk("MgO", "rocksalt", a=4.212, cubic=True)
    cu = abtem.orthogonalize_cell(
        surface(bulk("Cu", "fcc", a=3.615, cubic=True), (1, 1, 0), 1, periodic=True)
    )
    ge = abtem.orthogonalize_cell(
        surface(bulk("Ge", "diamond", a=5.658, cubic=True), (1, 1, 0), 1, periodic=True)
    )
    si001 = bulk("Si", "diamond", a=5.431, cubic=True)
    setups = {
        # name: (cell, lateral repeats, z repeats, semi-angle mrad, max angle mrad)
        "sto001_nbed": (sto, (8, 8), 20, 2.5, 24.0),
        "si110_cbed": (si, (4, 3), 26, 12.0, 30.0),
        # added after the model of December 2026 was chosen on the two sets above:
        # a check on data that played no part in any choice
        "gaas110_cbed": (gaas, (4, 3), 26, 10.0, 30.0),
        "au001_nbed": (au, (8, 8), 25, 5.0, 30.0),
        # added after the count correction of 2026-12-02 (2 px, 3 passes) was chosen
        # on the four sets above: a check on data that played no part in that choice
        "mgo001_nbed": (mgo, (8, 8), 18, 3.0, 24.0),
        "cu110_nbed": (cu, (6, 4), 30, 4.0, 30.0),
        "ge110_cbed": (ge, (4, 3), 22, 11.0, 30.0),
        "si001_cbed": (si001, (6, 6), 20, 9.0, 30.0),
    }
    import json

    arrays, meta = {}, {}
    if only and out.exists():
        old = np.load(out)
        meta = json.loads(str(old["meta"]))
        arrays = {k: old[k] for k in meta}
    for name, (cell, rep, nz, alpha, max_angle) in setups.items():
        if only and name not in only:
            continue
        lx, ly = cell.cell.lengths()[:2]
        atoms = cell * (*rep, nz)
        fp = abtem.FrozenPhonons(atoms, num_configs=2, sigmas=0.08, seed=1)
        pot = abtem.Potential(
            fp, sampling=0.06, slice_thickness=2.0, projection="infinite", parametrization="lobato"
        )
        probe = abtem.Probe(energy=200e3, semiangle_cutoff=alpha)
        probe.grid.match(pot)
        x0, y0 = lx * (rep[0] // 2), ly * (rep[1] // 2)
        grid = abtem.GridScan(
            start=(x0, y0), end=(x0 + lx, y0 + ly), gpts=(scan, scan), endpoint=False
        )
        det = abtem.PixelatedDetector(max_angle=max_angle)
        meas = probe.scan(pot, scan=grid, detectors=det).compute()
        arr = np.asarray(meas.array, dtype=np.float64)
        while arr.ndim > 4:
            arr = arr.mean(0)
        sampling = np.asarray(meas.angular_sampling, float)  # mrad per pixel, per axis
        extent = sampling * np.array(arr.shape[-2:])
        if not np.allclose(extent, extent.max(), rtol=0.1):  # axes swapped w.r.t. the array
            sampling = sampling[::-1]
        # resample both axes to 2·max_angle / 64 mrad per pixel, keeping each pattern's
        # total (linear interpolation), then centre-crop/pad to 64²
        step = 2.0 * max_angle / PATTERN
        zoom = sampling / step
        res = np.stack(
            [[_square(ndimage.zoom(p, zoom, order=1, mode="nearest")) for p in row] for row in arr]
        )
        res = np.clip(res, 0, None)
        res /= res.sum((2, 3), keepdims=True)
        arrays[name] = res.astype(np.float32)
        meta[name] = {
            "detector_step_mrad": step,
            "convergence_mrad": alpha,
            "thickness_A": float(atoms.cell.lengths()[2]),
            "scan_positions": [scan, scan],
            "frozen_phonons": 2,
            "energy_keV": 200.0,
        }
        print(f"simulated {name}: {arr.shape} → {res.shape}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta=json.dumps(meta), **arrays)


def _square(p: np.ndarray) -> np.ndarray:
    """Centre-crop or zero-pad a pattern to PATTERN × PATTERN pixels."""
    out = np.zeros((PATTERN, PATTERN))
    h, w = p.shape
    sy, sx = max((h - PATTERN) // 2, 0), max((w - PATTERN) // 2, 0)
    ty, tx = max((PATTERN - h) // 2, 0), max((PATTERN - w) // 2, 0)
    ch, cw = min(h, PATTERN), min(w, PATTERN)
    out[ty : ty + ch, tx : tx + cw] = p[sy : sy + ch, sx : sx + cw]
    return out


def abtem_sets(rng: np.random.Generator) -> list[dict]:
    import json

    if not CACHE.exists():
        raise FileNotFoundError(f"{CACHE} is missing: run with --simulate first")
    data = np.load(CACHE)
    meta = json.loads(str(data["meta"]))
    sets = []
    for name, m in meta.items():
        unit = data[name].astype(np.float64)
        for dose in DOSES:
            clean = unit * dose
            noisy = rng.poisson(clean).astype(np.float64)  # counting detector
            sets.append(
                {
                    "source": f"abtem:{name}",
                    "dose": dose,
                    "noisy": noisy,
                    "clean": clean,
                    "radius": m["convergence_mrad"] / m["detector_step_mrad"],
                }
            )
    return sets


def synthetic_sets(n_specimens: int, scan: int) -> list[dict]:
    from napari_emdenoise.synth.diffraction import simulate_4dstem

    sets = []
    for i, dose in enumerate(DOSES):
        for k in range(n_specimens):
            rng = np.random.default_rng([2026, 10, i, k])  # not a training stream
            noisy, clean, cal = simulate_4dstem((scan, scan), (PATTERN, PATTERN), dose, rng=rng)
            sets.append(
                {
                    "source": "synthetic",
                    "dose": dose,
                    "noisy": noisy.astype(np.float64),
                    "clean": clean.astype(np.float64),
                    "radius": cal["convergence_mrad"] / cal["detector_step"],
                }
            )
    return sets


# -------------------------------------------------------------------- methods
def gaussian(stack: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(stack, (0, 0, sigma, sigma), mode="nearest")


def elbow(values: np.ndarray) -> int:
    """Index of the scree-plot elbow: largest distance below the chord of log(variance).

    The criterion of hyperspy's ``estimate_elbow_position``: the point of the
    log explained-variance curve farthest from the line through its first and
    last points. Returns the number of components to keep (≥ 1).
    """
    y = np.log(np.clip(values, 1e-300, None))
    x = np.arange(len(y), dtype=float)
    x1, y1, x2, y2 = 0.0, y[0], x[-1], y[-1]
    dist = np.abs((y2 - y1) * x - (x2 - x1) * y + x2 * y1 - y2 * x1) / np.hypot(y2 - y1, x2 - x1)
    return int(np.argmax(dist)) + 1


def pca(stack: np.ndarray) -> tuple[np.ndarray, int]:
    """Poisson-normalised SVD (hyperspy ``decomposition(normalize_poissonian_noise=True)``)."""
    ny, nx, h, w = stack.shape
    x = np.clip(stack.reshape(ny * nx, h * w), 0, None)
    a = np.sqrt(x.mean(1, keepdims=True)) + 1e-12  # navigation weights
    b = np.sqrt(x.mean(0, keepdims=True)) + 1e-12  # signal weights
    xw = x / a / b
    u, s, vt = np.linalg.svd(xw, full_matrices=False)
    k = elbow(s[: min(len(s), 50)] ** 2)
    rec = (u[:, :k] * s[:k]) @ vt[:k] * a * b
    return rec.reshape(stack.shape), k


def run_model(model, stack: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    ny, nx, h, w = stack.shape
    m = int(getattr(model, "size_multiple", 1))
    ph, pw = (-h) % m, (-w) % m
    flat = stack.reshape(-1, h, w).astype(np.float32)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            xb = flat[i : i + batch]
            if ph or pw:
                xb = np.pad(xb, ((0, 0), (0, ph), (0, pw)), mode="constant")
            out = model(torch.from_numpy(np.ascontiguousarray(xb))[:, None]).numpy()[:, 0]
            outs.append(out[:, :h, :w])
    return np.concatenate(outs).reshape(stack.shape).astype(np.float64)


# -------------------------------------------------------------------- metrics
def local_counts(raw: np.ndarray, net: np.ndarray) -> np.ndarray:
    """The engine's default per-pattern count correction (``restore_4dstem``'s defaults)."""
    from napari_emdenoise.engine._stack4d_block import restore_local_counts
    from napari_emdenoise.engine.stack4d import LOCAL_COUNTS_PASSES, LOCAL_COUNTS_SIGMA

    flat = raw.reshape(-1, *raw.shape[-2:]).astype(np.float32)
    out = net.reshape(flat.shape).astype(np.float32).copy()
    return restore_local_counts(flat, out, LOCAL_COUNTS_SIGMA, LOCAL_COUNTS_PASSES).reshape(
        raw.shape
    )


def anscombe(x: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.clip(x, 0, None) + 0.375)


def pattern_scores(est: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    from napari_emdenoise.metrics import psnr, ssim

    e, c = (
        anscombe(est).reshape(-1, *est.shape[-2:]),
        anscombe(clean).reshape(-1, *clean.shape[-2:]),
    )
    p = [psnr(a, b) for a, b in zip(e, c)]
    s = [ssim(a, b) for a, b in zip(e, c)]
    return float(np.mean(p)), float(np.mean(s))


def _disk(radius: float) -> np.ndarray:
    n = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return np.clip(radius - np.hypot(yy, xx) + 0.5, 0, 1)


def find_disks(clean: np.ndarray, radius: float, max_disks: int = 10):
    """Bragg disks of a clean pattern: (central (row, col), [(row, col), ...]) in pixels.

    Local maxima of the correlation with a disk template, at least one
    diameter apart (so only separated disks count), fully inside the detector,
    brighter than 1 % of the transmitted disk; the brightest is the transmitted one.
    """
    from skimage.feature import peak_local_max

    r = max(radius, 1.0)
    corr = ndimage.correlate(clean, _disk(r), mode="constant")
    peaks = peak_local_max(corr, min_distance=max(int(1.8 * r), 2), threshold_rel=0.01)
    h, w = clean.shape
    inside = [tuple(p) for p in peaks if r + 2 <= p[0] < h - r - 2 and r + 2 <= p[1] < w - r - 2]
    if not inside:
        return None, []
    central = inside[0]
    return central, inside[1 : 1 + max_disks]


def refine(pattern: np.ndarray, pos, radius: float) -> np.ndarray:
    """Sub-pixel disk position: centre of mass of the template correlation near ``pos``."""
    r = max(radius, 1.0)
    win = max(int(np.ceil(r)), 2)
    y0, x0 = pos
    t, lft = max(y0 - 2 * win, 0), max(x0 - 2 * win, 0)
    patch = pattern[t : y0 + 2 * win + 1, lft : x0 + 2 * win + 1]
    corr = ndimage.correlate(patch, _disk(r), mode="constant")
    cy, cx = y0 - t, x0 - lft
    sub = corr[max(cy - win, 0) : cy + win + 1, max(cx - win, 0) : cx + win + 1]
    sub = np.clip(sub - sub.min(), 0, None)
    if sub.sum() <= 0:
        return np.array([y0, x0], float)
    yy, xx = np.indices(sub.shape)
    return np.array(
        [
            (yy * sub).sum() / sub.sum() + max(cy - win, 0) + t,
            (xx * sub).sum() / sub.sum() + max(cx - win, 0) + lft,
        ]
    )


def disk_sum(pattern: np.ndarray, pos, radius: float) -> float:
    yy, xx = np.indices(pattern.shape)
    return float(pattern[np.hypot(yy - pos[0], xx - pos[1]) <= radius + 1].sum())


def disk_metrics(est: np.ndarray, clean: np.ndarray, radius: float) -> dict[str, float]:
    pos_err, int_err, int_bias = [], [], []
    for e, c in zip(est.reshape(-1, *est.shape[-2:]), clean.reshape(-1, *clean.shape[-2:])):
        _, disks = find_disks(c, radius)
        for d in disks:
            ref = refine(c, d, radius)
            pos_err.append(float(np.hypot(*(refine(e, d, radius) - ref))))
            ic = disk_sum(c, ref, radius)
            ie = disk_sum(e, ref, radius)
            if ic > 0:
                int_err.append(abs(ie - ic) / ic)
                int_bias.append((ie - ic) / ic)
    if not pos_err:
        return {"n_disks": 0}
    return {
        "n_disks": len(pos_err),
        "disk_position_error_px": float(np.mean(pos_err)),
        "disk_intensity_error": float(np.mean(int_err)),
        "disk_intensity_bias": float(np.mean(int_bias)),
    }


def virtual_images(stack: np.ndarray, clean: np.ndarray, radius: float):
    """Bright-field (disk r) and annular dark-field (≥ max(1.5 r, r + 3)) images."""
    mean_clean = clean.mean((0, 1))
    cy, cx = np.unravel_index(
        np.argmax(ndimage.gaussian_filter(mean_clean, radius / 2)), mean_clean.shape
    )
    yy, xx = np.indices(mean_clean.shape)
    d = np.hypot(yy - cy, xx - cx)
    bf, adf = d <= radius, d >= max(1.5 * radius, radius + 3)
    return (stack * bf).sum((2, 3)), (stack * adf).sum((2, 3))


def snr_db(v: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((v - ref) ** 2))
    var = float(np.var(ref))
    return float("inf") if mse == 0 else 10 * np.log10(max(var, 1e-30) / mse)


def evaluate(est: np.ndarray, s: dict) -> dict[str, float]:
    clean, noisy, r = s["clean"], s["noisy"], s["radius"]
    p, q = pattern_scores(est, clean)
    out = {"psnr_anscombe": p, "ssim_anscombe": q}
    out.update(disk_metrics(est, clean, r))
    bf_e, adf_e = virtual_images(est, clean, r)
    bf_c, adf_c = virtual_images(clean, clean, r)
    out["vbf_snr_db"] = snr_db(bf_e, bf_c)
    out["vadf_snr_db"] = snr_db(adf_e, adf_c)
    tot_e, tot_c, tot_n = est.sum((2, 3)), clean.sum((2, 3)), noisy.sum((2, 3))
    out["total_error_vs_clean"] = float(np.mean(np.abs(tot_e - tot_c) / tot_c))
    out["total_error_vs_raw"] = float(np.max(np.abs(tot_e - tot_n) / np.maximum(np.abs(tot_n), 1)))
    mc = clean.mean((0, 1))
    out["region_mean_error"] = float(np.abs(est.mean((0, 1)) - mc).sum() / mc.sum())
    return out


# ----------------------------------------------------------------------- main
def montage(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """raw | model | clean | residual (model − clean)/sqrt(clean + 1), one row per example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax_row, (label, raw, out, clean) in zip(axes, rows):
        vmax = np.sqrt(clean.max())
        for ax, img, title in zip(ax_row[:3], (raw, out, clean), ("raw", "Pix2Pix", "clean")):
            ax.imshow(np.sqrt(np.clip(img, 0, None)), cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{title} ({label})" if title == "raw" else title, fontsize=8)
        res = (out - clean) / np.sqrt(clean + 1.0)
        ax_row[3].imshow(res, cmap="RdBu_r", vmin=-2, vmax=2)
        ax_row[3].set_title("(out − clean)/√(clean+1)", fontsize=8)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


_VERDICT = {True: "yes", False: "NO", None: "n/a (no separated disks)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="pix2pix-4dstem", help="registry name or .safetensors")
    ap.add_argument("--simulate", action="store_true", help="rebuild the abTEM cache first")
    ap.add_argument("--specimens", type=int, default=3, help="synthetic scans per dose")
    ap.add_argument("--scan", type=int, default=10, help="synthetic scan side (positions)")
    ap.add_argument("--out", type=Path, default=RESULTS / "stem4d_quality.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from napari_emdenoise.engine.neighbour_residuals import correct_in_memory
    from napari_emdenoise.models.registry import load_model

    torch.set_num_threads(args.threads)
    if args.simulate or not CACHE.exists():
        simulate_abtem()
    model, card = load_model(args.model)
    sets = synthetic_sets(args.specimens, args.scan) + abtem_sets(np.random.default_rng(2026))

    results: dict[tuple[str, float, str], list[dict]] = {}
    gauss_scores: dict[tuple[str, float, float], list[float]] = {}
    examples = []
    for s in sets:
        src, dose = s["source"], s["dose"]
        group = "synthetic" if src == "synthetic" else src
        est = {"raw": s["noisy"]}
        for sigma in SIGMAS:
            g = gaussian(s["noisy"], sigma)
            gauss_scores.setdefault((group, dose, sigma), []).append(
                pattern_scores(g, s["clean"])[0]
            )
            s.setdefault("gauss", {})[sigma] = g
        est["pca"], s["pca_k"] = pca(s["noisy"])
        est["pix2pix-net"] = run_model(model, s["noisy"])
        est["pix2pix-pattern"] = local_counts(s["noisy"], est["pix2pix-net"])
        est["pix2pix"] = correct_in_memory(s["noisy"], est["pix2pix-pattern"])[0]
        s["est"] = est
        if dose == 1000.0 and len([e for e in examples if e[0].startswith(group)]) < 2:
            i = len(examples) % s["noisy"].shape[0]
            examples.append(
                (f"{group} {dose:.0f} c", s["noisy"][i, i], est["pix2pix"][i, i], s["clean"][i, i])
            )
    # best Gaussian σ per (data group, dose): an oracle choice
    best_sigma = {}
    for (group, dose, sigma), sc in gauss_scores.items():
        key = (group, dose)
        if key not in best_sigma or np.mean(sc) > best_sigma[key][1]:
            best_sigma[key] = (sigma, float(np.mean(sc)))
    for s in sets:
        group = "synthetic" if s["source"] == "synthetic" else s["source"]
        sigma = best_sigma[(group, s["dose"])][0]
        s["est"]["gaussian"] = s.pop("gauss")[sigma]
        for method, e in s["est"].items():
            results.setdefault((group, s["dose"], method), []).append(evaluate(e, s))

    methods = ("raw", "gaussian", "pca", "pix2pix-net", "pix2pix-pattern", "pix2pix")
    keys = (
        "psnr_anscombe", "ssim_anscombe", "disk_position_error_px", "disk_intensity_error",
        "disk_intensity_bias", "vbf_snr_db", "vadf_snr_db", "total_error_vs_clean",
        "total_error_vs_raw", "region_mean_error",
    )  # fmt: skip
    table, summary = [], []
    groups = sorted({k[0] for k in results}, key=lambda g: (g != "synthetic", g))
    for group in groups:
        for dose in DOSES:
            row_scores = {}
            for method in methods:
                runs = results[(group, dose, method)]
                agg = {}
                for k in keys:
                    vals = [r[k] for r in runs if k in r and np.isfinite(r[k])]
                    agg[k] = float(np.mean(vals)) if vals else float("nan")
                agg["n_disks"] = int(sum(r.get("n_disks", 0) for r in runs))
                row_scores[method] = agg
                label = method
                if method == "gaussian":
                    label = f"gaussian σ={best_sigma[(group, dose)][0]}"
                table.append(
                    [group, f"{dose:.0f}", label]
                    + [
                        f"{agg[k]:.3f}"
                        if "error" in k or "ssim" in k or "bias" in k
                        else f"{agg[k]:.2f}"
                        for k in keys
                    ]
                )
            summary.append({"group": group, "dose": dose, "scores": row_scores,
                            "gaussian_sigma": best_sigma[(group, dose)][0]})  # fmt: skip
    header = ["data", "counts", "method", "PSNR(A) dB", "SSIM(A)", "disk pos px", "disk I err",
              "disk I bias", "vBF SNR dB", "vADF SNR dB", "Σ err vs clean", "Σ err vs raw (max)",
              "region-mean err"]  # fmt: skip
    print(markdown_table(header, table))

    # targets
    print("\nTargets (300–3,000 counts per pattern):")
    checks = []
    for entry in summary:
        if not 300 <= entry["dose"] <= 3000:
            continue
        sc = entry["scores"]
        gain = sc["pix2pix"]["psnr_anscombe"] - sc["gaussian"]["psnr_anscombe"]
        c = {
            "group": entry["group"],
            "dose": entry["dose"],
            "psnr_gain_over_best_gaussian_db": gain,
            "psnr_target_met": gain >= 1.0,
            "total_counts_within_5pct": sc["pix2pix"]["total_error_vs_raw"] <= 0.05,
            "region_mean_not_worse_than_raw": sc["pix2pix"]["region_mean_error"]
            <= sc["raw"]["region_mean_error"],
            # None: no separated Bragg disks to measure (overlapping-disk CBED)
            "disk_intensity_not_worse_than_raw": (
                sc["pix2pix"]["disk_intensity_error"] <= sc["raw"]["disk_intensity_error"]
                if np.isfinite(sc["raw"]["disk_intensity_error"])
                else None
            ),
        }
        checks.append(c)
        print(
            f"- {c['group']} {c['dose']:.0f} counts: Pix2Pix − best Gaussian = {gain:+.2f} dB "
            f"({'met' if c['psnr_target_met'] else 'NOT met'}); totals kept "
            f"{'yes' if c['total_counts_within_5pct'] else 'NO'}; region mean ≤ raw "
            f"{'yes' if c['region_mean_not_worse_than_raw'] else 'NO'}; disk intensities ≤ raw "
            f"{_VERDICT[c['disk_intensity_not_worse_than_raw']]}"
        )
    png = RESULTS / "stem4d_montage.png"
    montage(examples, png)
    pca_k = {f"{s['source']}@{s['dose']:.0f}": s["pca_k"] for s in sets}
    path = write_json(
        args.out,
        {
            "model": card.name,
            "model_training": card.training,
            "doses": list(DOSES),
            "summary": summary,
            "targets": checks,
            "pca_components": pca_k,
            "montage": str(png.relative_to(HERE.parent)),
        },
    )
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Physics validation set: multislice HAADF-STEM and HRTEM images made with abTEM.

Usage::

    python benchmarks/physics_set.py [--out benchmarks/data] [--phonons 2] [--size 256] [--force]

Writes ``physics_set.npz`` (clean images, float32, normalised to a mean of 1,
so ``dose * image`` is the expected number of counts per pixel) and
``physics_set.json`` (what each image is: crystal, zone axis, technique,
optics, pixel size, rotation, and the atom columns it shows). Noise is *not*
stored: benchmarks add Poisson (and read) noise at the dose they test, with a
seeded :class:`numpy.random.Generator` (:func:`add_noise`).

This set is for **validation only**. Nothing in it may be used for training:
it exists to test whether a restoration generalises to images that no
generator of this project produced.

How the images are made (multislice, Kirkland, "Advanced Computing in
Electron Microscopy", 2010; abTEM: Madsen & Susi, "The abTEM code: transmission
electron microscopy from first principles", Open Research Europe, 2021):

* The crystal is periodic, so one orthogonal unit cell of the projected
  structure contains all the information of the clean image. HAADF-STEM: the
  probe is scanned over *one* unit cell at about the Nyquist sampling of the
  incoherent image (λ / 4α), through a potential a few cells wide so that the
  probe does not see itself. HRTEM: a plane wave goes through one unit cell and
  the contrast transfer function (defocus, Cs, focal and angular spread in the
  quasi-coherent approximation, objective aperture) is applied to the exit wave.
* The periodic image of that cell is then written as its Fourier series and
  evaluated exactly (trigonometric interpolation) on the pixel grid of the
  final image: any pixel size (0.05–0.3 Å here), any in-plane rotation and any
  origin, without a second simulation. HAADF is point-sampled (a STEM probe
  position per pixel) after a Gaussian effective source size; HRTEM is
  integrated over each camera pixel (sinc transfer).
* Thermal diffuse scattering is included with frozen phonons
  (``--phonons`` configurations).

Cost: the cached set (27 images of 256², 9 simulations, 2 frozen-phonon
configurations) took 36 minutes of wall time on a 2-core machine shared with
three other jobs, about 10 CPU-minutes; Si and GaAs [110] HAADF (the largest
scanned cells) take two thirds of it. The result is about 6 MiB.

The true column positions are the projected atom positions, mapped into each
image's pixel coordinates ``(row, col)``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / "data"
NPZ_NAME = "physics_set.npz"
JSON_NAME = "physics_set.json"
SEED = 20230601


@dataclass
class Simulation:
    """One multislice simulation: a crystal, a zone axis, a technique and its optics."""

    key: str
    crystal: str
    zone_axis: str
    technique: str  # "HAADF" or "HRTEM"
    energy_eV: float
    n_cells_z: int
    pixel_sizes_A: tuple[float, ...]
    optics: dict = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return "stem" if self.technique == "HAADF" else "tem"


# HAADF: aberration-corrected 300 kV probe, 25 mrad, detector 60–160 mrad (Z-contrast).
_HAADF = {"semiangle_cutoff_mrad": 25.0, "detector_mrad": [60.0, 160.0], "source_fwhm_A": 0.6}

SIMULATIONS: tuple[Simulation, ...] = (
    Simulation("sto001_haadf", "SrTiO3", "[001]", "HAADF", 300e3, 10, (0.06, 0.12, 0.2), _HAADF),
    Simulation("si110_haadf", "Si", "[110]", "HAADF", 300e3, 10, (0.05, 0.1, 0.16), _HAADF),
    Simulation("gaas110_haadf", "GaAs", "[110]", "HAADF", 300e3, 10, (0.07, 0.1, 0.14), _HAADF),
    Simulation("au001_haadf", "Au", "[001]", "HAADF", 300e3, 10, (0.08, 0.15, 0.3), _HAADF),
    Simulation(
        "mos2_001_haadf", "MoS2 (1 layer)", "[001]", "HAADF", 300e3, 1, (0.06, 0.12, 0.25), _HAADF
    ),
    # HRTEM, negative-Cs imaging (Jia, Lentzen & Urban, "Atomic-resolution imaging of
    # oxygen in perovskite ceramics", Science, 2003): columns bright on dark.
    Simulation(
        "sto001_hrtem",
        "SrTiO3",
        "[001]",
        "HRTEM",
        300e3,
        8,
        (0.05, 0.1, 0.2),
        {
            "Cs_um": -15.0,
            "defocus": "scherzer",
            "focal_spread_A": 30.0,
            "angular_spread_mrad": 0.2,
            "aperture_mrad": 30.0,
        },
    ),
    Simulation(
        "gaas110_hrtem",
        "GaAs",
        "[110]",
        "HRTEM",
        300e3,
        8,
        (0.06, 0.12, 0.18),
        {
            "Cs_um": -10.0,
            "defocus": "scherzer",
            "focal_spread_A": 30.0,
            "angular_spread_mrad": 0.2,
            "aperture_mrad": 30.0,
        },
    ),
    # Positive Cs at Scherzer defocus: columns dark on bright.
    Simulation(
        "au001_hrtem",
        "Au",
        "[001]",
        "HRTEM",
        300e3,
        6,
        (0.07, 0.14, 0.3),
        {
            "Cs_um": 20.0,
            "defocus": "scherzer",
            "focal_spread_A": 40.0,
            "angular_spread_mrad": 0.3,
            "aperture_mrad": 25.0,
        },
    ),
    # Low-voltage HRTEM of graphene (80 kV, Cs-corrected, monochromated).
    Simulation(
        "graphene_hrtem",
        "graphene",
        "[001]",
        "HRTEM",
        80e3,
        1,
        (0.05, 0.09, 0.15),
        {
            "Cs_um": -10.0,
            "defocus": "scherzer",
            "focal_spread_A": 10.0,
            "angular_spread_mrad": 0.1,
            "aperture_mrad": 50.0,
        },
    ),
)


def structure(crystal: str, zone_axis: str):
    """Orthogonal unit cell (``ase.Atoms``) of ``crystal`` with ``zone_axis`` along z."""
    import abtem
    from ase import Atoms
    from ase.build import bulk, graphene, mx2, surface

    if crystal == "SrTiO3" and zone_axis == "[001]":
        a = 3.905
        return Atoms(
            "SrTiO3",
            scaled_positions=[
                (0, 0, 0),
                (0.5, 0.5, 0.5),
                (0.5, 0.5, 0),
                (0.5, 0, 0.5),
                (0, 0.5, 0.5),
            ],
            cell=[a, a, a],
            pbc=True,
        )
    if crystal == "Au" and zone_axis == "[001]":
        return bulk("Au", "fcc", a=4.078, cubic=True)
    if zone_axis == "[110]" and crystal in ("Si", "GaAs"):
        cubic = (
            bulk("Si", "diamond", a=5.431, cubic=True)
            if crystal == "Si"
            else bulk("GaAs", "zincblende", a=5.653, cubic=True)
        )
        return abtem.orthogonalize_cell(surface(cubic, (1, 1, 0), 1, periodic=True))
    if crystal == DEFECT_CRYSTAL:
        return mos2_with_defects()
    if crystal.startswith("MoS2"):
        return abtem.orthogonalize_cell(mx2("MoS2", "2H", a=3.18, thickness=3.19, vacuum=2.0))
    if crystal == "graphene":
        return abtem.orthogonalize_cell(graphene("C2", a=2.46, vacuum=2.0))
    raise ValueError(f"no structure for {crystal} {zone_axis}")


#: A monolayer MoS₂ supercell with point defects (``mos2_with_defects``): validation of
#: what a restoration does to defects, which the perfect crystals above do not have.
DEFECT_CRYSTAL = "MoS2 (1 layer), 6x4 supercell with defects"
DEFECT_SEED = 20261201


def mos2_with_defects(reps: tuple[int, int] = (6, 4), n_vacancies: int = 4, n_tungsten: int = 4):
    """Orthogonal 1-layer MoS₂ supercell with S mono-vacancies and W substitutions.

    ``n_vacancies`` S₂ columns lose one S atom (a column of half the S
    signal, the commonest point defect of MoS₂) and ``n_tungsten`` Mo atoms
    become W (Z 74 against 42: a much brighter column in HAADF), at sites drawn
    with a fixed seed, at least two columns apart. Periodic like every cell
    here: the defects repeat with the supercell (19.1 × 22.0 Å).
    """
    import abtem
    from ase.build import mx2

    cell = abtem.orthogonalize_cell(mx2("MoS2", "2H", a=3.18, thickness=3.19, vacuum=2.0))
    sup = cell * (reps[0], reps[1], 1)
    rng = np.random.default_rng(DEFECT_SEED)
    symbols = np.array(sup.get_chemical_symbols())
    xy = sup.positions[:, :2]

    def spread(candidates: np.ndarray, n: int, taken: list) -> list[int]:
        chosen: list[int] = []
        for i in rng.permutation(candidates):
            if all(np.hypot(*(xy[i] - xy[j])) > 5.0 for j in taken + chosen):
                chosen.append(int(i))
            if len(chosen) == n:
                break
        return chosen

    s_top = np.flatnonzero((symbols == "S") & (sup.positions[:, 2] > sup.positions[:, 2].mean()))
    removed = spread(s_top, n_vacancies, [])
    tungsten = spread(np.flatnonzero(symbols == "Mo"), n_tungsten, removed)
    symbols[tungsten] = "W"
    sup.set_chemical_symbols(list(symbols))
    del sup[removed]
    return sup


def projected_columns(cell) -> tuple[np.ndarray, list[str]]:
    """Distinct projected atom columns of an orthogonal cell.

    Returns
    -------
    xy : numpy.ndarray
        (K, 2) column positions in Å inside the cell, ``(x, y)``.
    labels : list of str
        Composition of each column along one repeat, e.g. ``"Ti+O"``, ``"S2"``.
    """
    lx, ly = cell.cell.lengths()[:2]
    xy = np.mod(cell.positions[:, :2], [lx, ly])
    xy[np.isclose(xy[:, 0], lx, atol=1e-3), 0] = 0.0
    xy[np.isclose(xy[:, 1], ly, atol=1e-3), 1] = 0.0
    symbols = cell.get_chemical_symbols()
    cols: list[list] = []
    for p, s in zip(xy, symbols):
        for c in cols:
            d = p - c[0]
            d -= np.round(d / [lx, ly]) * [lx, ly]
            if np.hypot(*d) < 0.05:
                c[1].append(s)
                break
        else:
            cols.append([p, [s]])
    labels = []
    for _, syms in cols:
        counts = {s: syms.count(s) for s in sorted(set(syms))}
        labels.append("+".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items()))
    return np.array([c[0] for c in cols]), labels


def _configure_abtem() -> None:
    import abtem
    import dask

    dask.config.set(scheduler="synchronous")
    abtem.config.set(
        {
            "diagnostics.progress_bar": False,
            "fftw.threads": 1,
            "fftw.planning_effort": "FFTW_ESTIMATE",
            "precision": "float32",
        }
    )


def _fast_len(n: float) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(int(np.ceil(n))))


def simulate_cell(sim: Simulation, n_phonons: int, seed: int) -> tuple[np.ndarray, dict]:
    """Periodic clean image of one unit cell, indexed ``[ix, iy]``, plus simulation facts."""
    import abtem

    cell = structure(sim.crystal, sim.zone_axis)
    lx, ly, lz = cell.cell.lengths()
    thick = cell * (1, 1, sim.n_cells_z)
    info: dict = {"cell_A": [float(lx), float(ly)], "thickness_A": float(lz * sim.n_cells_z)}
    if sim.technique == "HAADF":
        # Lateral extent ≥ 15 Å so that the probe (and its channelling tails) stays clear of
        # its periodic images; scan one cell only.
        rep = (max(1, int(np.ceil(15.0 / lx))), max(1, int(np.ceil(15.0 / ly))))
        atoms = thick * (*rep, 1)
        if n_phonons > 0:
            atoms = abtem.FrozenPhonons(atoms, num_configs=n_phonons, sigmas=0.08, seed=seed)
        ext = (lx * rep[0], ly * rep[1])
        gpts = (_fast_len(ext[0] / 0.04), _fast_len(ext[1] / 0.04))
        pot = abtem.Potential(
            atoms, gpts=gpts, slice_thickness=2.0, projection="infinite", parametrization="lobato"
        )
        probe = abtem.Probe(
            energy=sim.energy_eV, semiangle_cutoff=sim.optics["semiangle_cutoff_mrad"], defocus=0.0
        )
        probe.grid.match(pot)
        nyq = probe.ctf.nyquist_sampling
        n = (int(np.ceil(lx / (0.9 * nyq))), int(np.ceil(ly / (0.9 * nyq))))
        # Scan the central cell (away from the edges of the tiled potential: no matter for a
        # periodic potential, but the frozen-phonon displacements differ from cell to cell).
        x0, y0 = lx * (rep[0] // 2), ly * (rep[1] // 2)
        scan = abtem.GridScan(start=(x0, y0), end=(x0 + lx, y0 + ly), gpts=n, endpoint=False)
        inner, outer = sim.optics["detector_mrad"]
        det = abtem.AnnularDetector(inner=inner, outer=outer)
        meas = probe.scan(pot, scan=scan, detectors=det).compute()
        arr = np.asarray(meas.array, dtype=np.float64)
        while arr.ndim > 2:
            arr = arr.mean(0)
        # HAADF intensity is band-limited to 2α/λ.
        info["band_limit_per_A"] = 2 * sim.optics["semiangle_cutoff_mrad"] * 1e-3 / probe.wavelength
        info.update(
            {"potential_gpts": list(gpts), "scan_gpts": list(n), "wavelength_A": probe.wavelength}
        )
    else:
        atoms = thick
        if n_phonons > 0:
            atoms = abtem.FrozenPhonons(atoms, num_configs=n_phonons, sigmas=0.08, seed=seed)
        gpts = (_fast_len(lx / 0.03), _fast_len(ly / 0.03))
        pot = abtem.Potential(
            atoms, gpts=gpts, slice_thickness=2.0, projection="infinite", parametrization="lobato"
        )
        wave = abtem.PlaneWave(energy=sim.energy_eV)
        exit_wave = wave.multislice(pot)
        o = sim.optics
        cs = o["Cs_um"] * 1e4  # µm → Å
        defocus = (
            abtem.transfer.scherzer_defocus(cs, sim.energy_eV)
            if o["defocus"] == "scherzer"
            else float(o["defocus"])
        )
        ctf = abtem.CTF(
            energy=sim.energy_eV,
            Cs=cs,
            defocus=defocus,
            semiangle_cutoff=o["aperture_mrad"],
            focal_spread=o["focal_spread_A"],
            angular_spread=o["angular_spread_mrad"],
        )
        img = exit_wave.apply_ctf(ctf).intensity().compute()
        arr = np.asarray(img.array, dtype=np.float64)
        while arr.ndim > 2:
            arr = arr.mean(0)
        wavelength = float(wave.wavelength)
        info["band_limit_per_A"] = 2 * o["aperture_mrad"] * 1e-3 / wavelength
        info.update(
            {"potential_gpts": list(gpts), "defocus_A": float(defocus), "wavelength_A": wavelength}
        )
    return arr, info


def render(
    cell_image: np.ndarray,
    cell_A: tuple[float, float],
    size: int,
    pixel_size: float,
    rotation_rad: float,
    origin_A: tuple[float, float],
    band_limit: float,
    *,
    source_sigma_A: float = 0.0,
    pixel_integrate: bool = False,
) -> np.ndarray:
    """Evaluate the Fourier series of a periodic cell image on a rotated pixel grid.

    Pixel ``(row, col)`` sits at crystal coordinates
    ``origin + R(θ) · (col · p, row · p)`` (x along columns, y along rows).
    """
    nx, ny = cell_image.shape
    coef = np.fft.fft2(cell_image) / cell_image.size
    kx = np.fft.fftfreq(nx, d=cell_A[0] / nx)
    ky = np.fft.fftfreq(ny, d=cell_A[1] / ny)
    KX, KY = np.meshgrid(kx, ky, indexing="ij")
    keep = np.hypot(KX, KY) <= band_limit
    # Drop an unpaired Nyquist row/column (its sine part is not represented).
    if nx % 2 == 0:
        keep[nx // 2, :] = False
    if ny % 2 == 0:
        keep[:, ny // 2] = False
    c, kxs, kys = coef[keep], KX[keep], KY[keep]
    if source_sigma_A > 0:
        c = c * np.exp(-2 * np.pi**2 * source_sigma_A**2 * (kxs**2 + kys**2))
    cos_t, sin_t = np.cos(rotation_rad), np.sin(rotation_rad)
    if pixel_integrate:
        # Frequencies in the pixel frame: k_img = R(θ)ᵀ k.
        ku = cos_t * kxs + sin_t * kys
        kv = -sin_t * kxs + cos_t * kys
        c = c * np.sinc(ku * pixel_size) * np.sinc(kv * pixel_size)
    rows, cols = np.mgrid[:size, :size].astype(np.float64) * pixel_size
    X = origin_A[0] + cos_t * cols - sin_t * rows
    Y = origin_A[1] + sin_t * cols + cos_t * rows
    out = np.zeros((size, size))
    for start in range(0, c.size, 64):
        sl = slice(start, start + 64)
        phase = 2j * np.pi * (kxs[sl, None, None] * X + kys[sl, None, None] * Y)
        out += np.real(np.tensordot(c[sl], np.exp(phase), axes=1))
    return out


def column_pixels(
    xy_cell: np.ndarray,
    cell_A: tuple[float, float],
    size: int,
    pixel_size: float,
    rotation_rad: float,
    origin_A: tuple[float, float],
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(row, col)`` of every column inside the image, and its type index."""
    lx, ly = cell_A
    fov = size * pixel_size
    n = int(np.ceil(fov * np.sqrt(2) / min(lx, ly))) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    pts, kinds = [], []
    cos_t, sin_t = np.cos(rotation_rad), np.sin(rotation_rad)
    for t, (cx, cy) in enumerate(xy_cell):
        X = cx + i.ravel() * lx - origin_A[0]
        Y = cy + j.ravel() * ly - origin_A[1]
        col = (cos_t * X + sin_t * Y) / pixel_size
        row = (-sin_t * X + cos_t * Y) / pixel_size
        inside = (
            (row >= -margin)
            & (row <= size - 1 + margin)
            & (col >= -margin)
            & (col <= size - 1 + margin)
        )
        pts.append(np.stack([row[inside], col[inside]], axis=1))
        kinds.append(np.full(int(inside.sum()), t, dtype=np.int16))
    return np.concatenate(pts), np.concatenate(kinds)


def add_noise(
    clean: np.ndarray,
    dose: float,
    rng: np.random.Generator,
    *,
    read_noise: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson–Gaussian noise: ``gain · Poisson(dose · clean) + N(offset, read_noise²)``.

    Parameters
    ----------
    clean : numpy.ndarray
        Clean image with a mean of 1 (as stored in the set).
    dose : float
        Mean electrons per pixel.
    rng : numpy.random.Generator
        Source of randomness (seed it for reproducible benchmarks).
    read_noise : float
        Gaussian read-noise standard deviation, in counts.
    gain, offset : float
        Counts per electron and detector offset, in counts.

    Returns
    -------
    noisy, expectation : numpy.ndarray
        The noisy image and its expectation (``gain · dose · clean + offset``), float32, in
        counts.
    """
    lam = np.clip(dose * np.asarray(clean, dtype=np.float64), 0, None)
    noisy = gain * rng.poisson(lam) + offset
    if read_noise > 0:
        noisy = noisy + rng.normal(0.0, read_noise, lam.shape)
    return noisy.astype(np.float32), (gain * lam + offset).astype(np.float32)


def load(directory: str | Path = DEFAULT_DIR) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The cached set: image descriptions and arrays (``images``, ``columns_i``, ``kinds_i``)."""
    directory = Path(directory)
    meta = json.loads((directory / JSON_NAME).read_text(encoding="utf-8"))
    with np.load(directory / NPZ_NAME) as z:
        arrays = {k: z[k] for k in z.files}
    return meta["images"], arrays


def build(out_dir: Path, n_phonons: int, size: int, only: list[str] | None = None) -> None:
    """Simulate every :data:`SIMULATIONS` entry, render its images and write the cache."""
    _configure_abtem()
    rng = np.random.default_rng(SEED)
    images, records, arrays = [], [], {}
    t_all = time.perf_counter()
    cpu_all = time.process_time()
    for s_index, sim in enumerate(SIMULATIONS):
        if only and sim.key not in only:
            continue
        t0 = time.perf_counter()
        cell_img, info = simulate_cell(sim, n_phonons, seed=SEED + s_index)
        t_sim = time.perf_counter() - t0
        cell = structure(sim.crystal, sim.zone_axis)
        xy, labels = projected_columns(cell)
        cell_A = tuple(info["cell_A"])
        for p in sim.pixel_sizes_A:
            t1 = time.perf_counter()
            rot = float(rng.uniform(0, 2 * np.pi))
            origin = (float(rng.uniform(0, cell_A[0])), float(rng.uniform(0, cell_A[1])))
            src_sigma = (
                sim.optics["source_fwhm_A"] / (2 * np.sqrt(2 * np.log(2)))
                if sim.technique == "HAADF"
                else 0.0
            )
            img = render(
                cell_img,
                cell_A,
                size,
                p,
                rot,
                origin,
                info["band_limit_per_A"],
                source_sigma_A=src_sigma,
                pixel_integrate=sim.technique == "HRTEM",
            )
            img = np.clip(img, 0, None)
            img /= img.mean()
            pos, kinds = column_pixels(xy, cell_A, size, p, rot, origin)
            i = len(images)
            images.append(img.astype(np.float32))
            arrays[f"columns_{i}"] = pos.astype(np.float32)
            arrays[f"kinds_{i}"] = kinds
            nn = _nearest_neighbour_px(pos)
            records.append(
                {
                    "index": i,
                    "simulation": sim.key,
                    "crystal": sim.crystal,
                    "zone_axis": sim.zone_axis,
                    "technique": sim.technique,
                    "modality": sim.modality,
                    "energy_keV": sim.energy_eV / 1e3,
                    "thickness_A": info["thickness_A"],
                    "pixel_size_A": p,
                    "size_px": size,
                    "rotation_deg": float(np.rad2deg(rot)),
                    "origin_A": list(origin),
                    "optics": {
                        **sim.optics,
                        **{k: v for k, v in info.items() if k in ("defocus_A", "wavelength_A")},
                    },
                    "frozen_phonons": n_phonons,
                    "cell_A": list(cell_A),
                    "column_types": labels,
                    "n_columns": int(len(pos)),
                    "nearest_column_spacing_px": nn,
                    "normalisation": "mean 1: dose * image = expected counts per pixel",
                    "render_seconds": round(time.perf_counter() - t1, 3),
                }
            )
        grid = info.get("scan_gpts", info["potential_gpts"])
        print(
            f"{sim.key:16s} {sim.technique:5s} simulated in {t_sim:6.1f} s "
            f"(cell {cell_A[0]:.2f}×{cell_A[1]:.2f} Å, grid {grid})",
            flush=True,
        )
        records[-1]["simulation_seconds"] = round(t_sim, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays["images"] = np.stack(images)
    np.savez_compressed(out_dir / NPZ_NAME, **arrays)
    meta = {
        "description": "Clean multislice images (abTEM) for validation only; never for training.",
        "generator": "benchmarks/physics_set.py",
        "abtem_version": __import__("abtem").__version__,
        "seed": SEED,
        "images": records,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "total_cpu_seconds": round(time.process_time() - cpu_all, 1),
    }
    (out_dir / JSON_NAME).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    size_mb = (out_dir / NPZ_NAME).stat().st_size / 2**20
    print(
        f"wrote {len(images)} images to {out_dir / NPZ_NAME} ({size_mb:.1f} MiB) "
        f"in {meta['total_seconds']:.0f} s ({meta['total_cpu_seconds']:.0f} CPU-seconds)"
    )


def _nearest_neighbour_px(pos: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(pos) < 2:
        return float("nan")
    d, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(d[:, 1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--phonons", type=int, default=2, help="frozen-phonon configurations")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--only", nargs="*", help="simulation keys to run (default: all)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    args = ap.parse_args(argv)
    if (args.out / NPZ_NAME).exists() and not args.force:
        print(f"{args.out / NPZ_NAME} exists (use --force to rebuild)")
        return 0
    build(args.out, args.phonons, args.size, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())

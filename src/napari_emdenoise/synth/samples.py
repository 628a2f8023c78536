"""Clean specimens a microscopist recognises, for the sample data and the documentation.

The random generator of :mod:`napari_emdenoise.synth` draws training images
from the paper's broad distribution; most of them look unfamiliar. The two
specimens here are fixed, textbook cases rendered with the same building blocks
(eq-17 atomic profiles summed as in eq 16):

* :func:`perovskite_grain_boundary` — an atomic-resolution HAADF image of a
  perovskite (SrTiO₃-like, a = 3.905 Å) seen along [001], with a Σ5 symmetric
  tilt grain boundary (36.87°), a few A-site vacancies and a thickness gradient,
  at 0.12 Å per pixel (atomic columns 5–10 pixels wide, as recorded).
* :func:`supported_particles` — a low-magnification HAADF image of heavy-metal
  nanoparticles (1–8 nm radius, a few touching) on an amorphous carbon support,
  at 0.4 nm per pixel.
* :func:`diffraction_scan` — a small 4D-STEM scan (24 × 24 probe positions,
  64² detector pixels, ≈ 1000 counts per pattern) of convergent-beam
  diffraction patterns, from :func:`napari_emdenoise.synth.diffraction.simulate_4dstem`.

Both return a float32 image in [0, 1] with maximum 1 (the clean-image
convention of the noise model) and a JSON-serialisable record. Pure numpy/scipy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from ._profiles import sample_profiles
from ._random import as_generator, check_shape
from ._render import render_sites

__all__ = [
    "PEROVSKITE_LATTICE_A",
    "diffraction_scan",
    "perovskite_grain_boundary",
    "supported_particles",
]

#: Cubic lattice constant of the perovskite, Å (SrTiO₃).
PEROVSKITE_LATTICE_A = 3.905
#: Columns of the [001] projection: (fractional x, fractional y, atomic numbers, label).
_PEROVSKITE_COLUMNS = (
    (0.0, 0.0, (38,), "Sr"),
    (0.5, 0.5, (22, 8), "TiO"),
    (0.5, 0.0, (8,), "O"),
    (0.0, 0.5, (8,), "O"),
)
#: Exponent of the HAADF Z-contrast, intensity ∝ Z^n per atom.
HAADF_EXPONENT = 1.7
#: Σ5 (310) symmetric tilt boundary: misorientation 2·atan(1/3).
SIGMA5_ANGLE_DEG = float(np.degrees(2.0 * np.arctan(1.0 / 3.0)))


def _grain_columns(
    angle: float, origin: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: float
) -> tuple[np.ndarray, list[tuple[int, ...]], list[str]]:
    """Column positions (x, y in Å) of one rotated grain covering the box ``[lo, hi]``."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    reach = float(np.hypot(*(hi - lo))) / a + 2
    n = np.arange(-int(reach), int(reach) + 1)
    cells = np.stack(np.meshgrid(n, n, indexing="xy"), axis=-1).reshape(-1, 2).astype(float)
    positions, species, labels = [], [], []
    for fx, fy, zs, label in _PEROVSKITE_COLUMNS:
        xy = (cells + (fx, fy)) * a @ rot.T + origin
        inside = np.all((xy >= lo) & (xy <= hi), axis=1)
        positions.append(xy[inside])
        species += [zs] * int(inside.sum())
        labels += [label] * int(inside.sum())
    return np.concatenate(positions), species, labels


def perovskite_grain_boundary(
    shape: tuple[int, int] = (512, 512),
    pixel_size: float = 0.12,
    rng: np.random.Generator | int | None = 0,
    *,
    misorientation: float = SIGMA5_ANGLE_DEG,
    n_vacancies: int = 6,
    thickness_cells: float = 30.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """HAADF image of a perovskite [001] bicrystal with a symmetric tilt grain boundary.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` in pixels.
    pixel_size : float
        Å per pixel (0.05–0.2 Å is typical of atomic-resolution STEM).
    rng : numpy.random.Generator or int or None
        Random generator or seed (vacancies, profiles, surface layer).
    misorientation : float
        Tilt angle between the grains in degrees (default Σ5, 36.87°).
    n_vacancies : int
        A-site (Sr) columns with half their atoms missing, away from the boundary.
    thickness_cells : float
        Specimen thickness in unit cells at the top of the image; it grows by
        30 % towards the bottom (a wedge).

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1], maximum 1.
    info : dict
        Pixel size, lattice, misorientation, boundary position, vacancy positions.
    """
    ny, nx = check_shape(shape)
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of Å, got {pixel_size!r}")
    rng = as_generator(rng)
    a = PEROVSKITE_LATTICE_A
    zs_all = sorted({z for _, _, zs, _ in _PEROVSKITE_COLUMNS for z in zs})
    # eq-17 profile shapes, narrowed to the ≈ 0.9 Å columns of an aberration-corrected
    # probe; each atom then contributes ∝ Z^1.7 (HAADF Z-contrast), so O columns are faint
    drawn = sample_profiles(zs_all, 1.0, rng)
    profiles = {p.z: dataclasses.replace(p, r_m=0.55 * p.r_m) for p in drawn}
    z_weight = {z: z**HAADF_EXPONENT / profiles[z].integral for z in zs_all}
    margin = 4.0  # Å around the field of view
    lo = np.array([-margin, -margin])
    hi = np.array([(nx - 1) * pixel_size + margin, (ny - 1) * pixel_size + margin])
    boundary_x = 0.5 * (nx - 1) * pixel_size + rng.uniform(-2.0, 2.0)
    half = np.radians(misorientation) / 2.0
    origin = np.array([boundary_x, 0.5 * (ny - 1) * pixel_size])

    left_xy, left_z, left_lab = _grain_columns(+half, origin, lo, hi, a)
    right_xy, right_z, right_lab = _grain_columns(-half, origin, lo, hi, a)
    keep_left = left_xy[:, 0] < boundary_x
    keep_right = right_xy[:, 0] >= boundary_x
    left_xy, right_xy = left_xy[keep_left], right_xy[keep_right]
    left_z = [z for z, k in zip(left_z, keep_left) if k]
    right_z = [z for z, k in zip(right_z, keep_right) if k]
    left_lab = [s for s, k in zip(left_lab, keep_left) if k]
    right_lab = [s for s, k in zip(right_lab, keep_right) if k]
    # columns of the right grain closer than 1.4 Å to a left column would overlap: drop them
    if len(left_xy) and len(right_xy):
        near = np.abs(right_xy[:, 0] - boundary_x) < 3.0
        d = np.min(
            np.hypot(*(right_xy[near, None, :] - left_xy[None, :, :]).transpose(2, 0, 1)),
            axis=1,
        )
        drop = np.zeros(len(right_xy), bool)
        drop[np.flatnonzero(near)[d < 1.4]] = True
        right_xy = right_xy[~drop]
        right_z = [z for z, k in zip(right_z, ~drop) if k]
        right_lab = [s for s, k in zip(right_lab, ~drop) if k]
    xy = np.concatenate([left_xy, right_xy])
    species = left_z + right_z
    labels = left_lab + right_lab

    # occupancy: a wedge in thickness, half-empty A sites away from the boundary
    fov = np.array([(nx - 1) * pixel_size, (ny - 1) * pixel_size])
    thickness = thickness_cells * (1.0 + 0.3 * np.clip(xy[:, 1] / fov[1], 0.0, 1.0))
    occupancy = np.ones(len(xy))
    candidates = np.flatnonzero(
        (np.array(labels) == "Sr")
        & (np.abs(xy[:, 0] - boundary_x) > 3 * a)
        & np.all((xy > 2 * a) & (xy < fov - 2 * a), axis=1)
    )
    vacancies = rng.choice(candidates, size=min(n_vacancies, len(candidates)), replace=False)
    occupancy[vacancies] = 0.5

    x, y, z, w = [], [], [], []
    for (cx, cy), zs, t, occ in zip(xy, species, thickness, occupancy):
        for zz in zs:
            x.append(cx)
            y.append(cy)
            z.append(zz)
            w.append(t * occ * z_weight[zz])
    image = render_sites(
        np.array(x), np.array(y), np.array(z), np.array(w), profiles, (ny, nx), pixel_size
    )
    # amorphous surface layer: a weak, smooth background
    surface = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 0.6 / pixel_size)
    surface = (surface - surface.min()) / max(float(np.ptp(surface)), 1e-12)
    image = image + (0.04 + 0.04 * surface) * float(image.max())
    image = (image / image.max()).astype(np.float32)
    info = {
        "specimen": "perovskite (SrTiO3-like) [001] bicrystal, HAADF",
        "pixel_size_A": float(pixel_size),
        "lattice_A": a,
        "misorientation_deg": float(misorientation),
        "boundary_x_px": float(boundary_x / pixel_size),
        "thickness_cells": [float(thickness_cells), float(1.3 * thickness_cells)],
        "half_occupied_A_sites_px": [
            [float(xy[i, 1] / pixel_size), float(xy[i, 0] / pixel_size)] for i in vacancies
        ],
    }
    return image, info


def supported_particles(
    shape: tuple[int, int] = (512, 512),
    pixel_size: float = 0.4,
    rng: np.random.Generator | int | None = 0,
    *,
    n_particles: int = 70,
) -> tuple[np.ndarray, dict[str, Any]]:
    """HAADF image of heavy-metal nanoparticles on an amorphous carbon film.

    The intensity is the projected thickness weighted by ``Z^1.4`` (Pt on C):
    spheres of log-normal radius (median 2.5 nm), a few in contact, over a film
    whose thickness fluctuates on the nanometre scale.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` in pixels.
    pixel_size : float
        nm per pixel.
    rng : numpy.random.Generator or int or None
        Random generator or seed.
    n_particles : int
        Number of particles.

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1], maximum 1.
    info : dict
        Pixel size and particle centres/radii (pixels).
    """
    ny, nx = check_shape(shape)
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of nm, got {pixel_size!r}")
    rng = as_generator(rng)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    radii = np.clip(rng.lognormal(np.log(2.5), 0.45, n_particles), 1.0, 8.0) / pixel_size
    centres = rng.uniform([0, 0], [ny, nx], size=(n_particles, 2))
    for i in range(1, n_particles, 6):  # a few particles touch their neighbour
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        centres[i] = centres[i - 1] + direction * 0.95 * (radii[i] + radii[i - 1])
    thickness = np.zeros((ny, nx))
    for (cy, cx), r in zip(centres, radii):
        r0, r1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, ny)
        c0, c1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, nx)
        if r0 >= r1 or c0 >= c1:
            continue
        d2 = (yy[r0:r1, c0:c1] - cy) ** 2 + (xx[r0:r1, c0:c1] - cx) ** 2
        thickness[r0:r1, c0:c1] += 2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None))
    film = 1.0 + 0.35 * ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 1.0 / pixel_size)
    film += 0.15 * ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 15.0 / pixel_size)
    z_ratio = (78.0 / 6.0) ** 1.4  # Pt vs C per unit thickness (HAADF, inner angle ~ 60 mrad)
    carbon = 30.0 / pixel_size  # 30 nm film, in pixels of thickness
    image = thickness * z_ratio + carbon * np.clip(film, 0.2, None)
    image = ndimage.gaussian_filter(image, 0.5)  # probe size
    image = (image / image.max()).astype(np.float32)
    info = {
        "specimen": "Pt-like nanoparticles on amorphous carbon, HAADF",
        "pixel_size_nm": float(pixel_size),
        "particles_px": [[float(cy), float(cx), float(r)] for (cy, cx), r in zip(centres, radii)],
    }
    return image, info


# -- 4D-STEM ------------------------------------------------------------------------------------
#: The sample scan: probe positions, detector pixels, counts per pattern, seed.
DIFFRACTION_SCAN = {"scan_shape": (24, 24), "pattern_shape": (64, 64), "counts": 1000.0, "seed": 11}


def diffraction_scan(
    rng: np.random.Generator | int | None = DIFFRACTION_SCAN["seed"],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A small low-dose 4D-STEM scan: noisy and clean convergent-beam patterns.

    24 × 24 probe positions of 64 × 64-pixel patterns with ≈ 1000 counts each
    (Poisson noise of a counting detector), the specimen's orientation,
    thickness and beam position varying across the scan; see
    :func:`napari_emdenoise.synth.diffraction.simulate_4dstem`.

    Parameters
    ----------
    rng : numpy.random.Generator or int or None
        Random generator or seed (default: the sample's fixed seed).

    Returns
    -------
    noisy, clean : numpy.ndarray
        ``(24, 24, 64, 64)`` float32 counts (recorded; expected).
    calibration : dict
        ``scan_step`` (Å), ``detector_step`` (mrad), their units and the
        simulation settings.
    """
    from .diffraction import simulate_4dstem

    return simulate_4dstem(
        DIFFRACTION_SCAN["scan_shape"],
        DIFFRACTION_SCAN["pattern_shape"],
        DIFFRACTION_SCAN["counts"],
        rng=as_generator(rng),
    )

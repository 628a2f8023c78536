"""Amorphous specimens and individual points (Lobato et al. 2023, "Specimen generation")."""

from __future__ import annotations

import numpy as np

from ._random import matern_hard_core
from ._sites import Sites, slab_sites

__all__ = ["amorphous_slab", "approximate_atomic_mass", "individual_points"]

_AVOGADRO_PER_A3 = 0.60221  # N_A · 1e-24: converts g/cm³ / (g/mol) to atoms/Å³
#: Largest fraction of the Matérn-II density limit 1/v we ask for.
_MAX_PACKING = 0.7


def approximate_atomic_mass(z: int) -> float:
    """Approximate standard atomic mass in g/mol, ``2Z + 0.0058 Z²`` (1.008 for H).

    Within 3 % of the tabulated masses for C, Fe, Ag, Au and U; used only to
    turn a mass density into a number density.
    """
    return 1.008 if z == 1 else 2.0 * z + 0.0058 * z * z


def _candidate_intensity(density: float, exclusion: float) -> float:
    """Poisson intensity whose Matérn-II thinning retains ``density``."""
    filled = min(density * exclusion, _MAX_PACKING)
    return -np.log1p(-filled) / exclusion


def amorphous_slab(
    rng: np.random.Generator,
    z: int,
    density_g_cm3: float,
    min_distance: float,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    thickness: float,
    budget: int,
) -> tuple[Sites, dict]:
    """Random atoms of one species with a 3-D minimum distance.

    The number density ρ_m N_A / A(Z) is capped at 0.7 of what a Matérn-II
    hard-core process with distance ``min_distance`` can reach (the paper
    fills the box until the density is met; very dense light elements are
    not reachable with a hard core). A slab of thickness
    t_eff = min(t, t_budget) is filled and each atom stands for t / t_eff
    atoms, its depth scaled likewise (weights split by
    :func:`~._sites.split_slab_weight`).

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    z : int
        Atomic number.
    density_g_cm3 : float
        Mass density in g/cm³ (Lobato et al. 2023: [2, 7]).
    min_distance : float
        Minimum interatomic distance in Å (Lobato et al. 2023: [0.95, 1.6]).
    box_lo, box_hi : numpy.ndarray
        ``(x, y)`` corners of the extended field of view, in Å.
    thickness : float
        Layer thickness t in Å.
    budget : int
        Cap on the number of candidate atoms.

    Returns
    -------
    sites : Sites
        Projected atoms.
    info : dict
        Number density and effective slab thickness.
    """
    box_lo, box_hi = np.asarray(box_lo, float), np.asarray(box_hi, float)
    area = float(np.prod(box_hi - box_lo))
    exclusion = 4.0 / 3.0 * np.pi * min_distance**3
    number_density = density_g_cm3 * _AVOGADRO_PER_A3 / approximate_atomic_mass(z)
    number_density = min(number_density, _MAX_PACKING / exclusion)
    intensity = _candidate_intensity(number_density, exclusion)
    t_eff = float(min(thickness, budget / (intensity * area)))
    pts = matern_hard_core(
        rng,
        np.array([box_lo[0], box_lo[1], 0.0]),
        np.array([box_hi[0], box_hi[1], t_eff]),
        intensity,
        min_distance,
        max_candidates=budget,
    )
    sites = slab_sites(pts, np.full(len(pts), int(z), dtype=np.int64), thickness, t_eff)
    info = {
        "number_density_per_A3": round(float(number_density), 6),
        "slab_thickness_A": round(t_eff, 4),
    }
    return sites, info


def individual_points(
    rng: np.random.Generator,
    z: int,
    count: int,
    min_distance: float,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    thickness: float,
) -> Sites:
    """About ``count`` single atoms with a projected minimum distance.

    Positions follow a 2-D Matérn-II hard-core process whose expected number
    of points in the box is ``count`` (capped by the packing limit); depths
    are uniform in [0, t].

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    z : int
        Atomic number.
    count : int
        Expected number of points in the box.
    min_distance : float
        Minimum distance in Å (Lobato et al. 2023: [1, 20] pixels).
    box_lo, box_hi : numpy.ndarray
        ``(x, y)`` corners of the extended field of view, in Å.
    thickness : float
        Depth range in Å.

    Returns
    -------
    Sites
    """
    box_lo, box_hi = np.asarray(box_lo, float), np.asarray(box_hi, float)
    area = float(np.prod(box_hi - box_lo))
    exclusion = np.pi * min_distance**2
    intensity = _candidate_intensity(count / area, exclusion)
    pts = matern_hard_core(rng, box_lo, box_hi, intensity, min_distance)
    depth = rng.uniform(0.0, thickness, len(pts))
    return Sites(
        pts[:, 0],
        pts[:, 1],
        depth,
        depth.copy(),
        np.full(len(pts), int(z), dtype=np.int64),
        np.ones(len(pts)),
        np.zeros(len(pts)),
    )

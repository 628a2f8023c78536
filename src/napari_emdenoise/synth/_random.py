"""Argument checks and small random-sampling helpers shared by the generators.

Every helper takes an explicit :class:`numpy.random.Generator`; nothing here
touches numpy's global random state.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "MIN_IMAGE_SIZE",
    "as_generator",
    "check_shape",
    "log_uniform",
    "matern_hard_core",
    "random_rotation_matrix",
    "unit_vector_2d",
]

#: Smallest accepted image side, in pixels.
MIN_IMAGE_SIZE = 8


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Return a random generator from ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        A generator (used as is, so the caller's stream advances), a
        non-negative integer seed, or ``None`` for fresh OS entropy.

    Returns
    -------
    numpy.random.Generator

    Raises
    ------
    ValueError
        If ``rng`` is of another type or a negative integer.
    """
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if int(rng) < 0:
            raise ValueError(f"rng seed must be a non-negative integer, got {rng}")
        return np.random.default_rng(int(rng))
    raise ValueError(
        "rng must be a numpy.random.Generator, a non-negative int seed or None, "
        f"got {type(rng).__name__}"
    )


def check_shape(shape: object, *, min_size: int = MIN_IMAGE_SIZE) -> tuple[int, int]:
    """Validate a 2-D image shape.

    Parameters
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels.
    min_size : int
        Smallest accepted side, in pixels.

    Returns
    -------
    tuple of int
        The shape as a tuple of Python ints.

    Raises
    ------
    ValueError
        If ``shape`` is not a pair of integers, each at least ``min_size``.
    """
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"shape must be a pair (n_rows, n_cols), got {shape!r}")
    out = []
    for side in shape:
        if not isinstance(side, numbers.Integral) or isinstance(side, bool):
            raise ValueError(f"shape entries must be integers, got {shape!r}")
        if int(side) < min_size:
            raise ValueError(
                f"shape {tuple(shape)!r} is too small: every side needs at least {min_size} pixels"
            )
        out.append(int(side))
    return out[0], out[1]


def log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    """Draw from a log-uniform distribution on ``[low, high]`` (both > 0)."""
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def unit_vector_2d(angle: float) -> np.ndarray:
    """Return the unit vector ``(x, y)`` at ``angle`` radians from the x axis."""
    return np.array([np.cos(angle), np.sin(angle)])


def random_rotation_matrix(rng: np.random.Generator) -> np.ndarray:
    """Draw a rotation uniformly distributed over SO(3).

    A normalised 4-D standard normal vector is a uniformly distributed unit
    quaternion; it is converted to a 3x3 rotation matrix.
    """
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matern_hard_core(
    rng: np.random.Generator,
    low: np.ndarray,
    high: np.ndarray,
    intensity: float,
    min_distance: float,
    *,
    max_candidates: int | None = None,
) -> np.ndarray:
    """Sample a Matérn type-II hard-core point process in a box.

    Candidates are drawn as a homogeneous Poisson process; a candidate is
    deleted when an earlier candidate (random arrival order) lies closer than
    ``min_distance``. No two retained points are closer than
    ``min_distance``. The retained density is ``(1 - exp(-λ v)) / v`` with
    ``v`` the volume of the exclusion ball, so at most ``1 / v``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    low, high : numpy.ndarray
        Box corners, one entry per dimension (Å or pixels).
    intensity : float
        Candidate intensity λ, points per unit area or volume.
    min_distance : float
        Hard-core distance, same unit as the box.
    max_candidates : int, optional
        Cap on the number of candidates (keeps run time bounded).

    Returns
    -------
    numpy.ndarray
        Retained points, shape ``(n, dim)``.
    """
    low = np.asarray(low, dtype=float)
    high = np.asarray(high, dtype=float)
    volume = float(np.prod(high - low))
    n = int(rng.poisson(max(intensity, 0.0) * volume))
    if max_candidates is not None:
        n = min(n, int(max_candidates))
    points = rng.uniform(low, high, size=(n, low.size))
    if n < 2 or min_distance <= 0:
        return points
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(min_distance, output_type="ndarray")
    keep = np.ones(n, dtype=bool)
    if pairs.size:
        keep[pairs.max(axis=1)] = False
    return points[keep]

"""The lattice probe: a lag-free lattice of Gaussian columns with Poisson noise.

No scan distortion, no drift, no blur: a restoration must leave every column
where it is. A network that learned an average fast-scan shift moves all of
them by the same amount, which this probe shows at once (issue 8 of this
project; the construction is the one printed there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LatticeProbe", "lattice_probe"]


@dataclass
class LatticeProbe:
    """One realisation of the lattice probe.

    Attributes
    ----------
    noisy : numpy.ndarray
        Float32 Poisson counts, shape (size, size).
    clean : numpy.ndarray
        Float64 expectation of ``noisy`` (counts per pixel).
    positions : numpy.ndarray
        (N, 2) true column positions ``(row, col)`` in pixels.
    dose : float
        Mean counts per pixel of ``clean``.
    spacing, width : float
        Lattice spacing and Gaussian column standard deviation, in pixels.
    """

    noisy: np.ndarray
    clean: np.ndarray
    positions: np.ndarray
    dose: float
    spacing: float
    width: float


def _profile(n: int, centres: np.ndarray, width: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64)[:, None]
    return np.exp(-((x - centres[None, :]) ** 2) / (2 * width**2))


def lattice_probe(
    rng: np.random.Generator,
    *,
    size: int = 256,
    spacing: float = 20.0,
    width: float = 2.5,
    dose: float = 50.0,
    background: float = 0.1,
    first: float | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
) -> LatticeProbe:
    """Gaussian columns on a square lattice, scaled to ``dose``, with Poisson noise.

    ``clean = (background + lattice / max(lattice))``, scaled to a mean of
    ``dose`` counts per pixel; ``noisy ~ Poisson(clean)``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the Poisson noise (pass a seeded generator).
    size : int
        Image side in pixels.
    spacing : float
        Lattice spacing in pixels.
    width : float
        Standard deviation of each Gaussian column, in pixels.
    dose : float
        Mean counts per pixel.
    background : float
        Background level relative to the column peak height.
    first : float, optional
        Position of the first column on each axis, in pixels (default
        ``spacing / 2``).
    shift : tuple of float
        Sub-pixel ``(row, col)`` shift of the whole lattice, in pixels.

    Returns
    -------
    LatticeProbe
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. np.random.default_rng(0))")
    if size < 8 or spacing <= 0 or width <= 0 or dose <= 0:
        raise ValueError("size ≥ 8 and positive spacing, width and dose are required")
    start = spacing / 2 if first is None else float(first)
    sites = np.arange(start, size, spacing)
    rows_c = sites + float(shift[0])
    cols_c = sites + float(shift[1])
    lattice = _profile(size, rows_c, width).sum(1)[:, None] * _profile(size, cols_c, width).sum(1)
    clean = background + lattice / lattice.max()
    clean *= dose / clean.mean()
    noisy = rng.poisson(clean).astype(np.float32)
    rr, cc = np.meshgrid(rows_c, cols_c, indexing="ij")
    positions = np.stack([rr.ravel(), cc.ravel()], axis=1)
    return LatticeProbe(noisy, clean, positions, float(dose), float(spacing), float(width))

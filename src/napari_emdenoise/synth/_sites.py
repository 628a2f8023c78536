"""Container for the projected scatterers of a specimen.

A *site* is either a single atom at depth ``z`` (``z_lo == z_hi``) or a
slice of an atomic column spanning ``[z_lo, z_hi]`` along the beam. Its
``weight`` is the number of atoms it stands for when fully occupied;
specimen modifiers (wedge, shapes) scale it by the occupied fraction.

A site may also carry a ``smooth`` weight: intensity that is rendered with
an extra Gaussian blur. Thick random layers are represented by a thin slab
of atoms; to give the projection the mean *and* the fluctuations of the full
thickness (k = t / t_eff times the slab), each atom gets weight √k and the
remaining mean k − √k is rendered smoothly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sites", "occupied_fraction", "slab_sites", "split_slab_weight"]


@dataclass
class Sites:
    """Projected scatterers of a specimen.

    Attributes
    ----------
    x, y : numpy.ndarray
        Projected position along image columns and rows, in Å.
    z_lo, z_hi : numpy.ndarray
        Depth extent along the beam, in Å (equal for single atoms).
    z_number : numpy.ndarray
        Atomic number.
    weight : numpy.ndarray
        Number of atoms the site stands for (rendered sharply).
    smooth : numpy.ndarray
        Number of atoms rendered with the extra Gaussian blur.
    """

    x: np.ndarray
    y: np.ndarray
    z_lo: np.ndarray
    z_hi: np.ndarray
    z_number: np.ndarray
    weight: np.ndarray
    smooth: np.ndarray

    @classmethod
    def empty(cls) -> Sites:
        """A specimen without atoms."""
        f = np.zeros(0)
        return cls(f, f, f, f, np.zeros(0, dtype=np.int64), f, f)

    def __len__(self) -> int:
        return int(self.x.size)

    def subset(self, keep: np.ndarray) -> Sites:
        """Return the sites selected by the boolean or index array ``keep``."""
        return Sites(
            self.x[keep],
            self.y[keep],
            self.z_lo[keep],
            self.z_hi[keep],
            self.z_number[keep],
            self.weight[keep],
            self.smooth[keep],
        )

    def scaled(self, factor: np.ndarray | float) -> Sites:
        """Return a copy with both weights multiplied by ``factor``, dropping empty sites."""
        factor = np.broadcast_to(np.asarray(factor, dtype=float), self.weight.shape)
        weight, smooth = self.weight * factor, self.smooth * factor
        keep = (weight > 0) | (smooth > 0)
        out = self.subset(keep)
        out.weight, out.smooth = weight[keep], smooth[keep]
        return out

    @staticmethod
    def concatenate(parts: list[Sites]) -> Sites:
        """Join several specimens (e.g. the specimen and its support layer)."""
        if not parts:
            return Sites.empty()
        return Sites(*(np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS))


_FIELDS = ("x", "y", "z_lo", "z_hi", "z_number", "weight", "smooth")


def occupied_fraction(
    z_lo: np.ndarray, z_hi: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Fraction of each depth extent ``[z_lo, z_hi]`` inside ``[lo, hi]``.

    For single atoms (``z_lo == z_hi``) the result is 1 when the atom lies in
    ``[lo, hi]`` and 0 otherwise. Empty material intervals (``lo > hi``) give 0.

    Parameters
    ----------
    z_lo, z_hi : numpy.ndarray
        Depth extents of the sites, in Å.
    lo, hi : numpy.ndarray
        Depth interval filled with material at each site, in Å.

    Returns
    -------
    numpy.ndarray
        Values in [0, 1].
    """
    length = z_hi - z_lo
    overlap = np.clip(np.minimum(z_hi, hi) - np.maximum(z_lo, lo), 0.0, None)
    is_point = length <= 0
    point_inside = (z_lo >= lo) & (z_lo <= hi)
    return np.where(is_point, point_inside, overlap / np.where(is_point, 1.0, length))


def split_slab_weight(k: float) -> tuple[float, float]:
    """Split the weight k = t / t_eff of a slab atom into sharp and smooth parts.

    Stacking k independent slabs multiplies the mean projected intensity by
    k but its fluctuations only by √k. Rendering each slab atom with weight
    √k (sharp) plus k − √k (smooth, i.e. blurred to its local mean) gives the
    full-thickness mean and standard deviation.

    Parameters
    ----------
    k : float
        Ratio t / t_eff ≥ 1 of the true to the simulated thickness.

    Returns
    -------
    sharp, smooth : float
        ``(√k, k − √k)``.
    """
    root = float(np.sqrt(k))
    return root, float(k) - root


def slab_sites(
    positions: np.ndarray, z_number: np.ndarray, thickness: float, t_eff: float
) -> Sites:
    """Single-atom sites of a thin slab standing for a layer of full thickness.

    Each atom of the slab of thickness ``t_eff`` stands for k = t / t_eff
    atoms: its depth is stretched by k and its weight split into sharp and
    smooth parts by :func:`split_slab_weight`.

    Parameters
    ----------
    positions : numpy.ndarray
        ``(n, 3)`` atom coordinates ``(x, y, depth)`` in the slab, in Å.
    z_number : numpy.ndarray
        ``(n,)`` atomic numbers.
    thickness : float
        True layer thickness t, in Å.
    t_eff : float
        Simulated slab thickness, in Å (k = 1 if it is not positive).

    Returns
    -------
    Sites
        One site per atom, ``z_lo == z_hi``.
    """
    scale = thickness / t_eff if t_eff > 0 else 1.0
    depth = positions[:, 2] * scale
    sharp, smooth = split_slab_weight(scale)
    n = len(positions)
    return Sites(
        positions[:, 0],
        positions[:, 1],
        depth,
        depth.copy(),
        z_number,
        np.full(n, sharp),
        np.full(n, smooth),
    )

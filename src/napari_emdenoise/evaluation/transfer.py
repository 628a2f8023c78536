"""How much of a fine lattice a restoration keeps: its gain at one lattice period.

A denoiser that has learnt "fine periodic contrast is noise" erases exactly
the images an atomic-resolution overview is made of (a 2 Å column spacing at
0.3 Å/pixel repeats every 7 pixels). PSNR on a test set averages that failure
away; a gain per period shows it directly, like the transfer function of a
linear filter.

The test pattern is a noisy square lattice of cosine "columns",

    s(r) = dose · (1 + m · cos(k₁·r) cos(k₂·r)),     |k₁| = |k₂| = 2π / period,

with k₁ ⟂ k₂ rotated by ``angle``. The product form has no component that is
constant along a row or a column, so a network that removes scan-line
offsets (legitimately) is not charged for it. The gain is the amplitude of
that pattern in the restored image divided by its amplitude in the
noise-free one: 1 keeps the lattice, 0 erases it. Noise adds no bias to the
projection, only scatter of order ``1 / (m · sqrt(dose · pixels))``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["lattice_gain", "lattice_pattern"]


def lattice_pattern(size: int, period: float, angle: float = 0.0) -> np.ndarray:
    """The unit lattice ``cos(k₁·r) cos(k₂·r)`` on a ``size × size`` grid.

    Parameters
    ----------
    size : int
        Image side, pixels (≥ 8).
    period : float
        Period along k₁ and k₂, pixels (≥ 2, the Nyquist limit).
    angle : float
        Rotation of k₁ from the x axis, degrees.

    Returns
    -------
    numpy.ndarray
        (size, size) float64 array with values in [−1, 1].
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not (np.isfinite(period) and period >= 2.0):
        raise ValueError(f"period must be at least 2 pixels (Nyquist), got {period}")
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    t = np.deg2rad(angle)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    k = 2.0 * np.pi / period
    return np.cos(k * u) * np.cos(k * v)


def lattice_gain(
    restore: Callable[[np.ndarray], np.ndarray],
    period: float,
    dose: float,
    rng: np.random.Generator,
    *,
    size: int = 128,
    modulation: float = 0.5,
    angle: float = 0.0,
) -> float:
    """Fraction of a noisy lattice's amplitude that ``restore`` keeps.

    Parameters
    ----------
    restore : callable
        Maps a noisy float32 image in counts to its restoration (same shape).
    period : float
        Lattice period, pixels.
    dose : float
        Mean counts per pixel (Poisson noise); ``inf`` for a noise-free image.
    rng : numpy.random.Generator
        Source of the Poisson noise.
    size : int
        Image side, pixels.
    modulation : float
        Contrast m of the lattice, in (0, 1].
    angle : float
        Rotation of the lattice, degrees.

    Returns
    -------
    float
        Projection of the restoration onto the lattice pattern divided by the
        clean image's (1: kept, 0: erased; a linear filter gives its transfer
        function at the lattice's frequency).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. np.random.default_rng(0))")
    if not (0.0 < modulation <= 1.0):
        raise ValueError(f"modulation must be in (0, 1], got {modulation}")
    if not dose > 0:
        raise ValueError(f"dose must be positive, got {dose}")
    pattern = lattice_pattern(size, period, angle)
    clean = (1.0 + modulation * pattern) * (dose if np.isfinite(dose) else 1.0)
    noisy = rng.poisson(clean).astype(np.float32) if np.isfinite(dose) else clean.astype(np.float32)
    out = np.asarray(restore(noisy), dtype=np.float64)
    if out.shape != clean.shape:
        raise ValueError(f"restore changed the shape: {clean.shape} -> {out.shape}")
    p = pattern - pattern.mean()
    norm = float(np.sum(p * (clean - clean.mean())))
    return float(np.sum(p * (out - out.mean()))) / norm

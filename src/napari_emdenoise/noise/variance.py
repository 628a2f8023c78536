"""Noise variance as a straight line of the local mean (Poisson–Gaussian noise), from one image.

Used by the restoration safeguard (:mod:`napari_emdenoise.engine.safeguard`) and
the evaluation's BM3D baseline (:func:`napari_emdenoise.evaluation.vst.
estimate_poisson_gaussian`). The approach is a simplified version of Foi et al.,
"Practical Poissonian-Gaussian noise modeling and fitting for single-image
raw-data", IEEE TIP 2008.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["noise_variance_line"]


#: High-pass kernels for :func:`noise_variance_line`, each scaled to unit gain
#: for white noise (the sum of its squared weights is 1).
_LAPLACIAN = np.array([[0.0, -0.25, 0.0], [-0.25, 1.0, -0.25], [0.0, -0.25, 0.0]]) / np.sqrt(1.25)
#: Product of second differences along rows and columns: its power response
#: 16 sin⁴(πf_y) sin⁴(πf_x) / 36 vanishes on both frequency axes and is below
#: 10⁻³ of its mean wherever |f_y| or |f_x| < 0.1 cycles/pixel, so lattice
#: fringes and columns leak into it far less than into the Laplacian.
_CORNER = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0]) / 6.0
KERNELS = {"laplacian": _LAPLACIAN, "corner": _CORNER}

#: Most pixels entering the per-pixel fit (with ``pilot``); larger frames use
#: a regular subset.
_MAX_FIT_PIXELS = 1 << 20

#: Median of a χ² variable with one degree of freedom (its mean is 1).
_CHI2_1_MEDIAN = 0.454936


def noise_variance_line(
    image: np.ndarray,
    n_bins: int = 16,
    block: int = 8,
    kernel: str = "laplacian",
    pilot: np.ndarray | None = None,
) -> tuple[float, float]:
    """Fit ``Var(noise) = a·mean + c`` on one image (Poisson–Gaussian model).

    The noise is measured on a high-pass residual (pixel minus the mean of its
    four neighbours, scaled to unit gain for white noise) in ``block``²
    blocks, against the blocks' local mean; the median block of each of
    ``n_bins`` intensity bins enters a straight-line fit, so blocks with
    structure (edges, atom columns) hardly move it. The intercept ``c`` is
    not clipped: a detector offset makes it negative.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image in any unit (counts, e⁻, grey levels).
    n_bins : int
        Intensity bins of the fit.
    block : int
        Block side, pixels.
    kernel : {"laplacian", "corner"}
        High-pass filter: the pixel minus the mean of its four neighbours, or
        the product of second differences along both axes, which sees only the
        corner of the spectrum (less signal, but white noise is assumed up to
        Nyquist in both directions).
    pilot : numpy.ndarray, optional
        An estimate of the noise-free image (a restoration), same shape. The
        high-pass is then taken of ``image − pilot``, pixel by pixel, against
        the pilot weighted by the kernel's squared weights (no blocks), and
        each intensity bin's variance is the median squared high-pass over
        0.4549 (the median of χ²₁): structure the pilot explains (sharp
        columns, fringes) is not counted as noise, and impulses do not move
        the fit.

    Returns
    -------
    (a, c) : tuple of float
        Slope (intensity units) and intercept (intensity units²); ``a`` ≥ 0.
    """
    x = np.asarray(image, dtype=np.float64)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if pilot is not None:
        level = np.asarray(pilot, dtype=np.float64)
        if level.shape != x.shape:
            raise ValueError(f"pilot has shape {level.shape}, the image {x.shape}")
        # Per pixel: the residual's high-pass is noise whose variance is the
        # kernel's squared weights (summing to 1) applied to the pixel variances.
        hp = ndimage.convolve(x - level, KERNELS[kernel], mode="reflect")
        mean = ndimage.convolve(level, KERNELS[kernel] ** 2, mode="reflect").ravel()
        # median of a χ²₁ variable is 0.4549 × its mean: robust to impulses
        var = hp.ravel() ** 2 / _CHI2_1_MEDIAN
        stride = -(-mean.size // _MAX_FIT_PIXELS)  # a regular subset on large frames
        mean, var = mean[::stride], var[::stride]
    else:
        hp = ndimage.convolve(x, KERNELS[kernel], mode="reflect")
        smooth = ndimage.uniform_filter(x, 3, mode="reflect")
        h, w = (s - s % block for s in x.shape)
        var = hp[:h, :w].reshape(h // block, block, w // block, block).var(axis=(1, 3), ddof=1)
        mean = smooth[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
        var, mean = var.ravel(), mean.ravel()
    edges = np.unique(np.quantile(mean, np.linspace(0.0, 1.0, n_bins + 1)))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 4:
            xs.append(float(np.median(mean[sel])))
            ys.append(float(np.median(var[sel])))
    if len(xs) < 2 or np.ptp(xs) == 0:
        return 0.0, float(np.median(var))
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return max(float(slope), 0.0), float(intercept)

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


def noise_variance_line(image: np.ndarray, n_bins: int = 16, block: int = 8) -> tuple[float, float]:
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

    Returns
    -------
    (a, c) : tuple of float
        Slope (intensity units) and intercept (intensity units²); ``a`` ≥ 0.
    """
    x = np.asarray(image, dtype=np.float64)
    kernel = np.array([[0.0, -0.25, 0.0], [-0.25, 1.0, -0.25], [0.0, -0.25, 0.0]])
    hp = ndimage.convolve(x, kernel, mode="reflect") / np.sqrt(1.25)
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

"""PSNR, SSIM and the oracle Gaussian filter, with a fixed data range.

The data range is that of the *clean* image (its max − min) unless given:
it must not depend on the estimate, or a method could raise its score by
changing its own range.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize

__all__ = ["best_gaussian", "psnr", "ssim"]


def _range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    r = float(np.max(reference) - np.min(reference))
    return r if r > 0 else 1.0


def _pair(estimate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"shape mismatch: {est.shape} vs {ref.shape}")
    return est, ref


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    estimate, reference : numpy.ndarray
        Same shape; ``reference`` is the clean image.
    data_range : float, optional
        Peak-to-peak range; default: that of ``reference``.
    """
    est, ref = _pair(estimate, reference)
    mse = float(np.mean((est - ref) ** 2))
    rng = _range(ref, data_range)
    return float("inf") if mse == 0 else float(10.0 * np.log10(rng * rng / mse))


def ssim(
    estimate: np.ndarray,
    reference: np.ndarray,
    data_range: float | None = None,
    sigma: float = 1.5,
) -> float:
    """Structural similarity, Gaussian-weighted (Wang, Bovik, Sheikh & Simoncelli, 2004).

    "Image quality assessment: from error visibility to structural
    similarity", IEEE TIP 13(4), 600–612. Same conventions as
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: K1 = 0.01, K2 = 0.03, the
    filter truncated at 3.5 σ, reflective borders, and the mean taken over the
    pixels at least half a window from the border.
    """
    est, ref = _pair(estimate, reference)
    rng = _range(ref, data_range)
    truncate = 3.5
    pad = (2 * int(truncate * sigma + 0.5) + 1 - 1) // 2

    def filt(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma, truncate=truncate, mode="reflect")

    mu_x, mu_y = filt(est), filt(ref)
    vx = filt(est * est) - mu_x**2
    vy = filt(ref * ref) - mu_y**2
    vxy = filt(est * ref) - mu_x * mu_y
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (vx + vy + c2))
    if pad > 0 and min(s.shape) > 2 * pad:
        s = s[pad:-pad, pad:-pad]
    return float(s.mean())


def best_gaussian(
    noisy: np.ndarray,
    clean: np.ndarray,
    sigma_range: tuple[float, float] = (0.25, 12.0),
    data_range: float | None = None,
) -> tuple[np.ndarray, float]:
    """Gaussian filter with the σ that maximises PSNR against ``clean`` (an oracle).

    A coarse logarithmic grid, then a bounded scalar search around its best
    point. σ = 0 (the input itself) is a candidate, so at very high dose the
    oracle returns the input rather than a blurred image.

    Returns
    -------
    filtered : numpy.ndarray
        Float32 filtered image.
    sigma : float
        The chosen standard deviation in pixels (0 for the input itself).
    """
    x, ref = _pair(noisy, clean)
    rng = _range(ref, data_range)

    def score(s: float) -> float:
        return (
            psnr(ndimage.gaussian_filter(x, s, mode="reflect"), ref, rng)
            if s > 0
            else psnr(x, ref, rng)
        )

    grid = np.geomspace(*sigma_range, 12)
    scores = [score(s) for s in grid]
    i = int(np.argmax(scores))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(
        lambda s: -score(s), bounds=(lo, hi), method="bounded", options={"xatol": 0.01}
    )
    best_s, best = (
        (float(res.x), -float(res.fun)) if -res.fun >= scores[i] else (grid[i], scores[i])
    )
    if score(0.0) >= best:
        return x.astype(np.float32), 0.0
    return ndimage.gaussian_filter(x, best_s, mode="reflect").astype(np.float32), float(best_s)

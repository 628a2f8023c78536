"""Image-quality metrics used by training validation and the benchmarks."""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim"]


def _range(reference: np.ndarray) -> float:
    r = float(np.max(reference) - np.min(reference))
    return r if r > 0 else 1.0


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    estimate, reference : numpy.ndarray
        Same shape.
    data_range : float, optional
        Peak-to-peak range; default: that of ``reference`` (its max − min).
    """
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"shape mismatch: {est.shape} vs {ref.shape}")
    mse = float(np.mean((est - ref) ** 2))
    rng = _range(ref) if data_range is None else float(data_range)
    return float("inf") if mse == 0 else 10.0 * np.log10(rng * rng / mse)


def ssim(estimate: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image, Gaussian-weighted as in Wang et al. 2004)."""
    from skimage.metrics import structural_similarity

    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    rng = _range(ref) if data_range is None else float(data_range)
    return float(
        structural_similarity(
            est,
            ref,
            data_range=rng,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )

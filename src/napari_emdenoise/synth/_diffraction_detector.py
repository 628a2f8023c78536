"""Pixelated-detector model for 4D-STEM patterns: MTF, shot noise, read noise, defects, saturation.

Two detector families are modelled:

* ``"counting"`` (hybrid-pixel / electron-counting cameras): the detector MTF
  acts on the expected counts (charge sharing decides which pixel an electron
  is counted in), then every pixel is Poisson distributed; no read noise.
* ``"integrating"`` (scintillator or integrating direct detectors): each
  electron's signal is spread by the point-spread function, so the Poisson
  noise itself is blurred (correlated noise), then Gaussian read noise is added.

Both have hot pixels (extra dark counts at fixed positions), dead pixels (0)
and an optional saturation level (counts per pixel per frame). The clean
target is the MTF-blurred expected counts; its total equals the dose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DetectorState", "apply_detector", "draw_detector", "detector_mtf"]


@dataclass
class DetectorState:
    """One detector: its family, MTF width, read noise and fixed defect maps.

    Attributes
    ----------
    kind : {"counting", "integrating"}
    mtf_sigma : float
        Gaussian σ of the point-spread function (pixels); MTF(f) = exp(−2π²σ²f²).
    read_noise : float
        Gaussian read-noise σ (counts); 0 for counting detectors.
    hot : numpy.ndarray
        Boolean map of hot pixels.
    hot_rate : float
        Mean extra counts per hot pixel per frame.
    dead : numpy.ndarray
        Boolean map of dead pixels (always read 0).
    saturation : float or None
        Largest count a pixel can record per frame, or None.
    """

    kind: str
    mtf_sigma: float
    read_noise: float
    hot: np.ndarray
    hot_rate: float
    dead: np.ndarray
    saturation: float | None


def draw_detector(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    counting_probability: float = 0.6,
    mtf_sigma_range: tuple[float, float] = (0.0, 0.8),
    read_noise_range: tuple[float, float] = (0.0, 0.5),
    defect_fraction_range: tuple[float, float] = (0.0, 1e-3),
    saturation_probability: float = 0.15,
) -> DetectorState:
    """Draw a random detector for patterns of ``shape`` pixels (defects fixed across a scan)."""
    kind = "counting" if rng.random() < counting_probability else "integrating"
    n = shape[0] * shape[1]
    hot = np.zeros(shape, bool)
    dead = np.zeros(shape, bool)
    for m in (hot, dead):
        k = rng.binomial(n, rng.uniform(*defect_fraction_range))
        m.flat[rng.choice(n, size=min(k, n), replace=False)] = True
    dead &= ~hot
    return DetectorState(
        kind=kind,
        mtf_sigma=float(rng.uniform(*mtf_sigma_range)),
        read_noise=0.0 if kind == "counting" else float(rng.uniform(*read_noise_range)),
        hot=hot,
        hot_rate=float(np.exp(rng.uniform(np.log(0.5), np.log(20.0)))),
        dead=dead,
        saturation=float(rng.uniform(0.3, 0.9)) if rng.random() < saturation_probability else None,
    )


def detector_mtf(pattern: np.ndarray, sigma: float) -> np.ndarray:
    """Blur by the detector PSF (Gaussian σ in pixels); the total counts are kept."""
    if sigma <= 0.05:
        return pattern
    blurred = ndimage.gaussian_filter(pattern, sigma, mode="nearest")
    total = float(blurred.sum())
    return blurred * (float(pattern.sum()) / total) if total > 0 else blurred


def apply_detector(
    expected: np.ndarray, det: DetectorState, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Record ``expected`` counts (before the MTF) with ``det``.

    Parameters
    ----------
    expected : numpy.ndarray
        Expected electron counts per pixel before the detector (float64).
    det : DetectorState
    rng : numpy.random.Generator

    Returns
    -------
    noisy : numpy.ndarray
        Recorded counts (float64).
    clean : numpy.ndarray
        MTF-blurred expected counts, the same total as ``expected``.

    Notes
    -----
    ``saturation`` is given as a fraction of the brightest clean pixel; it is
    applied only when that pixel holds more than 20 counts (at lower dose the
    detector cannot saturate).
    """
    clean = detector_mtf(expected, det.mtf_sigma)
    if det.kind == "counting":
        noisy = rng.poisson(clean).astype(np.float64)
    else:
        noisy = detector_mtf(rng.poisson(expected).astype(np.float64), det.mtf_sigma)
        if det.read_noise > 0:
            noisy += rng.normal(0.0, det.read_noise, size=noisy.shape)
    if det.hot.any():
        noisy[det.hot] += rng.poisson(det.hot_rate, size=int(det.hot.sum()))
    noisy[det.dead] = 0.0
    peak = float(clean.max())
    if det.saturation is not None and peak > 20.0:
        noisy = np.minimum(noisy, np.ceil(det.saturation * peak))
    return noisy, clean

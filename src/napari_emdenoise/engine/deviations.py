"""Keep defects: put the raw frame back where a restoration differs from it significantly.

A restoration that leans on what repeats in an image (a network trained on
crystals, the lattice pass of :mod:`.lattice`, BM3D, self-supervised
adaptation) can average a vacancy or a dopant column into its neighbours. On
the defect probe of ``benchmarks/defect_contrast.py`` (vacancies and 1.5×
substitutions in a lattice of σ 0.7–0.8-px columns every 4–5 px) the bundled
networks erase the lattice, the lattice pass rebuilds it from a 32-px average,
and 1–3 % of the defects' contrast is left.

What was removed is still in the residual ``r = frame − restored``. Where
the restoration is right, ``r`` is noise; at a defect it averaged away, ``r``
holds a column-sized blob far above the noise. The pass

1. smooths ``r`` with a Gaussian of :attr:`DeviationSettings.scale` pixels
   (about an atom column: a matched filter for a column-sized deviation);
2. divides it by its noise standard deviation, from the frame's own
   Poisson–Gaussian line ``Var = a·mean + c``
   (:func:`~napari_emdenoise.noise.variance.noise_variance_line`, evaluated
   on the restoration) and the smoothing kernel; the result ``z`` is then
   rescaled so that its median square is that of unit Gaussian noise (the
   defects are few, so the median is the noise's; correlated noise, which the
   white-noise formula underestimates, is absorbed here);
3. marks where ``|z|`` exceeds :attr:`DeviationSettings.threshold` (a soft
   ramp over one unit of ``z``), widens the mark by the same Gaussian so that
   it covers the whole deviation, and there puts the raw frame back:
   ``out = restored + gate · r``.

Isolated impulses (zingers, hot and dead pixels: one pixel more than eight
noise deviations off while its neighbours are not) are left out of ``r``
first, so what the restoration removed as an impulse stays removed.

Where nothing is marked the restoration is unchanged (on flat Poisson noise
about 0.2 % of the pixels are marked at the default threshold of 3). At a
marked defect the output is the raw frame: unbiased, with its noise.

What it cannot tell apart: a distortion the network corrected (scan-line
offsets, scan jitter, blur) also leaves a significant residual, and is put
back. On our synthetic pairs it cost 0.7 dB (S(T)EM: scan-line offsets and
jitter) and 1.5 dB (TEM: the camera blur) on average, on the HRTEM physics
set at 5 counts/pixel 0.5 dB (graphene −2.1 dB), on HAADF 0.01 dB
(``benchmarks/defect_contrast.py``), so it is off by default
(``restore(..., keep_defects=True)``, ``emdenoise restore --keep-defects``,
the Restore dock's "keep defects"): use it on counting-noise limited
atomic-resolution images where single columns matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..noise.variance import noise_variance_line
from ._frame_pair import frame_pair

__all__ = ["DeviationSettings", "restore_deviations"]

#: Median of χ²₁: the median of ``z²`` for unit Gaussian noise.
CHI2_1_MEDIAN = 0.454936
#: Least noise variance of a pixel, as a share of the frame's median noise variance.
VARIANCE_FLOOR = 0.1
#: Noise deviations from the restoration beyond which an isolated pixel is an impulse.
IMPULSE_SIGMAS = 8.0
#: Smallest frame side, pixels, the pass works on; smaller frames keep the restoration.
MIN_SIDE = 16
#: Working memory of the pass, bytes per pixel (float64 frame pair + float32 maps).
WORKING_BYTES_PER_PIXEL = 48


@dataclass(frozen=True)
class DeviationSettings:
    """Settings of the keep-defects pass.

    Attributes
    ----------
    scale : float
        Gaussian smoothing of the residual, pixels (0.5–8): about the width
        (σ) of an atom column in the image.
    threshold : float
        Significance, in noise standard deviations of the smoothed residual
        (2–10), above which the raw frame is put back.
    """

    scale: float = 1.0
    threshold: float = 3.0

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and 0.5 <= self.scale <= 8):
            raise ValueError(f"scale must be 0.5–8 pixels, got {self.scale!r}")
        if not (isinstance(self.threshold, (int, float)) and 2 <= self.threshold <= 10):
            raise ValueError(f"threshold must be 2–10 noise deviations, got {self.threshold!r}")


def noise_variance(image: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """Noise variance of every pixel (float32) from the frame's Poisson–Gaussian line.

    The line ``a·mean + c`` is fitted on what the restoration removed and
    evaluated on the restoration. Fitted where the frame has most pixels, it
    can reach zero when extrapolated to the darkest ones (a HAADF background of
    under a count): a tenth of the frame's median noise variance is the least
    a pixel is given (a unit-invariant floor).
    """
    a, c = noise_variance_line(image, pilot=restored)
    variance = np.maximum(a * restored + c, 0.0)
    floor = VARIANCE_FLOOR * float(np.median(variance)) + 1e-30
    return np.maximum(variance, floor).astype(np.float32)


def without_impulses(residual: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``residual`` with isolated impulses (zingers, hot and dead pixels) set to 0.

    A pixel is an impulse when it lies more than :data:`IMPULSE_SIGMAS` noise
    deviations from the restoration while the median of its eight neighbours'
    residuals is under a quarter of its own: a column-sized deviation (a
    vacancy, σ ≥ 0.7 px) spreads at least a third of its peak to the
    neighbours, a zinger none. What the restoration removed as an impulse
    stays removed.
    """
    from scipy import ndimage

    strong = residual * residual > IMPULSE_SIGMAS**2 * variance
    if not strong.any():
        return residual
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    neighbours = ndimage.median_filter(residual, footprint=ring, mode="reflect")
    impulse = strong & (np.abs(neighbours) < 0.25 * np.abs(residual))
    return np.where(impulse, np.float32(0.0), residual)


def significance(residual: np.ndarray, variance: np.ndarray, scale: float) -> np.ndarray:
    """``|z|``: the residual smoothed at ``scale`` pixels, in units of its noise deviation.

    Parameters
    ----------
    residual : numpy.ndarray
        ``frame − restored`` (impulses removed), float32, 2-D.
    variance : numpy.ndarray
        Noise variance of every pixel, same shape (:func:`noise_variance`).
    scale : float
        Gaussian σ of the smoothing, pixels.

    Returns
    -------
    numpy.ndarray
        Float32 map of ``|z|``, calibrated so that its median square is
        ``CHI2_1_MEDIAN`` or more (never scaled up).
    """
    from scipy import ndimage

    smoothed = ndimage.gaussian_filter(residual, scale, mode="reflect")
    # Var of a Gaussian-weighted sum of white noise: Σ w² = 1 / (4π σ²) of the local variance.
    noise = ndimage.gaussian_filter(variance, scale, mode="reflect") / (4 * math.pi * scale**2)
    z2 = smoothed * smoothed / noise
    kappa = max(float(np.median(z2)) / CHI2_1_MEDIAN, 1.0)
    return np.sqrt(z2 / kappa).astype(np.float32)


def restore_deviations(
    image: np.ndarray, restored: np.ndarray, settings: DeviationSettings | None = None
) -> np.ndarray:
    """Put ``image`` back where ``restored`` differs from it beyond the noise.

    Parameters
    ----------
    image : numpy.ndarray
        The raw 2-D frame, any intensity unit.
    restored : numpy.ndarray
        Its restoration, same shape and unit.
    settings : DeviationSettings, optional
        Scale and threshold (default 1 pixel, 3 noise deviations).

    Returns
    -------
    numpy.ndarray
        Float32 ``restored + gate · (image − restored)``, the gate in [0, 1]
        (1 at significant deviations). Frames under 16 pixels on a side, and
        non-finite inputs, are returned as ``restored``.

    Raises
    ------
    ValueError
        If the arrays are not 2-D or differ in shape.
    """
    from scipy import ndimage

    settings = settings or DeviationSettings()
    x, y, usable = frame_pair(image, restored, "restored", MIN_SIDE)
    if not usable:
        return y.astype(np.float32)
    variance = noise_variance(x, y)
    residual = without_impulses((x - y).astype(np.float32), variance)
    z = significance(residual, variance, settings.scale)
    gate = np.clip(z - settings.threshold, 0.0, 1.0)
    # Widen the mark over the whole deviation (z peaks at its centre).
    gate = np.clip(3.0 * ndimage.gaussian_filter(gate, settings.scale, mode="reflect"), 0.0, 1.0)
    return (y + gate * residual).astype(np.float32)

"""Keep a restoration no worse than its input: SURE-optimal blending with the raw image.

A network trained on synthetic pairs can meet an image it does not "know"
(another structure, pixel size or noise level). It may then remove signal
along with the noise, or reshape what it cannot explain. The safeguard asks
the image itself how much of the network's change to keep: the output is

    o = x + λ · (f(x) − x),    λ ∈ [0, 1],

with λ chosen to minimise an unbiased estimate of the mean squared error
against the unknown noise-free image (Stein's unbiased risk estimate, SURE;
Stein, "Estimation of the mean of a multivariate normal distribution", Ann.
Stat. 1981). With ``r = x − f(x)`` and per-pixel noise variance ``v``,

    E‖o − s‖² = Σ v − 2λ (Σ v − Σ v_i ∂f_i/∂x_i) + λ² ‖r‖²,

so λ* = (Σ v − Σ v_i ∂f_i/∂x_i) / ‖r‖². The weighted divergence is estimated
with one Monte-Carlo probe (Ramani, Blu & Unser, "Monte-Carlo SURE: a
black-box optimization of regularization parameters for general denoising
algorithms", IEEE TIP 2008), on a central crop to keep the cost small, and
the variance from the image's own mean–variance line ``v = a·mean + c``
(Poisson–Gaussian noise, measured on a high-pass residual).

If the network only removes noise, λ* ≈ 1 and nothing changes. If it also
removes or moves signal, ‖r‖² exceeds what the noise explains and λ* < 1
pulls the result towards the input. Distortions other than white noise (row
lines, scan jitter, blur) also raise ‖r‖², so on such images the safeguard
is conservative: it keeps less of the correction, never more than all of it.
The blend is affine-equivariant (``a·x + b`` gives ``a·o + b``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..noise.variance import noise_variance_line

__all__ = ["BlendResult", "noise_variance_line", "sure_blend"]

logger = logging.getLogger(__name__)

#: Side of the central crop (pixels) on which λ is estimated, plus the margin
#: left out of the sums on each side (the network sees no context beyond it).
CROP_SIDE = 384
CROP_MARGIN = 24

#: Smallest frame side (pixels) on which λ is estimated; smaller frames keep
#: the network's output unchanged (too few pixels for the noise fit).
MIN_SIDE = 48


@dataclass(frozen=True)
class BlendResult:
    """Outcome of :func:`sure_blend`.

    Attributes
    ----------
    image : numpy.ndarray
        ``x + λ·(f(x) − x)``, float32.
    weight : float
        λ in [0, 1]; 1 keeps the network's output, 0 returns the input.
    estimated : bool
        False when λ could not be estimated (tiny or flat frame) and 1 was used.
    """

    image: np.ndarray
    weight: float
    estimated: bool


def _central_crop(shape: tuple[int, int]) -> tuple[slice, slice]:
    side = CROP_SIDE + 2 * CROP_MARGIN
    return tuple(  # type: ignore[return-value]
        slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape
    )


def sure_blend(
    noisy: np.ndarray,
    restored: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
) -> BlendResult:
    """Blend a restoration with its input by the SURE-optimal weight (module notes).

    Parameters
    ----------
    noisy : numpy.ndarray
        The input frame ``x`` (2-D).
    restored : numpy.ndarray
        The network's output ``f(x)`` for the whole frame, same shape.
    forward : callable
        ``forward(crop) -> restored crop``: the same restoration applied to a
        2-D array (two calls, on a central crop of at most 432² pixels).
    rng : numpy.random.Generator
        Source of the Monte-Carlo probe (seeded: the result is reproducible).

    Returns
    -------
    BlendResult
    """
    x = np.asarray(noisy, dtype=np.float64)
    fx = np.asarray(restored, dtype=np.float64)
    if min(x.shape) < MIN_SIDE:
        return BlendResult(fx.astype(np.float32), 1.0, False)
    slope, intercept = noise_variance_line(x)
    crop = _central_crop(x.shape)
    xc = x[crop]
    inner = tuple(
        slice(CROP_MARGIN, n - CROP_MARGIN) if n > 4 * CROP_MARGIN else slice(None)
        for n in xc.shape
    )
    f0 = np.asarray(forward(xc.astype(np.float32)), dtype=np.float64)
    v = np.clip(slope * f0 + intercept, 0.0, None)
    mean_v = float(v[inner].mean())
    if not np.isfinite(mean_v) or mean_v <= 0:
        return BlendResult(fx.astype(np.float32), 1.0, False)
    sd = np.sqrt(v)
    probe = rng.standard_normal(xc.shape)
    # Perturbation small against the noise (10⁻² σ), large against float32 rounding.
    eps = 1e-2
    f1 = np.asarray(forward((xc + eps * sd * probe).astype(np.float32)), dtype=np.float64)
    weighted_divergence = float((sd * probe * (f1 - f0))[inner].sum() / eps)
    residual2 = float(((xc - f0)[inner] ** 2).sum())
    if residual2 <= 0:
        return BlendResult(fx.astype(np.float32), 1.0, False)
    weight = float(np.clip((v[inner].sum() - weighted_divergence) / residual2, 0.0, 1.0))
    logger.info("safeguard: keeping %.3f of the network's change", weight)
    out = x + weight * (fx - x)
    return BlendResult(out.astype(np.float32), weight, True)

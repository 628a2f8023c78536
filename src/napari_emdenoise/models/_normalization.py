"""Per-image intensity normalisation shared by the restoration networks.

The CGRDN and the DnCNN denoisers see every image as ``x' = (x - mean) / scale``
with ``scale = max(std, NORM_REL_FLOOR · |mean|, 1e-15)`` and map their output
back with the inverse transform, so one set of weights serves images of any
dose, detector gain, offset or unit. The floor is *relative*: for every
``a > 0`` and ``b`` the normalised image of ``a·x + b`` equals that of ``x``
(as long as the image is not flat to one part in 10⁶), which makes
``restore(a·x + b) = a·restore(x) + b``. (An absolute floor, as used before
version 0.3, made the result depend on the unit: counts, electrons and
``[0, 1]`` grey levels gave different restorations.)

The inference engine can switch the networks' own normalisation off
(``model.normalize = False``) and apply :func:`normalization_stats` once to
the whole image before tiling, so that all tiles share the same statistics.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "NORM_ABS_FLOOR",
    "NORM_REL_FLOOR",
    "NORM_STD_FLOOR",
    "denormalize",
    "normalization_stats",
    "normalize_per_image",
]

#: Smallest scale relative to the image's mean magnitude (dimensionless). An
#: image flatter than this (a constant, or a constant plus rounding noise) is
#: not blown up to unit variance, where it would look like pure noise.
NORM_REL_FLOOR: float = 1e-6

#: Absolute lower bound of the scale, only reached by an all-zero image.
NORM_ABS_FLOOR: float = 1e-15

#: Name of the floor before version 0.3 (public API, kept as an alias): the networks'
#: ``std_floor`` is now the relative floor.
NORM_STD_FLOOR: float = NORM_REL_FLOOR


def normalize_per_image(
    x: torch.Tensor, std_floor: float = NORM_REL_FLOOR
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise every image (and channel) of a batch over its last two axes.

    Parameters
    ----------
    x : torch.Tensor
        Batch of shape ``(B, C, H, W)``, floating point, intensities in any
        unit (counts, e⁻/pixel, normalised grey levels).
    std_floor : float
        Relative floor of the scale (dimensionless, see :data:`NORM_REL_FLOOR`).

    Returns
    -------
    normalised : torch.Tensor
        ``(x - mean) / scale``, same shape as ``x``.
    mean : torch.Tensor
        Per-image mean, shape ``(B, C, 1, 1)``.
    scale : torch.Tensor
        ``max(std, std_floor·|mean|, 1e-15)`` per image, shape ``(B, C, 1, 1)``;
        the standard deviation is the population one (divisor ``H·W``).

    Notes
    -----
    The scale is computed from the variance (``sqrt(max(var, …²))``) so that
    the gradient stays finite for a constant image.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, correction=0)
    floor2 = (std_floor * mean).square().clamp_min(NORM_ABS_FLOOR**2)
    scale = torch.maximum(var, floor2).sqrt()
    return (x - mean) / scale, mean, scale


def normalization_stats(
    image: np.ndarray, std_floor: float = NORM_REL_FLOOR
) -> tuple[float, float]:
    """Mean and scale of a whole image as :func:`normalize_per_image` defines them.

    Sums are taken in float64, so an offset of 10⁶ counts on a signal of a few
    counts keeps its precision.

    Parameters
    ----------
    image : numpy.ndarray
        Image of any real dtype.
    std_floor : float
        Relative floor (dimensionless).

    Returns
    -------
    (mean, scale) : tuple of float
        In the intensity unit of ``image``.
    """
    mean = float(image.mean(dtype=np.float64))
    var = float(image.var(dtype=np.float64))
    floor = max(abs(std_floor * mean), NORM_ABS_FLOOR)
    return mean, math.sqrt(max(var, floor**2))


def denormalize(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize_per_image`: return ``x * scale + mean``."""
    return x * scale + mean

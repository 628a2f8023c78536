"""Per-image intensity normalisation shared by the restoration networks.

The CGRDN (seed 001, SPEC §4) and the DnCNN denoisers see every image as
``x' = (x - mean) / max(std, std_floor)`` and map their output back with the
inverse transform, so one set of weights serves images of any dose or
detector gain. The inference engine can switch the networks' own
normalisation off (``model.normalize = False``) and apply
:func:`normalize_per_image` once to the whole image before tiling, so that all
tiles share the same statistics.
"""

from __future__ import annotations

import torch

__all__ = ["NORM_STD_FLOOR", "denormalize", "normalize_per_image"]

#: Lower bound of the standard deviation used to scale an image (intensity
#: units of the input). It keeps flat, nearly empty images from being blown up
#: to unit variance, where they would look like pure noise to the network.
NORM_STD_FLOOR: float = 0.1


def normalize_per_image(
    x: torch.Tensor, std_floor: float = NORM_STD_FLOOR
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise every image (and channel) of a batch over its last two axes.

    Parameters
    ----------
    x : torch.Tensor
        Batch of shape ``(B, C, H, W)``, floating point, intensities in any
        unit (counts, e⁻/pixel, normalised grey levels).
    std_floor : float
        Smallest scale used, in the intensity unit of ``x``.

    Returns
    -------
    normalised : torch.Tensor
        ``(x - mean) / scale``, same shape as ``x``.
    mean : torch.Tensor
        Per-image mean, shape ``(B, C, 1, 1)``.
    scale : torch.Tensor
        ``max(std, std_floor)`` per image, shape ``(B, C, 1, 1)``; the
        standard deviation is the population one (divisor ``H·W``).

    Notes
    -----
    The scale is computed as ``sqrt(max(var, std_floor²))`` rather than
    ``max(sqrt(var), std_floor)``: the values are identical, but the gradient
    stays finite for a constant image.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, correction=0)
    scale = var.clamp_min(std_floor**2).sqrt()
    return (x - mean) / scale, mean, scale


def denormalize(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize_per_image`: return ``x * scale + mean``."""
    return x * scale + mean

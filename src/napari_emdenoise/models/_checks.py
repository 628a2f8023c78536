"""Input checks for the networks' ``forward`` methods."""

from __future__ import annotations

import torch

__all__ = ["check_image_batch"]


def check_image_batch(
    x: object, channels: int, *, min_size: int = 1, name: str = "input"
) -> torch.Tensor:
    """Check that ``x`` is a floating ``(B, channels, H, W)`` tensor.

    Parameters
    ----------
    x : object
        Candidate batch.
    channels : int
        Required number of channels.
    min_size : int
        Smallest allowed ``H`` and ``W``, in pixels.
    name : str
        Name used in error messages.

    Returns
    -------
    torch.Tensor
        ``x`` itself (not copied).

    Raises
    ------
    ValueError
        If ``x`` is not a tensor, has the wrong rank, channel count or an
        integer/boolean dtype, is empty, or is smaller than ``min_size``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape (batch, {channels}, height, width), got {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channel(s) on axis 1, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(
            f"{name} of spatial size {tuple(x.shape[-2:])} is too small: height and "
            f"width need at least {min_size} pixels"
        )
    return x

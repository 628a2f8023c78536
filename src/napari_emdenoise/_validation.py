"""Input checks shared by the engine, the noise model and the widgets.

Every public entry point that takes an image funnels it through
:func:`as_float_image` so that bad input produces one clear ``ValueError``
instead of a crash deep inside numpy, scipy or torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_float_image"]


def as_float_image(
    image: object,
    *,
    ndim: int | tuple[int, ...] = 2,
    min_size: int = 1,
    name: str = "image",
) -> np.ndarray:
    """Return ``image`` as a new C-contiguous float32 array after checking it.

    Parameters
    ----------
    image : array_like
        Input image; integer, boolean and float dtypes are accepted.
    ndim : int or tuple of int
        Allowed number(s) of dimensions.
    min_size : int
        Minimum length of every axis, in pixels.
    name : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray
        A float32 copy; the caller's array is never modified.

    Raises
    ------
    ValueError
        If the array is empty, has the wrong number of dimensions, an axis
        shorter than ``min_size``, a non-numeric dtype, or NaN/inf values.
    """
    arr = np.asarray(image)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {want}, got a {arr.ndim}-D array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if min(arr.shape) < min_size:
        raise ValueError(
            f"{name} of shape {arr.shape} is too small: every axis needs at least {min_size} pixels"
        )
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(out).all():
        n_bad = int((~np.isfinite(out)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); replace them first "
            "(e.g. numpy.nan_to_num) so they are not mistaken for signal"
        )
    return out

"""The checks shared by the passes that revisit the raw frame after the network."""

from __future__ import annotations

import numpy as np


def frame_pair(
    image: object, other: object, other_name: str, min_side: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``image`` and its restoration as float64 arrays, and whether a pass can use them.

    Parameters
    ----------
    image : array_like
        The raw 2-D frame.
    other : array_like
        Its restoration (pilot), same shape.
    other_name : str
        What ``other`` is called in the error message.
    min_side : int
        Smallest frame side, pixels, the pass works on.

    Returns
    -------
    x, y : numpy.ndarray
        float64 copies (or views) of ``image`` and ``other``.
    usable : bool
        False for frames under ``min_side`` on a side or with non-finite
        values; the pass then returns ``other`` unchanged.

    Raises
    ------
    ValueError
        If the arrays are not 2-D or differ in shape.
    """
    x = np.asarray(image, dtype=np.float64)
    y = np.asarray(other, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"image and {other_name} must be 2-D arrays of one shape, got {x.shape} and {y.shape}"
        )
    usable = min(x.shape) >= min_side and bool(np.all(np.isfinite(x)) and np.all(np.isfinite(y)))
    return x, y, usable

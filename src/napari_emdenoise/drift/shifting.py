"""Sub-pixel translation of a frame (the one place that moves pixels in :mod:`.drift`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["apply_shift"]


def apply_shift(
    frame: np.ndarray, shift: Sequence[float], order: int = 3, fill_value: float = 0.0
) -> np.ndarray:
    """Translate a frame by ``shift`` pixels: ``out(x) = frame(x - shift)``.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D frame (any numeric dtype).
    shift : sequence of float
        ``(dy, dx)`` in pixels, as returned by :func:`estimate_shift`.
    order : int
        Spline order (0–5); integer shifts are exact for every order.
    fill_value : float
        Value of the pixels that no input pixel maps to.

    Returns
    -------
    numpy.ndarray
        float32 frame of the same shape.
    """
    from scipy import ndimage

    data = np.asarray(frame, dtype=np.float32)
    dy, dx = (float(s) for s in shift)
    h, w = data.shape
    if dy == round(dy) and dx == round(dx):
        out = np.full_like(data, fill_value)
        iy, ix = int(round(dy)), int(round(dx))
        if abs(iy) < h and abs(ix) < w:
            out[max(0, iy) : h + min(0, iy), max(0, ix) : w + min(0, ix)] = data[
                max(0, -iy) : h + min(0, -iy), max(0, -ix) : w + min(0, -ix)
            ]
        return out
    out = ndimage.shift(data, (dy, dx), order=int(order), mode="nearest", prefilter=order > 1)
    yy = np.arange(h)[:, None] - dy
    xx = np.arange(w)[None, :] - dx
    valid = (yy >= -1e-6) & (yy <= h - 1 + 1e-6) & (xx >= -1e-6) & (xx <= w - 1 + 1e-6)
    out[~valid] = fill_value
    return out.astype(np.float32, copy=False)

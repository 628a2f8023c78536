"""Public entry point of the clean (undistorted) image generator."""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np

from .._validation import check_fits_in_memory
from ._random import as_generator, check_shape
from .atomic import generate_atomic
from .contrast import CLEAN_STD_MEAN_RANGE, apply_random_contrast
from .lowres import generate_lowres

__all__ = ["KINDS", "generate_clean"]

#: ``"hr"``: atomic resolution; ``"lr"``: low magnification.
KINDS = ("hr", "lr")
_MAX_ATTEMPTS = 20

#: Peak working memory of the generator per output pixel, in bytes (measured:
#: float64 work images, site tables and rendering buffers).
_BYTES_PER_PIXEL = {"hr": 320, "lr": 128}


def _usable(raw: np.ndarray) -> bool:
    """A raw image can go through eqs 23–26 if it is finite and not constant."""
    return bool(np.isfinite(raw).all() and raw.max() > 0 and raw.std() > 1e-9 * raw.max())


@overload
def generate_clean(
    kind: str = ...,
    shape: tuple[int, int] = ...,
    rng: np.random.Generator | int | None = ...,
    *,
    return_info: Literal[False] = ...,
    atomic: dict[str, Any] | None = ...,
) -> np.ndarray: ...


@overload
def generate_clean(
    kind: str = ...,
    shape: tuple[int, int] = ...,
    rng: np.random.Generator | int | None = ...,
    *,
    return_info: Literal[True],
    atomic: dict[str, Any] | None = ...,
) -> tuple[np.ndarray, dict[str, Any]]: ...


def generate_clean(
    kind: str = "hr",
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    *,
    return_info: bool = False,
    atomic: dict[str, Any] | None = None,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Generate one random undistorted EM image (Lobato et al. 2023, "Data generation").

    ``"hr"`` images are projected atomic specimens (eqs 16–22), ``"lr"``
    images superimpose particles, grains, bands, boxes and cracks; both then
    go through contrast inversion (eq 23), the power law (eq 24), a random
    background, the std/mean constraint r ∈ [0.01, 1.5] (eq 25, widened from
    the paper's 0.35 so that HAADF-like images keep a dark background) and
    the normalisation by the maximum (eq 26).

    Parameters
    ----------
    kind : {"hr", "lr"}
        High (atomic) or low resolution.
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels; any size ≥ 8, odd and non-square
        included.
    rng : numpy.random.Generator, int or None
        Random generator (advanced in place), integer seed, or None for
        fresh entropy. The same seed gives the same image.
    return_info : bool
        Also return a JSON-serialisable record of every random choice
        (specimen, pixel size in Å, species and profiles, modifiers,
        inversion, β, background, std/mean ratio).
    atomic : dict, optional
        With ``kind="hr"``: choices passed to
        :func:`napari_emdenoise.synth.atomic.generate_atomic` instead of being
        drawn (``specimen``, ``orientation``, ``pixel_size`` in Å, …).

    Returns
    -------
    image : numpy.ndarray
        float32 array of ``shape`` with values in [0, 1] and maximum 1.
    info : dict
        Only when ``return_info`` is True.

    Raises
    ------
    ValueError
        On an unknown ``kind``, a bad ``shape`` or a bad ``rng``.

    Examples
    --------
    >>> img = generate_clean("hr", (64, 96), rng=0)
    >>> img.dtype, img.shape, float(img.max())
    (dtype('float32'), (64, 96), 1.0)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if atomic and kind != "hr":
        raise ValueError("atomic options apply to high-resolution ('hr') images only")
    shape = check_shape(shape)
    n_pixels = float(shape[0]) * float(shape[1])
    check_fits_in_memory(
        n_pixels * _BYTES_PER_PIXEL[kind],
        f"a {shape[0]}×{shape[1]} {kind.upper()} clean image",
        hint="generate a smaller image (e.g. 2048×2048) or tiles of it",
    )
    rng = as_generator(rng)
    attempts = 0
    for _ in range(_MAX_ATTEMPTS):
        attempts += 1
        if kind == "hr":
            raw, info = generate_atomic(shape, rng, **(atomic or {}))
        else:
            raw, info = generate_lowres(shape, rng)
        if not _usable(raw):
            continue
        image, contrast = apply_random_contrast(raw, rng)
        if contrast["std_mean"]["reached"]:
            break
    else:  # pragma: no cover - needs 20 degenerate draws in a row
        raise RuntimeError("could not generate a non-degenerate image; try another seed")
    if not return_info:
        return image
    record = {
        "kind": kind,
        "shape": list(shape),
        "attempts": attempts,
        **info,
        "contrast": contrast,
        "std_mean_range": list(CLEAN_STD_MEAN_RANGE),
    }
    return image, record

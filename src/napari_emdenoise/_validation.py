"""Input checks shared by the engine, the noise model, the readers and the widgets.

Every public entry point that takes an image funnels it through
:func:`as_float_image` so that bad input produces one clear ``ValueError``
instead of a crash deep inside numpy, scipy or torch. Sizes that would not fit
in memory are refused up front by :func:`check_fits_in_memory` with a
:class:`TooLargeError`, instead of a ``MemoryError`` traceback minutes later.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "TooLargeError",
    "as_float_image",
    "available_memory",
    "check_fits_in_memory",
    "format_bytes",
    "tensor_to_numpy",
]

#: Share of the currently available memory one operation may plan to use.
_MEMORY_FRACTION = 0.8
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class TooLargeError(ValueError, MemoryError):
    """An array or an operation would need more memory than is available.

    It is a ``ValueError`` (the request is unreasonable for this machine, and
    callers that report bad input catch it) and a ``MemoryError``.
    """


def format_bytes(n: float) -> str:
    """Human-readable size with binary prefixes, e.g. ``"1.5 GiB"``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - loop always returns


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now, or None if unknown.

    Uses ``psutil`` when installed, else ``MemAvailable`` of ``/proc/meminfo``,
    else ``sysconf``.
    """
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(
    nbytes: float,
    what: str,
    *,
    hint: str = "",
    available: int | None = None,
) -> None:
    """Refuse an operation that would need more than 80 % of the available memory.

    Parameters
    ----------
    nbytes : float
        Estimated peak memory of the operation, in bytes.
    what : str
        What needs it, for the message (e.g. ``"a 20000×20000 simulation"``).
    hint : str
        What the user can do instead (appended to the message).
    available : int, optional
        Available memory in bytes; default :func:`available_memory` (when
        that is unknown, nothing is refused).

    Raises
    ------
    TooLargeError
        If ``nbytes`` exceeds the budget.
    """
    budget = available_memory() if available is None else int(available)
    if budget is None:
        return
    budget = int(budget * _MEMORY_FRACTION)
    if not math.isfinite(float(nbytes)) or nbytes > budget:
        message = (
            f"{what} needs about {format_bytes(nbytes)} of memory, but only "
            f"{format_bytes(budget)} can be used on this machine now"
        )
        raise TooLargeError(f"{message}; {hint}" if hint else message)


def tensor_to_numpy(image: object) -> object:
    """A torch tensor (any device, with or without autograd) as a numpy array; else ``image``.

    Parameters
    ----------
    image : object
        Anything; only torch tensors are converted (detached, never modified).

    Returns
    -------
    object
        A numpy array for a tensor, else ``image`` itself.
    """
    if type(image).__module__.startswith("torch") and hasattr(image, "detach"):
        tensor = image.detach()  # type: ignore[attr-defined]
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return image


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
        Input image; integer, boolean and float dtypes are accepted, and torch
        tensors (on any device, also ones that require gradients; they are
        detached, never modified).
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
        shorter than ``min_size``, a non-numeric dtype, NaN/inf values, or
        values beyond the float32 range (about ±3.4e38).
    """
    try:
        arr = np.asarray(tensor_to_numpy(image))
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{name} cannot be read as a numeric array: {exc}") from exc
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
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(out).all():
        bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
        n_bad = int(bad.sum())
        if n_bad:
            raise ValueError(
                f"{name} contains {n_bad} NaN or infinite value(s); replace them first "
                "(e.g. numpy.nan_to_num) so they are not mistaken for signal"
            )
        n_big = int((~np.isfinite(out)).sum())
        peak = float(np.max(np.abs(arr)))
        raise ValueError(
            f"{name} has {n_big} value(s) beyond the float32 range (largest magnitude "
            f"{peak:.3g}, limit {_FLOAT32_MAX:.3g}); rescale the image first (e.g. divide "
            "by its maximum)"
        )
    return out

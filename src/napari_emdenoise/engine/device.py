"""Choice of the torch device, mixed precision and out-of-memory detection.

Device rules: CUDA when available, else Apple MPS, else the CPU,
unless the user names one. Mixed precision (autocast) is used on CUDA only:
bfloat16 where the GPU supports it, float16 otherwise. On MPS and the CPU the
networks run in float32, which is both safe and, on the CPU, not slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = [
    "autocast_context",
    "autocast_dtype",
    "available_devices",
    "is_oom_error",
    "resolve_device",
]

_SUPPORTED_TYPES = ("cpu", "cuda", "mps")

#: Fragments of the messages torch and its backends use for allocation
#: failures that are not raised as ``torch.OutOfMemoryError``.
_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """Names of the devices this machine can run on, most capable first.

    Returns
    -------
    list of str
        ``"cuda:0"``, ``"cuda:1"``, … when CUDA is available, ``"mps"`` on
        Apple silicon, and always ``"cpu"``; each is accepted by
        :func:`resolve_device` (``"auto"`` is not listed).
    """
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user's device choice into an available ``torch.device``.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"`` pick CUDA, then MPS, then the CPU. Otherwise
        anything ``torch.device`` understands on one of those three backends,
        e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns
    -------
    torch.device
        The device; a bare ``"cuda"`` is returned with the current CUDA
        device index so that comparisons with tensors' devices work.

    Raises
    ------
    ValueError
        If the string is not a device name, names an unsupported backend, or
        names a backend (or a CUDA index) that this machine does not have.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        dev = _auto_device()
    elif isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip().lower())
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from exc
    else:
        raise ValueError(
            f"device must be a string, a torch.device or None, got {type(device).__name__}"
        )

    if dev.type not in _SUPPORTED_TYPES:
        raise ValueError(
            f"unsupported device type {dev.type!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(dev)!r} was requested but CUDA is not available on this machine "
                "(use device='auto' or 'cpu')"
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if not 0 <= index < count:
            raise ValueError(
                f"device {str(dev)!r} does not exist: this machine has {count} CUDA device(s)"
            )
        dev = torch.device("cuda", index)
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device {str(dev)!r} was requested but MPS is not available on this machine "
            "(use device='auto' or 'cpu')"
        )
    return dev


def autocast_dtype(
    device: torch.device, dtype: Literal["auto", "bf16", "fp16"] | torch.dtype | None = "auto"
) -> torch.dtype | None:
    """The reduced precision used by :func:`autocast_context`, or None for float32.

    Parameters
    ----------
    device : torch.device
        Device the network runs on.
    dtype : {"auto", "bf16", "fp16"}, torch.dtype or None
        ``"auto"``: bfloat16 on a CUDA device that supports it, else float16.
        ``None``: no mixed precision.

    Returns
    -------
    torch.dtype or None
        None on the CPU and MPS, or when ``dtype`` is None.
    """
    if dtype is None or device.type != "cuda":
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"autocast dtype must be float16 or bfloat16, got {dtype}")
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype in names:
        return names[dtype]
    raise ValueError(f"unknown autocast dtype {dtype!r}: use 'auto', 'bf16', 'fp16' or None")


@contextlib.contextmanager
def autocast_context(
    device: torch.device, dtype: Literal["auto", "bf16", "fp16"] | torch.dtype | None = "auto"
) -> Iterator[None]:
    """Context manager running the enclosed forward passes in mixed precision.

    Parameters
    ----------
    device : torch.device
        Device the network runs on; only CUDA gets mixed precision.
    dtype : {"auto", "bf16", "fp16"}, torch.dtype or None
        See :func:`autocast_dtype`.

    Yields
    ------
    None
        Inside the block, CUDA matrix products and convolutions run in the
        reduced precision; on other devices nothing changes.
    """
    chosen = autocast_dtype(device, dtype)
    if chosen is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=chosen):
        yield


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports that a device ran out of memory.

    Parameters
    ----------
    exc : BaseException
        The exception raised by a forward pass.

    Returns
    -------
    bool
        True for ``torch.OutOfMemoryError`` (CUDA), ``MemoryError`` and the
        ``RuntimeError`` messages of the MPS, CPU, cuBLAS and cuDNN
        allocators.
    """
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", None
    )
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(fragment in message for fragment in _OOM_MESSAGES)
    return False

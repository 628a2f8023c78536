"""The per-block work of the 4D-STEM engine: ``process(block) -> block``.

A *block* is a ``(rows, columns, det_y, det_x)`` piece of the scan. The
network runs on its diffraction patterns in batches under
``torch.inference_mode``: each pattern is padded at the bottom and right to a
multiple of the network's ``size_multiple`` (reflect padding, edge
replication when the pattern is too small to reflect), restored, and cropped
back. Everything stays float32 in detector counts.

:func:`run_block` wraps :func:`process_block` with what an executor needs:
reading and checking the block (NaN/inf refused, integer counts converted),
loading a named model once per process (dask workers reuse it), and writing
the result into the output store when there is one. Both are module-level
functions so that ``dask.distributed`` can ship them to worker processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BlockJob", "process_block", "run_block"]


@dataclass
class BlockJob:
    """What every block needs to run the network; picklable for dask workers.

    Attributes
    ----------
    model : str or torch.nn.Module
        A registry name or a ``.safetensors`` path (loaded once per process),
        or the network itself.
    device : str or None
        Torch device name; None: the module's own device, or automatic.
    batch_size : int
        Patterns per forward pass (halved on out-of-memory errors).
    torch_threads : int or None
        Torch CPU threads to use in the process running the block (set by
        the CLI for single-threaded dask workers); None leaves them alone.
    amp : bool
        Mixed precision on CUDA.
    onnx_path : str or None
        Run the network in ONNX Runtime from this exported graph (CPU) instead
        of torch; the module still gives the ``size_multiple``.
    local_counts_sigma : float or None
        Width (detector pixels) of :func:`restore_local_counts`; None: off.
    local_counts_passes : int
        Its number of passes.
    """

    model: Any
    device: str | None
    batch_size: int
    torch_threads: int | None = None
    amp: bool = False
    onnx_path: str | None = None
    local_counts_sigma: float | None = None
    local_counts_passes: int = 1

    def resolve(self) -> tuple[Any, Any]:
        """The network (in eval mode) and the torch device it runs on."""
        import torch

        from .device import resolve_device
        from .predictor import _module_device

        if isinstance(self.model, torch.nn.Module):
            module = self.model
            if self.device is None:
                current = _module_device(module)
                dev = resolve_device(current) if current is not None else resolve_device(None)
            else:
                dev = resolve_device(self.device)
                if _module_device(module) not in (None, dev):
                    module = module.to(dev)
            if module.training:
                module.eval()
            return module, dev
        dev = resolve_device(self.device)
        from ..models.registry import _resolve_weights

        weights = _resolve_weights(str(self.model), None)
        stamp = weights.stat().st_mtime_ns
        return cached_model(str(self.model), str(weights), stamp, str(dev)), dev


@functools.lru_cache(maxsize=4)
def cached_model(name: str, weights: str, stamp: int, device: str) -> Any:
    """One loaded copy of a diffraction model per process, weights file and device.

    ``weights`` and its modification time ``stamp`` are part of the key, so a
    model re-installed under the same name is loaded afresh.
    """
    from ..models.registry import load_model

    module, card = load_model(weights, device=device)
    if card.modality != "diffraction":
        raise ValueError(
            f"model {name!r} restores {card.modality} images, not diffraction patterns; "
            "use a 4D-STEM model such as 'pix2pix-4dstem'"
        )
    module.eval()
    return module


def size_multiple(module: Any) -> int:
    """What pattern heights and widths must be multiples of for ``module``."""
    from .predictor import infer_size_multiple

    return infer_size_multiple(module)


def check_block(block: object, where: str) -> np.ndarray:
    """``block`` as a float32 array in counts; NaN, inf and non-numeric data refused.

    Parameters
    ----------
    block : array_like
        ``(rows, columns, det_y, det_x)`` counts, any integer or float dtype.
    where : str
        Position of the block in the scan, for error messages.

    Returns
    -------
    numpy.ndarray
        C-contiguous float32 copy (or the array itself when it already is one).

    Raises
    ------
    ValueError
        For non-numeric data, NaN or infinite counts, or counts beyond the
        float32 range.
    """
    values = np.asarray(block)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"4D-STEM data must be numeric counts, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            n_bad = int(values.size - np.count_nonzero(finite))
            raise ValueError(
                f"the diffraction patterns at scan {where} contain {n_bad} NaN or infinite "
                "value(s); replace them first (e.g. numpy.nan_to_num, or mask dead pixels "
                "with 0) so they are not mistaken for counts"
            )
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(values, dtype=np.float32)
    if values.dtype.kind == "f" and values.dtype.itemsize > 4 and not np.isfinite(out).all():
        raise ValueError(
            f"the counts at scan {where} exceed the float32 range (about 3.4e38); rescale them"
        )
    return out


def process_block(
    block: np.ndarray,
    module: Any,
    device: Any,
    batch_size: int,
    *,
    multiple: int = 1,
    amp: bool = False,
    cancel: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
    session: Any = None,
    local_counts_sigma: float | None = None,
    local_counts_passes: int = 1,
) -> np.ndarray:
    """Restore every diffraction pattern of one block with the network.

    Parameters
    ----------
    block : numpy.ndarray
        ``(rows, columns, det_y, det_x)`` float32 counts, finite.
    module : torch.nn.Module
        Network mapping ``(N, 1, H, W)`` counts to counts, in eval mode.
    device : torch.device
        Where it runs.
    batch_size : int
        Patterns per forward pass; halved (down to 1) on out-of-memory errors.
    multiple : int
        The network's ``size_multiple``: patterns are padded at the bottom
        and right to multiples of it (reflect, or edge when the padding
        exceeds the pattern) and cropped back afterwards.
    amp : bool
        Mixed precision on CUDA (float32 elsewhere).
    cancel : callable, optional
        Polled before every batch; True raises
        :class:`~napari_emdenoise.engine.predictor.Cancelled`.
    on_batch : callable, optional
        Called with the number of patterns of every finished batch.
    session : onnxruntime.InferenceSession, optional
        Run the batches through this session (exported for the padded
        pattern size) instead of ``module``.
    local_counts_sigma : float or None
        Width (detector pixels) of :func:`restore_local_counts` applied to
        the block's output; None: off.
    local_counts_passes : int
        Its number of passes.

    Returns
    -------
    numpy.ndarray
        Float32 restored counts of the block's shape.

    Raises
    ------
    ValueError
        If the network returns a tensor of another shape.
    MemoryError
        If even one pattern does not fit on the device.
    """
    import torch
    import torch.nn.functional as F

    from .device import autocast_context, is_oom_error
    from .predictor import Cancelled, _module_dtype

    shape = block.shape
    det_y, det_x = int(shape[-2]), int(shape[-1])
    flat = block.reshape(-1, det_y, det_x)
    n = flat.shape[0]
    out = np.empty(flat.shape, dtype=np.float32)
    pad_y = -det_y % multiple
    pad_x = -det_x % multiple
    mode = "reflect" if pad_y < det_y and pad_x < det_x else "replicate"
    size = max(1, int(batch_size))
    keep_totals = bool(pad_y or pad_x) and bool(getattr(module, "keeps_total_counts", False))

    def finish() -> np.ndarray:
        result = _with_input_totals(flat, out, keep_totals)
        if local_counts_sigma:
            result = restore_local_counts(flat, result, local_counts_sigma, local_counts_passes)
        return result.reshape(shape)

    if session is not None:
        _process_onnx(flat, out, session, size, (pad_y, pad_x), cancel, on_batch)
        return finish()
    dtype = _module_dtype(module)
    start = 0
    with torch.inference_mode(), autocast_context(device, "auto" if amp else None):
        while start < n:
            if cancel is not None and cancel():
                raise Cancelled("4D-STEM restoration cancelled")
            stop = min(n, start + size)
            x = torch.from_numpy(flat[start:stop]).to(device, dtype=dtype)[:, None]
            if pad_y or pad_x:
                x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
            try:
                y = module(x)
            except Exception as exc:
                if not is_oom_error(exc) or size == 1:
                    if is_oom_error(exc):
                        raise MemoryError(
                            f"out of memory on {device} with a single {det_y}×{det_x} pattern"
                        ) from exc
                    raise
                size = max(1, size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(
                    f"the model must return a tensor of its input's shape {tuple(x.shape)}, "
                    f"got {got}"
                )
            out[start:stop] = y[:, 0, :det_y, :det_x].float().cpu().numpy()
            if on_batch is not None:
                on_batch(stop - start)
            start = stop
    return finish()


def restore_local_counts(
    raw: np.ndarray, denoised: np.ndarray, sigma: float, passes: int = 1
) -> np.ndarray:
    """Give each denoised pattern the raw pattern's counts at scales above ``sigma``.

    ``passes`` times ``out ← out + G_σ * (raw − out)`` starting from the
    network's pattern, then clipped at 0 and rescaled to the raw total, per
    pattern (``G_σ``: a Gaussian of ``sigma`` detector pixels, zero outside
    the detector). In Fourier space the raw pattern is put back with the
    weight ``1 − (1 − Ĝ_σ)^passes``: the network keeps what it resolves at
    fine scales (the denoised texture), the measured counts are kept at
    coarse scales, so counts summed over a Bragg disk or a virtual detector
    a few ``sigma`` wide are the raw data's, not the network's (which dims
    weak disks). More passes make the cut between the two sharper: less of
    a dimmed disk's deficit leaks past its edge, and less raw noise comes
    back at the fine scales. One pass of 1 px (the default before this
    release) took the bundled model's disk-intensity bias on abTEM SrTiO₃
    nano-beam patterns from −33…−4 % to −1.4…+0.7 %; three passes of 2 px
    (the default now, chosen with ``benchmarks/stem4d_quality.py``'s data,
    see docs/stem4d.md) keep the disk-intensity error at the raw data's
    (below it, or at most 0.2 % above on data sets that played no part in
    the choice) and, followed by the neighbour pooling, gain 0.4–1.7 dB of
    Anscombe PSNR over one pass of 1 px.

    Parameters
    ----------
    raw, denoised : numpy.ndarray
        ``(n, det_y, det_x)`` float32 counts.
    sigma : float
        Gaussian width, detector pixels (> 0).
    passes : int
        Number of passes (≥ 1).

    Returns
    -------
    numpy.ndarray
        The corrected ``denoised`` (modified in place and returned).
    """
    from scipy import ndimage

    for _ in range(max(1, int(passes))):
        denoised += ndimage.gaussian_filter(
            raw - denoised, (0, float(sigma), float(sigma)), mode="constant"
        )
    np.maximum(denoised, 0.0, out=denoised)
    return _with_input_totals(raw, denoised, True)


def _with_input_totals(flat: np.ndarray, out: np.ndarray, keep: bool) -> np.ndarray:
    """Rescale each cropped pattern of ``out`` to its input's total counts when ``keep``.

    A count-keeping network (``keeps_total_counts``) keeps the total of the
    *padded* pattern; the padding's share moves into the crop, measured up to
    4 % on 48×80 patterns padded to 64×128. Rescaling the crop restores the
    input's total exactly, which is what such a network promises.
    """
    if not keep:
        return out
    want = flat.reshape(len(flat), -1).sum(axis=1, dtype=np.float64)
    got = out.reshape(len(out), -1).sum(axis=1, dtype=np.float64)
    scale = np.divide(want, got, out=np.ones_like(want), where=got > 0)
    out *= scale.astype(np.float32)[:, None, None]
    return out


def _process_onnx(
    flat: np.ndarray,
    out: np.ndarray,
    session: Any,
    size: int,
    pad: tuple[int, int],
    cancel: Callable[[], bool] | None,
    on_batch: Callable[[int], None] | None,
) -> np.ndarray:
    """The ONNX Runtime loop of :func:`process_block` (same padding, same batches)."""
    from .predictor import Cancelled

    n, det_y, det_x = flat.shape
    mode = "reflect" if pad[0] < det_y and pad[1] < det_x else "edge"
    for start in range(0, n, size):
        if cancel is not None and cancel():
            raise Cancelled("4D-STEM restoration cancelled")
        x = flat[start : start + size, None]
        if pad[0] or pad[1]:
            x = np.pad(x, ((0, 0), (0, 0), (0, pad[0]), (0, pad[1])), mode=mode)
        y = session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
        if y.shape != x.shape:
            raise ValueError(f"the model must return its input's shape {x.shape}, got {y.shape}")
        out[start : start + len(x)] = y[:, 0, :det_y, :det_x]
        if on_batch is not None:
            on_batch(len(x))
    return out


def run_block(
    block: object,
    job: BlockJob,
    *,
    where: str = "",
    sink: Any = None,
    sink_index: tuple[slice, ...] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray | None:
    """Check, restore and (optionally) store one block: the task every executor runs.

    Parameters
    ----------
    block : array_like
        ``(rows, columns, det_y, det_x)`` counts as read from the input.
    job : BlockJob
        Model, device and batch size.
    where : str
        Position of the block in the scan (for error messages).
    sink : zarr.Array, optional
        Output store; the restored block is written to ``sink[sink_index]``.
    sink_index : tuple of slice, optional
        Where the block goes in ``sink``.
    cancel, on_batch
        As for :func:`process_block`.

    Returns
    -------
    numpy.ndarray or None
        The restored float32 block, or None when it was written to ``sink``.
    """
    values = check_block(block, where)
    if job.torch_threads is not None:
        import torch

        if torch.get_num_threads() != job.torch_threads:
            torch.set_num_threads(job.torch_threads)
    module, dev = job.resolve()
    session = None
    if job.onnx_path is not None:
        import torch

        from ._stack4d_onnx import session as onnx_session

        session = onnx_session(job.onnx_path, job.torch_threads or torch.get_num_threads())
    restored = process_block(
        values,
        module,
        dev,
        job.batch_size,
        multiple=size_multiple(module),
        amp=job.amp,
        cancel=cancel,
        on_batch=on_batch,
        session=session,
        local_counts_sigma=job.local_counts_sigma,
        local_counts_passes=job.local_counts_passes,
    )
    if sink is None:
        return restored
    sink[sink_index] = restored
    return None

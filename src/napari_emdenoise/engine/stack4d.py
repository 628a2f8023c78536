"""Denoise 4D-STEM datasets pattern by pattern, chunk by chunk, resumably.

:func:`restore_4dstem` runs a diffraction-pattern denoiser (by default the
bundled Pix2Pix model after Cao, Demortière, Folastre, Oney, Das and
Nicolopoulos, "Denoising of 4D-STEM Dataset using Pix2Pix GAN Algorithm and
Artifact Reduction Strategy", 2024 conference abstract, no preprint known) over a
``(scan_y, scan_x, det_y, det_x)`` dataset in detector counts. It follows the
LiberTEM "UDF" shape: one small per-block function,
:func:`~._stack4d_block.process_block` (pad each pattern to the network's
``size_multiple``, run batches under ``torch.inference_mode``, crop back, keep
float32), and interchangeable executors (:mod:`._stack4d_exec`): inline, a
thread pool, or dask (its threads or a ``dask.distributed`` cluster). The
driver here cuts the scan into blocks, hands them to the executor and merges
the results (into memory, or by recording blocks written to a zarr store).
A last stage (:mod:`._stack4d_neighbours`, on by default) then puts back the
residuals that neighbouring scan positions share
(:mod:`.neighbour_residuals`), in bands of scan rows.

Memory budget
-------------
The scan is cut into blocks of whole scan rows (or, when one row is larger
than the budget, pieces of a row) of at most ``max_block_bytes`` as float32
(default 64 MiB: 4096 patterns of 64², 1024 of 128²). A block in flight
needs about three times its size (the input as read, its float32 copy and the
restored block) plus the network's activations for one batch; at most
``workers`` blocks are in flight (1 inline). Input chunks are read per block;
a dask input whose own chunks are much larger than a block is read a chunk at
a time by dask, so keep its chunks near the block size. Only ``out=None``
holds the whole result in memory (float32, the region's size); pass a zarr
path for datasets larger than memory.

Resuming
--------
With ``out=`` a zarr store path, each block is written to the store and then
recorded as done in the store's attributes (:mod:`._stack4d_store`). Running
the same call again skips the blocks already done, so an interrupted,
cancelled or failed run continues where it stopped. The neighbour stage
records its chosen correction and the rows it has corrected in the same
record; a resumed stage restores the rows it may have half written (at most
16 bands, :mod:`._stack4d_neighbours`) with the network again and continues.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._stack4d_block import BlockJob, run_block
from ._stack4d_exec import BlockTask, make_executor
from ._stack4d_store import OutputStore, open_output

__all__ = ["BACKENDS", "DEFAULT_BLOCK_BYTES", "MIN_PATTERN_SIZE", "plan_blocks", "restore_4dstem"]

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]

#: Default largest block (float32 bytes) processed at once.
DEFAULT_BLOCK_BYTES = 64 * 2**20
#: Smallest diffraction pattern side accepted, in pixels.
MIN_PATTERN_SIZE = 8
#: Pixels per forward pass used to choose the default batch size (CPU, GPU).
_BATCH_PIXELS = {"cpu": 64 * 64 * 16, "cuda": 64 * 64 * 1024, "mps": 64 * 64 * 256}


# --------------------------------------------------------------------------- validation


def _describe_ndim(shape: tuple[int, ...]) -> str:
    ndim = len(shape)
    if ndim == 3:
        return (
            f"got a 3-D array of shape {shape}: that is an image stack (frames, y, x), not "
            "4D-STEM data; restore it with napari_emdenoise.engine.restore, or reshape a "
            "flattened scan to (scan_y, scan_x, det_y, det_x)"
        )
    if ndim == 5:
        return (
            f"got a 5-D array of shape {shape}: restore_4dstem takes one scan; for a time "
            "series or tilt series of 4D-STEM scans, call it once per scan"
        )
    return f"got a {ndim}-D array of shape {shape}"


def _as_array_like(data: object) -> Any:
    """numpy, memory maps, dask and zarr arrays pass through; the rest becomes numpy."""
    from .._validation import tensor_to_numpy

    data = tensor_to_numpy(data)
    if all(hasattr(data, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
        return data
    try:
        return np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"4D-STEM data cannot be read as a numeric array: {exc}") from exc


def _check_data(data: Any) -> tuple[tuple[int, int, int, int], np.dtype]:
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        raise ValueError(
            "4D-STEM data must be 4-D (scan_y, scan_x, det_y, det_x) detector counts; "
            + _describe_ndim(shape)
        )
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"4D-STEM data must be numeric counts, got dtype {dtype}")
    if 0 in shape:
        raise ValueError(f"4D-STEM data are empty (shape {shape})")
    if min(shape[2:]) < MIN_PATTERN_SIZE:
        raise ValueError(
            f"the diffraction patterns are {shape[2]}×{shape[3]} pixels; the denoiser needs at "
            f"least {MIN_PATTERN_SIZE}×{MIN_PATTERN_SIZE} (is the axis order (scan_y, scan_x, "
            "det_y, det_x)?)"
        )
    return shape, dtype  # type: ignore[return-value]


def _parse_region(region: object, scan: tuple[int, int]) -> tuple[slice, slice]:
    """``(slice_y, slice_x)`` with explicit bounds inside the scan."""
    if region is None:
        return slice(0, scan[0]), slice(0, scan[1])
    if isinstance(region, str):
        region = parse_region_text(region)
    if not isinstance(region, (tuple, list)) or len(region) != 2:
        raise ValueError(
            f"region must be (slice_y, slice_x) over the scan, or None, got {region!r}"
        )
    out = []
    for axis, (item, n) in enumerate(zip(region, scan, strict=True)):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = slice(*item)
        if not isinstance(item, slice):
            raise ValueError(
                f"region[{axis}] must be a slice or a (start, stop) pair, got {item!r}"
            )
        if item.step not in (None, 1):
            raise ValueError(f"region[{axis}] must have step 1, got {item.step}")
        start, stop, _ = item.indices(n)
        if stop <= start:
            raise ValueError(
                f"region[{axis}] = {item.start}:{item.stop} selects no scan position "
                f"(the scan has {n} along this axis)"
            )
        out.append(slice(start, stop))
    return out[0], out[1]


def parse_region_text(text: str) -> tuple[slice, slice]:
    """Parse ``"y0:y1,x0:x1"`` (scan positions; either bound may be empty).

    Raises
    ------
    ValueError
        If the text is not two comma-separated ``start:stop`` ranges of integers.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise ValueError(f"region must look like y0:y1,x0:x1, got {text!r}")
    slices = []
    for part in parts:
        bounds = part.split(":")
        if len(bounds) != 2:
            raise ValueError(f"region must look like y0:y1,x0:x1, got {text!r}")
        try:
            values = [int(b) if b.strip() else None for b in bounds]
        except ValueError:
            raise ValueError(f"region bounds must be integers, got {text!r}") from None
        slices.append(slice(*values))
    return slices[0], slices[1]


def _check_finite_eagerly(data: np.ndarray, rows_per_pass: int) -> None:
    """Refuse NaN/inf in an in-memory array before anything is computed or written."""
    if data.dtype.kind != "f":
        return
    for start in range(0, data.shape[0], rows_per_pass):
        part = data[start : start + rows_per_pass]
        if not np.isfinite(part).all():
            bad = np.argwhere(~np.isfinite(part).all(axis=(2, 3)))[0]
            n_bad = int(part.size - np.count_nonzero(np.isfinite(part)))
            raise ValueError(
                f"the 4D-STEM data contain NaN or infinite values ({n_bad} in scan rows "
                f"{start}–{start + part.shape[0] - 1}, first at scan position "
                f"({start + int(bad[0])}, {int(bad[1])})); replace them first (e.g. "
                "numpy.nan_to_num, or mask dead pixels with 0)"
            )


# --------------------------------------------------------------------------- blocks


def plan_blocks(
    region_shape: tuple[int, int], pattern_shape: tuple[int, int], max_block_bytes: int
) -> tuple[int, int]:
    """Scan rows and columns per block so that a float32 block fits ``max_block_bytes``.

    Parameters
    ----------
    region_shape : tuple of int
        ``(scan_y, scan_x)`` positions to process.
    pattern_shape : tuple of int
        ``(det_y, det_x)`` pixels.
    max_block_bytes : int
        Largest float32 block, in bytes.

    Returns
    -------
    tuple of int
        ``(rows, columns)``: whole scan rows when a row fits, else one row cut
        into pieces of ``columns`` positions.

    Raises
    ------
    ValueError
        If one pattern alone exceeds ``max_block_bytes``.
    """
    pattern_bytes = 4 * pattern_shape[0] * pattern_shape[1]
    per_block = int(max_block_bytes) // pattern_bytes
    if per_block < 1:
        raise ValueError(
            f"max_block_bytes={max_block_bytes} is smaller than one {pattern_shape[0]}×"
            f"{pattern_shape[1]} float32 pattern ({pattern_bytes} bytes)"
        )
    rows, cols = region_shape
    if per_block >= cols:
        return max(1, min(rows, per_block // cols)), cols
    return 1, per_block


def _tasks(region: tuple[slice, slice], block: tuple[int, int]) -> list[BlockTask]:
    ry, rx = region
    n_rows, n_cols = ry.stop - ry.start, rx.stop - rx.start
    tasks = []
    index = 0
    for r0 in range(0, n_rows, block[0]):
        r1 = min(n_rows, r0 + block[0])
        for c0 in range(0, n_cols, block[1]):
            c1 = min(n_cols, c0 + block[1])
            tasks.append(
                BlockTask(
                    index=index,
                    rows=slice(r0, r1),
                    cols=slice(c0, c1),
                    in_rows=slice(ry.start + r0, ry.start + r1),
                    in_cols=slice(rx.start + c0, rx.start + c1),
                )
            )
            index += 1
    return tasks


@dataclass
class _Plan:
    """The driver's side of a run: input, job and sink, as executors see them."""

    data: Any
    job: BlockJob
    sink: Any = None  # zarr.Array written by the tasks, or None
    lazy: bool = False  # a dask array: read on the workers
    _reads: threading.Lock = field(default_factory=threading.Lock)

    def read(self, task: BlockTask) -> np.ndarray:
        piece = self.data[task.in_rows, task.in_cols]
        if hasattr(piece, "compute"):
            piece = piece.compute()
        return np.asarray(piece)

    def local(self, task, cancel, on_batch):
        return run_block(
            self.read(task),
            self.job,
            where=task.where,
            sink=self.sink,
            sink_index=(task.rows, task.cols),
            cancel=cancel,
            on_batch=on_batch,
        )

    def delayed(self, task, job):
        import dask

        piece = self.data[task.in_rows, task.in_cols] if self.lazy else self.read(task)
        return dask.delayed(run_block, pure=False)(
            piece,
            job,
            where=task.where,
            sink=self.sink,
            sink_index=(task.rows, task.cols),
        )


# --------------------------------------------------------------------------- model


def _model_identity(model: object) -> str:
    """What the completion record remembers about the model (name, path or weight hash)."""
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        looks_like_path = "/" in text or os.sep in text or text.endswith(".safetensors")
        return str(Path(text).resolve()) if looks_like_path else text
    from .onnx_backend import model_key

    try:
        return f"{type(model).__name__}:{model_key(model)}"  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a module whose state cannot be hashed
        return type(model).__name__


def _resolve_job(
    model: object, device: object, batch_size: object, amp: bool, torch_threads: int | None
) -> tuple[BlockJob, Any, Any]:
    import torch

    from .predictor import _is_int

    if batch_size is not None and (not _is_int(batch_size) or int(batch_size) < 1):  # type: ignore[call-overload]
        raise ValueError(f"batch_size must be an int >= 1 (patterns per pass), got {batch_size!r}")
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, (str, torch.nn.Module)):
        raise ValueError(
            "model must be a model name, a .safetensors path or a torch.nn.Module, got "
            f"{type(model).__name__}"
        )
    device_name = None if device is None else str(device)
    job = BlockJob(
        model=model, device=device_name, batch_size=1, torch_threads=torch_threads, amp=amp
    )
    module, dev = job.resolve()  # loads a named model here: bad names fail before any work
    if batch_size is None:
        batch_size = 1
    job.batch_size = int(batch_size)  # type: ignore[arg-type]
    return job, module, dev


def _default_batch(dev: Any, pattern_shape: tuple[int, int], multiple: int) -> int:
    padded = [-(-s // multiple) * multiple for s in pattern_shape]
    pixels = _BATCH_PIXELS.get(dev.type, _BATCH_PIXELS["cpu"])
    return max(1, pixels // (padded[0] * padded[1]))


BACKENDS = ("auto", "torch", "onnxruntime")
#: Fewest patterns for which ``backend="auto"`` exports a network not yet cached.
_AUTO_EXPORT_MIN_PATTERNS = 8192


def _choose_backend(
    job: BlockJob, module: Any, dev: Any, backend: str, pattern: tuple[int, int], n: int
) -> None:
    """Set ``job.onnx_path`` when the network runs in ONNX Runtime (exported here, once)."""
    import logging

    from ._stack4d_block import size_multiple

    if backend == "torch":
        return
    if dev.type != "cpu":
        if backend == "onnxruntime":
            raise ValueError(f'backend="onnxruntime" runs on the CPU only, not on {dev}')
        return
    from . import _stack4d_onnx
    from .onnx_backend import onnxruntime_available

    if backend == "auto" and not onnxruntime_available():
        return
    m = size_multiple(module)
    padded = (-(-pattern[0] // m) * m, -(-pattern[1] // m) * m)
    if backend == "auto":
        try:
            wanted = (
                n >= _AUTO_EXPORT_MIN_PATTERNS
                or _stack4d_onnx.cached_file(module, padded).is_file()
            )
        except Exception:  # noqa: BLE001 - weights that cannot be hashed
            wanted = False
        if not wanted:
            return
    try:
        job.onnx_path = str(_stack4d_onnx.export_patterns(module, padded))
    except (ImportError, RuntimeError) as exc:
        if backend == "onnxruntime":
            raise
        logging.getLogger(__name__).info("ONNX Runtime not used, running torch: %s", exc)


# --------------------------------------------------------------------------- calibration


def _calibration(
    calibration: Mapping[str, Any] | None, data: Any, region: tuple[slice, slice]
) -> dict[str, Any]:
    """Per-axis calibration (read_em format) of the output: region offset added."""
    from ..io.readers import CALIBRATION_KEY
    from ..io.writers import calibration_from_metadata

    if calibration is None:
        attrs = getattr(data, "attrs", None)
        saved = attrs.get(CALIBRATION_KEY) if attrs is not None else None
        calibration = saved if isinstance(saved, Mapping) else None
    meta: dict[str, Any]
    if calibration is None:
        meta = {}
    elif "scan_step" in calibration or "detector_step" in calibration:
        scan = float(calibration.get("scan_step", 1.0))
        det = float(calibration.get("detector_step", 1.0))
        su = calibration.get("scan_units", "Å" if "scan_step" in calibration else "pixel")
        du = calibration.get(
            "detector_units", "mrad" if "detector_step" in calibration else "pixel"
        )
        meta = {
            "scale": [scan, scan, det, det],
            "units": [su, su, du, du],
            "axis_names": ["scan_y", "scan_x", "det_y", "det_x"],
            "name": calibration.get("name", ""),
        }
    else:
        meta = dict(calibration)
    calib = calibration_from_metadata(4, meta)
    if not any(calib["axis_names"]):
        calib["axis_names"] = ["scan_y", "scan_x", "det_y", "det_x"]
    for axis in (0, 1):
        calib["translate"][axis] += region[axis].start * calib["scale"][axis]
    return calib


def _input_path(data: Any) -> str | None:
    store = getattr(data, "store", None)
    root = getattr(store, "root", None)
    return None if root is None else os.fspath(root)


# --------------------------------------------------------------------------- public API


#: Default width (detector pixels) and number of passes of the local-count
#: correction of :func:`restore_4dstem` (see
#: :func:`~._stack4d_block.restore_local_counts`; chosen in docs/stem4d.md).
LOCAL_COUNTS_SIGMA = 2.0
LOCAL_COUNTS_PASSES = 3


def restore_4dstem(
    data: object,
    model: object = "pix2pix-4dstem",
    device: object = None,
    batch_size: int | None = None,
    out: object = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    region: object = None,
    executor: object = "inline",
    *,
    workers: int | None = None,
    max_block_bytes: int | None = None,
    calibration: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    amp: bool = False,
    torch_threads: int | None = None,
    backend: str = "auto",
    local_counts_sigma: float | None = LOCAL_COUNTS_SIGMA,
    local_counts_passes: int = LOCAL_COUNTS_PASSES,
    neighbour_residuals: bool = True,
    report: Callable[[Any], None] | None = None,
) -> Any:
    """Denoise every diffraction pattern of a 4D-STEM dataset.

    Parameters
    ----------
    data : array_like
        ``(scan_y, scan_x, det_y, det_x)`` detector counts, any integer or
        float dtype, finite; patterns at least 8×8 pixels. numpy arrays,
        memory maps, dask and zarr arrays (and torch tensors) are accepted;
        lazy inputs are read block by block, never as a whole.
    model : str, pathlib.Path or torch.nn.Module
        A registry name (default the bundled ``"pix2pix-4dstem"``; its card
        must say modality ``"diffraction"``), a ``.safetensors`` path, or a
        network mapping ``(N, 1, H, W)`` counts to counts with an int
        ``size_multiple`` attribute (or one inferred from its strides).
    device : str, torch.device or None
        Where the network runs; None: the module's device, or CUDA, MPS, CPU.
    batch_size : int, optional
        Patterns per forward pass; default 16 patterns of 64² on the CPU
        (pixels per pass kept constant for other sizes), 1024 on CUDA.
        Halved automatically on out-of-memory errors.
    out : str, pathlib.Path or zarr.Array, optional
        Write the result to this zarr store (created, or resumed when it
        holds an unfinished run of the same input shape, dtype, region and
        model) and return the zarr array. None: return a numpy array.
    progress : callable, optional
        ``progress(done_patterns, total_patterns)``; blocks a previous run
        finished count as done from the start.
    cancel : callable, optional
        Polled between batches (between blocks on dask); True stops with
        :class:`~napari_emdenoise.engine.predictor.Cancelled`. Blocks
        already written stay recorded, so the run can be resumed.
    region : (slice, slice) or str, optional
        Scan rows and columns to process (``(slice(y0, y1), slice(x0, x1))``
        or ``"y0:y1,x0:x1"``); the output has the region's scan shape and
        its scan-axis translate moves by the region's start. None: the
        whole scan.
    executor : {"inline", "threads", "dask"} or distributed.Client
        How blocks run: one after the other here; on ``workers`` threads; as
        dask tasks (on the running ``distributed`` client if there is one,
        else dask's threads); or on the given cluster. All give the same
        result.
    workers : int, optional
        Threads (``"threads"``) or blocks in flight (dask).
    max_block_bytes : int, optional
        Largest block, as float32 bytes (default 64 MiB); see the module
        notes for the memory budget. A resumed store keeps its block layout.
    calibration : mapping, optional
        Stored in the output store's attributes: either reader metadata
        (``scale``, ``units``, ``translate``, ``axis_names`` per axis, as
        :func:`~napari_emdenoise.io.readers.read_em` returns) or
        ``scan_step`` (Å), ``detector_step`` (mrad), ``scan_units``,
        ``detector_units``. None: taken from a zarr input's attributes, else
        uncalibrated.
    overwrite : bool
        Start afresh in an existing output store made by this function.
    amp : bool
        Mixed precision on CUDA (off by default: counts are summed inside
        the network).
    torch_threads : int, optional
        Torch (and ONNX Runtime) CPU threads in the process running each
        block (e.g. 1 for single-threaded dask workers).
    backend : {"auto", "torch", "onnxruntime"}
        What runs the network. ``"onnxruntime"``: ONNX Runtime on the CPU
        (the network is exported once per weights and padded pattern size
        to the cache folder, see :mod:`._stack4d_onnx`; about 1.6× faster
        than torch for Pix2Pix at 64²). ``"auto"``: ONNX Runtime on the CPU
        when it is installed and either the export is cached or at least
        8192 patterns are to be restored (enough to repay the export), torch
        otherwise; torch on GPUs. Both agree to float32 rounding.
    local_counts_sigma : float or None
        Detector pixels. The raw pattern's counts are put back at scales above
        this width (:func:`~._stack4d_block.restore_local_counts`), so that
        counts integrated over Bragg disks and virtual detectors stay
        unbiased: the bundled network alone dims weak disks by 13–33 % at
        300–1000 counts per pattern. Default 2 px; None or 0 returns the
        network's output as it is (smoother, biased disk intensities).
    local_counts_passes : int
        Passes of that correction (1–16; default 3). More passes cut more
        sharply between the network's fine scales and the raw coarse ones:
        less of a dimmed disk's deficit leaks past its edge.
    neighbour_residuals : bool
        After every pattern is restored, put back the part of ``raw −
        restored`` that the patterns of a scan window share (3×3, 5×5 or the
        whole region), weighted per detector pixel by an unbiased estimate
        of the error it removes; nothing where no window helps
        (:mod:`~.neighbour_residuals`). It takes the network's systematic
        error out of region-averaged patterns (nano-beam diffraction of a
        crystal: +0.8 to +3.4 dB); each pattern keeps its total counts.
        Costs two more passes over the input and the output, in bands of
        scan rows. False: each pattern is restored on its own.
    report : callable, optional
        ``report(correction)`` once the neighbour stage has run: the
        :class:`~.neighbour_residuals.NeighbourCorrection` applied (its
        ``describe()`` is one line for a log), or None when no window was
        estimated to help.

    Returns
    -------
    numpy.ndarray or zarr.Array
        Float32 restored counts of shape ``(region rows, region columns,
        det_y, det_x)``.

    Raises
    ------
    ValueError
        For data that are not 4-D, not numeric, empty, with patterns under
        8×8 pixels, or with NaN/inf counts (checked up front for in-memory
        arrays; for lazy data when each block is read, before it is
        written); a bad region, model, device, batch size or executor; an
        output that is the input or a folder this function did not make.
    Cancelled
        If ``cancel`` returned True.
    """
    data = _as_array_like(data)
    shape, dtype = _check_data(data)
    ry, rx = _parse_region(region, (shape[0], shape[1]))
    region_shape = (ry.stop - ry.start, rx.stop - rx.start)
    pattern = (shape[2], shape[3])
    budget = DEFAULT_BLOCK_BYTES if max_block_bytes is None else int(max_block_bytes)
    block = plan_blocks(region_shape, pattern, budget)
    runner = make_executor(executor, workers)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    in_memory = isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
    if in_memory:
        rows_per_pass = max(1, budget // max(1, 4 * shape[1] * shape[2] * shape[3]))
        _check_finite_eagerly(data[ry, rx], rows_per_pass)

    if local_counts_sigma is not None and not (
        isinstance(local_counts_sigma, (int, float)) and 0 <= local_counts_sigma <= 64
    ):
        raise ValueError(
            f"local_counts_sigma must be None or 0–64 detector pixels, got {local_counts_sigma!r}"
        )
    if isinstance(local_counts_passes, bool) or not (
        isinstance(local_counts_passes, (int, np.integer)) and 1 <= local_counts_passes <= 16
    ):
        raise ValueError(
            f"local_counts_passes must be an integer 1–16, got {local_counts_passes!r}"
        )
    was_training = bool(getattr(model, "training", False))  # put back after the run
    job, module, dev = _resolve_job(model, device, batch_size, amp, torch_threads)
    job.local_counts_sigma = float(local_counts_sigma) if local_counts_sigma else None
    job.local_counts_passes = int(local_counts_passes)
    try:
        return _run(
            data,
            job,
            module,
            dev,
            out,
            progress,
            cancel,
            runner,
            (ry, rx),
            block,
            batch_size=batch_size,
            shape=shape,
            dtype=dtype,
            model=model,
            calibration=calibration,
            overwrite=overwrite,
            backend=backend,
            neighbour_residuals=bool(neighbour_residuals),
            budget=budget,
            report=report,
        )
    finally:
        if was_training:
            module.train(True)


def _run(
    data: Any,
    job: BlockJob,
    module: Any,
    dev: Any,
    out: object,
    progress: ProgressCallback | None,
    cancel: CancelCallback | None,
    runner: Any,
    region: tuple[slice, slice],
    block: tuple[int, int],
    *,
    batch_size: int | None,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    model: object,
    calibration: Mapping[str, Any] | None,
    overwrite: bool,
    backend: str,
    neighbour_residuals: bool,
    budget: int,
    report: Callable[[Any], None] | None = None,
) -> Any:
    """The driver of :func:`restore_4dstem`: open the output, run the blocks, merge."""
    from .._validation import check_fits_in_memory
    from ._stack4d_block import size_multiple

    ry, rx = region
    region_shape = (ry.stop - ry.start, rx.stop - rx.start)
    pattern = (shape[2], shape[3])
    out_shape = (*region_shape, *pattern)
    if batch_size is None:
        job.batch_size = _default_batch(dev, pattern, size_multiple(module))

    store: OutputStore | None = None
    result: np.ndarray | None = None
    if out is None:
        check_fits_in_memory(
            4.0 * math.prod(out_shape),
            f"the restored 4D-STEM data ({'×'.join(map(str, out_shape))} float32)",
            hint="pass out='result.zarr' to write it to disk block by block",
        )
        result = np.empty(out_shape, dtype=np.float32)
    else:
        store = open_output(
            out,
            shape=out_shape,  # type: ignore[arg-type]
            block=block,
            record={
                "input_shape": list(shape),
                "input_dtype": str(dtype),
                "region": [[ry.start, ry.stop], [rx.start, rx.stop]],
                "model": _model_identity(model),
                "local_counts_sigma": job.local_counts_sigma,
                "local_counts_passes": job.local_counts_passes if job.local_counts_sigma else None,
                "neighbour_residuals": neighbour_residuals,
            },
            calibration=_calibration(calibration, data, (ry, rx)),
            raw_calibration=calibration,
            input_path=_input_path(data),
            overwrite=overwrite,
        )
        block = tuple(int(b) for b in store.record["block"])  # type: ignore[assignment]

    tasks = _tasks((ry, rx), block)
    done = store.done if store is not None else set()
    todo = [t for t in tasks if t.index not in done]
    if todo:
        _choose_backend(job, module, dev, backend, pattern, sum(t.n_patterns for t in todo))
    counter = _Progress(
        progress, math.prod(region_shape), sum(t.n_patterns for t in tasks if t.index in done)
    )
    plan = _Plan(
        data=data,
        job=job,
        sink=None if store is None else store.array,
        lazy=hasattr(data, "dask"),
    )
    counter.emit()
    for task, restored in runner.run(todo, plan, cancel, counter.add_partial):
        if result is not None:
            result[task.rows, task.cols] = restored
        if store is not None:
            store.mark_done(task.index)
        counter.block_finished(task.n_patterns)
    if neighbour_residuals:
        correction = _pool_neighbours(plan, region, result, store, budget, cancel)
        if report is not None:
            report(correction)
    if store is not None:
        store.mark_complete()
        return store.array
    return result


def _pool_neighbours(
    plan: _Plan,
    region: tuple[slice, slice],
    result: np.ndarray | None,
    store: OutputStore | None,
    budget: int,
    cancel: CancelCallback | None,
) -> Any:
    """Run the neighbour-residual stage (:mod:`._stack4d_neighbours`); what it applied."""
    from ._stack4d_neighbours import band_rows_for, run_stage

    ry, rx = region
    scan = (ry.stop - ry.start, rx.stop - rx.start)
    pattern = tuple(int(n) for n in plan.data.shape[2:])
    rows_task = lambda a, b: BlockTask(  # noqa: E731
        index=-1,
        rows=slice(a, b),
        cols=slice(0, scan[1]),
        in_rows=slice(ry.start + a, ry.start + b),
        in_cols=rx,
    )
    fresh = _Plan(data=plan.data, job=plan.job, sink=None, lazy=plan.lazy)
    return run_stage(
        lambda a, b: plan.read(rows_task(a, b)),
        lambda a, b: fresh.local(rows_task(a, b), None, None),
        result if result is not None else store.array,  # type: ignore[union-attr]
        store,
        scan,
        pattern,  # type: ignore[arg-type]
        band_rows_for(scan[1], pattern, budget),  # type: ignore[arg-type]
        cancel,
    )


class _Progress:
    """Monotone ``progress(done, total)`` in patterns, fed by blocks and batches."""

    def __init__(self, callback: ProgressCallback | None, total: int, done: int) -> None:
        self.callback = callback
        self.total = total
        self.finished = done
        self.partial = 0
        self.last = -1
        self.lock = threading.Lock()

    def emit(self) -> None:
        with self.lock:
            value = min(self.total, max(self.finished, self.finished + self.partial))
            if value > self.last:
                self.last = value
                if self.callback is not None:
                    self.callback(value, self.total)

    def add_partial(self, n: int) -> None:
        with self.lock:
            self.partial += n
        self.emit()

    def block_finished(self, n: int) -> None:
        with self.lock:
            self.finished += n
            self.partial = max(0, self.partial - n)
        self.emit()

"""Run a restoration network on images of any size, frame by frame and tile by tile.

:class:`TiledPredictor` cuts one 2-D image into overlapping tiles
(:mod:`.tiling`), runs them through the network in batches under
``torch.inference_mode`` (and autocast on CUDA), blends the outputs without
seams and survives out-of-memory errors by halving the batch, then the tile.
:func:`restore` is the one-call entry point used by the widget and the CLI:
it accepts a model name, a checkpoint path or an ``nn.Module``, 2-D images
and ``(frames, y, x)`` stacks (numpy, dask, zarr), and reports progress and
honours a cancel flag. :func:`restore_dask` builds a lazy dask array, one
task per frame, for clusters and results written to zarr.

Intensity normalisation: the CGRDN and DnCNN normalise each input as
``(x − mean) / scale`` with ``scale = max(std, 10⁻⁶·|mean|)`` (relative, so
that ``restore(a·x + b) = a·restore(x) + b`` for any unit). Applied per *tile* this would give every
tile a different contrast; so when the network has a ``normalize`` attribute
that is true, the predictor normalises the whole frame once with the frame's
statistics, switches the network's own normalisation off while the tiles run
(restoring the attribute afterwards) and undoes the normalisation on the
blended output: the result is what the network computes on the whole frame.

Back ends: on the CPU the network can run in ONNX Runtime
(:mod:`.onnx_backend`, 1.5–2× faster than torch on the bundled models);
:func:`restore` picks it automatically when it is installed. Both back ends
share the tiling, normalisation, progress, cancel and out-of-memory handling
here and agree to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import as_float_image, tensor_to_numpy
from ..models._normalization import NORM_REL_FLOOR, normalization_stats
from ..noise.variance import noise_variance_line
from ._frame_pair import frame_pair
from .deviations import restore_deviations
from .device import autocast_context, is_oom_error, resolve_device
from .grid_pattern import MIN_SIDE as GRID_PATTERN_MIN_SIDE
from .grid_pattern import remove_grid_pattern
from .lattice import LATTICE_SHARE_WARNING, lattice_share, restore_lattice
from .safeguard import BlendResult, sure_blend
from .scan_axis import (
    SCANNED_MODALITIES,
    check_fast_scan_axis,
    scan_axis_mismatch,
    scan_rows,
)
from .self_ensemble import check_ensemble, ensemble_transforms, output_shapes
from .tiling import TileBlender, TileGrid, balanced_tile
from .wiener import wiener_refine

__all__ = [
    "BACKENDS",
    "Cancelled",
    "TiledPredictor",
    "infer_size_multiple",
    "restore",
    "restore_dask",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]

#: Largest frame (pixels) run as one tile when ``tile_size`` is None.
# Measured on the 2-core CPU (benchmarks/restore_speed.py, hrstem, 1 thread): a whole
# 1024² frame takes 0.9× the time of 512-px tiles in torch (peak 0.95 GiB) and 0.6× in
# ONNX Runtime (1.8 GiB); a whole 2048² frame is slower than tiles in both (6 GiB in
# ONNX Runtime), so larger frames are tiled.
_WHOLE_IMAGE_BUDGET = {"cuda": 4096 * 4096, "mps": 2048 * 2048, "cpu": 1024 * 1024}
#: Largest tile of the automatic tiling (frames over the whole-image budget).
_AUTO_TILE = 1024
#: Overlap of the automatic tiling. Tiles discard ``overlap // 4`` = 32 px at inner
# edges: measured on the bundled CGRDN (1536² lattice image), the tiled result then
# equals the whole-frame one to float rounding (3.6e-7 of the range); with a 32-px
# overlap it differed by up to 1.1 % (1024-px tiles) to 6.8 % (512-px tiles).
_AUTO_OVERLAP = 128
_DEFAULT_TILE = 512
_DEFAULT_OVERLAP = 32
_MIN_TILE = 16
#: Smallest ``tile_size`` :func:`restore` accepts when the overlap is left at its
#: default: the default overlap on both sides plus the network's own context.
#: Smaller tiles force the overlap towards 0 and give visibly tiled results.
_MIN_USER_TILE = 2 * _DEFAULT_OVERLAP


class Cancelled(Exception):
    """Raised when the ``cancel`` callback of a long call returned True."""


# --------------------------------------------------------------------------- model state


@dataclass
class _SavedState:
    count: int
    training: bool
    normalize: Any  # the original ``normalize`` attribute, or _MISSING


_MISSING = object()
_STATE_LOCK = threading.Lock()
_SAVED: weakref.WeakKeyDictionary[torch.nn.Module, _SavedState] = weakref.WeakKeyDictionary()


@contextmanager
def _inference_state(model: torch.nn.Module) -> Iterator[bool]:
    """Put ``model`` in eval mode with its own normalisation off; restore both on exit.

    Re-entrant and thread safe (dask runs frames in threads on one module):
    the original state is saved by the first user and restored by the last.

    Yields
    ------
    bool
        Whether the network normalises its input itself (its original
        ``normalize`` attribute), i.e. whether the caller must normalise.
    """
    with _STATE_LOCK:
        saved = _SAVED.get(model)
        if saved is None:
            saved = _SavedState(
                count=0, training=model.training, normalize=getattr(model, "normalize", _MISSING)
            )
            _SAVED[model] = saved
            model.eval()
            if saved.normalize is not _MISSING:
                model.normalize = False
        saved.count += 1
    try:
        yield saved.normalize is not _MISSING and bool(saved.normalize)
    finally:
        with _STATE_LOCK:
            saved.count -= 1
            if saved.count == 0:
                del _SAVED[model]
                model.train(saved.training)
                if saved.normalize is not _MISSING:
                    model.normalize = saved.normalize


# --------------------------------------------------------------------------- helpers


def infer_size_multiple(model: torch.nn.Module) -> int:
    """Factor that tile sizes and positions must be multiples of for ``model``.

    A network that downsamples (strided convolutions, pooling) is only
    translation equivariant for shifts that are multiples of its total
    stride, so tiles must start on that grid. The model's own
    ``size_multiple`` attribute wins; otherwise the product of the strides of
    its ``Conv2d``, pooling and pixel-unshuffle layers is used (2 for the
    CGRDN, ``2**depth`` for a U-Net).

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Returns
    -------
    int
        At least 1.
    """
    declared = getattr(model, "size_multiple", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    factor = 1
    for module in model.modules():
        stride: Any = None
        if isinstance(module, torch.nn.Conv2d):
            stride = module.stride
        elif isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            stride = module.stride if module.stride is not None else module.kernel_size
        elif isinstance(module, torch.nn.PixelUnshuffle):
            stride = module.downscale_factor
        if stride is None:
            continue
        values = stride if isinstance(stride, (tuple, list)) else (stride,)
        factor *= max(int(v) for v in values)
    return max(1, factor)


def _module_device(model: torch.nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _module_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _is_int(value: object) -> bool:
    """True for Python/numpy integers, False for bools, floats and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_tiling_args(tile_size: object, overlap: object, batch_size: object) -> None:
    """Refuse ill-typed or too small tiling arguments of :func:`restore` / :func:`restore_dask`.

    Raises
    ------
    ValueError
        If ``tile_size`` is neither None nor a positive int or a pair of them,
        or is smaller than the smallest tile that gives a faithful result
        (:data:`_MIN_USER_TILE` with the default overlap, else the overlap + 1
        and at least 16); if ``overlap`` or ``batch_size`` are not ints in range.
    """
    if overlap is not None and (not _is_int(overlap) or overlap < 0):
        raise ValueError(f"overlap must be an int >= 0 pixels, got {overlap!r}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if tile_size is None:
        return
    tile = _as_pair(tile_size, "tile_size")  # type: ignore[arg-type]
    minimum = _MIN_USER_TILE if overlap is None else max(_MIN_TILE, int(overlap) + 1)
    if min(tile) < minimum:
        why = (
            f"the default {_DEFAULT_OVERLAP}-pixel overlap on both sides"
            if overlap is None
            else f"the network's context and the {overlap}-pixel overlap"
        )
        raise ValueError(
            f"tile_size {tile_size!r} is too small: tiles need at least {minimum} pixels per "
            f"side ({why}), or the result differs visibly from the untiled one; use "
            f"tile_size=None for automatic tiling"
        )


def _as_pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    if _is_int(size):
        pair: tuple[Any, ...] = (size, size)
    elif isinstance(size, (tuple, list)):
        pair = tuple(size)
    else:
        pair = ()
    if len(pair) != 2 or not all(_is_int(s) and s >= 1 for s in pair):
        raise ValueError(f"{name} must be a positive int (pixels) or a pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------- predictor


class TiledPredictor:
    """Run a 1-channel image-to-image network over 2-D images tile by tile.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping ``(B, 1, H, W)`` to ``(B, 1, H, W)``. It is moved to
        ``device``; it is put in eval mode (and its ``normalize`` attribute,
        if any, switched off) only while :meth:`predict` runs.
    device : str, torch.device or None
        Where to run. None: the device the model's parameters are on, or
        :func:`~.device.resolve_device`'s automatic choice for a model
        without parameters.
    tile_size : int or tuple of int
        Tile ``(height, width)`` in pixels (an int for squares). Rounded down
        to a multiple of the model's total stride (:func:`infer_size_multiple`).
        A frame smaller than a tile is run in one piece.
    overlap : int
        Pixels shared by neighbouring tiles (rounded up to the stride). Set it
        to at least the network's effective receptive-field diameter: the
        outer quarter of each overlap is discarded and the middle half
        cross-faded, which is exact for a receptive-field radius up to
        ``overlap // 4``.
    batch_size : int
        Tiles per forward pass.
    amp : bool
        Mixed precision (bfloat16, or float16 where unsupported) on CUDA.

    Notes
    -----
    Frames whose size is not a multiple of the stride are reflect-padded at
    the bottom and right before tiling and cropped afterwards, as the
    networks themselves do. On an out-of-memory error the batch size is
    halved, then (at batch size 1) the tile size, and the pass retried; the
    reduced sizes are kept for the following calls.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device | None = None,
        tile_size: int | tuple[int, int] = _DEFAULT_TILE,
        overlap: int = _DEFAULT_OVERLAP,
        batch_size: int = 4,
        amp: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        tile = _as_pair(tile_size, "tile_size")
        if not _is_int(overlap) or overlap < 0:
            raise ValueError(f"overlap must be an int >= 0 pixels, got {overlap!r}")
        if overlap >= min(tile):
            raise ValueError(f"overlap ({overlap} px) must be smaller than the tile {tile}")
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if device is None:
            current = _module_device(model)
            self.device = resolve_device(current) if current is not None else resolve_device(None)
        else:
            self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tile_size = tile
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.size_multiple = infer_size_multiple(model)
        self._channels_last: torch.nn.Module | None = None

    # ------------------------------------------------------------------ geometry

    def _padded_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m = self.size_multiple
        return _round_up(shape[0], m), _round_up(shape[1], m)

    def grid_for(self, shape: tuple[int, int]) -> TileGrid:
        """The tiling used for a frame of ``shape`` (after padding to the stride).

        Parameters
        ----------
        shape : tuple of int
            ``(height, width)`` of the frame, in pixels.

        Returns
        -------
        TileGrid
            Grid over the padded frame.
        """
        m = self.size_multiple
        padded = self._padded_shape(shape)
        # An axis no longer than the tile (both rounded up to the stride) is one
        # piece, the padded length, whether ``shape`` is the frame or the padded
        # frame; otherwise tiles and strides sit on the network's stride grid.
        tile = tuple(
            p if _round_up(t, m) >= p else max(m, (t // m) * m)
            for t, p in zip(self.tile_size, padded, strict=True)
        )
        overlap = _round_up(self.overlap, m) if self.overlap else 0
        needs_tiles = [t < p for t, p in zip(tile, padded, strict=True)]
        limit = min((t for t, need in zip(tile, needs_tiles, strict=True) if need), default=None)
        if limit is not None and overlap >= limit:
            overlap = max(0, limit - m)
        return TileGrid(padded, tile, overlap)

    def count_tiles(self, shape: tuple[int, int]) -> int:
        """Number of tiles (network inputs) for a frame of ``shape``."""
        return len(self.grid_for(shape))

    # ------------------------------------------------------------------ running

    def predict(
        self,
        image2d: object,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> np.ndarray:
        """Restore one 2-D image.

        Parameters
        ----------
        image2d : array_like
            ``(height, width)`` image, integer or float, at least 2 pixels
            along each axis, finite.
        progress : callable, optional
            Called as ``progress(done, total)`` (tiles) after every batch.
        cancel : callable, optional
            Polled before every batch; returning True aborts with
            :class:`Cancelled`.

        Returns
        -------
        numpy.ndarray
            Float32 restored image of the input's shape.

        Raises
        ------
        ValueError
            For invalid images (see :func:`~napari_emdenoise._validation.as_float_image`)
            or a model output of the wrong shape.
        Cancelled
            If ``cancel`` returned True.
        MemoryError
            If the device runs out of memory even with one minimal tile.
        """
        frame = as_float_image(image2d, ndim=2, min_size=2, name="image")
        return self._predict_frame(frame, progress, cancel)

    def _predict_frame(
        self,
        frame: np.ndarray,
        progress: ProgressCallback | None,
        cancel: CancelCallback | None,
    ) -> np.ndarray:
        height, width = frame.shape
        with _inference_state(self.model) as normalise:
            if normalise:
                # a network without ``std_floor`` gets the networks' own default
                floor = float(getattr(self.model, "std_floor", NORM_REL_FLOOR))
                mean, scale = normalization_stats(frame, floor)
                frame = (frame - np.float32(mean)) / np.float32(scale)
            ph, pw = self._padded_shape(frame.shape)
            if (ph, pw) != frame.shape:
                frame = np.pad(frame, ((0, ph - height), (0, pw - width)), mode="reflect")
            out = self._run_tiles(frame, progress, cancel)[:height, :width]
        if normalise:
            out = out * np.float32(scale) + np.float32(mean)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _run_tiles(
        self,
        frame: np.ndarray,
        progress: ProgressCallback | None,
        cancel: CancelCallback | None,
    ) -> np.ndarray:
        while True:
            grid = self.grid_for(frame.shape)
            tiles = list(grid)
            blender = TileBlender(grid)
            done = 0
            restart = False
            while done < len(tiles):
                if cancel is not None and cancel():
                    raise Cancelled("restoration cancelled")
                batch = tiles[done : done + self.batch_size]
                inputs = np.stack([frame[tile.slices] for tile in batch])
                try:
                    outputs = self._forward(inputs)
                except Exception as exc:
                    if not is_oom_error(exc):
                        raise
                    self._release_memory()
                    restart = self._shrink_after_oom(grid, exc)
                    if restart:
                        break
                    continue
                for tile, values in zip(batch, outputs, strict=True):
                    blender.add(tile, values)
                done += len(batch)
                if progress is not None:
                    progress(done, len(tiles))
            if not restart:
                return blender.result()

    def _shrink_after_oom(self, grid: TileGrid, exc: BaseException) -> bool:
        """Halve the batch (return False) or the tile (return True: restart the frame)."""
        if self.batch_size > 1:
            self.batch_size //= 2
            logger.warning(
                "out of memory on %s: retrying with batch_size=%d", self.device, self.batch_size
            )
            return False
        m = self.size_multiple
        current = grid.tile_shape
        smaller = tuple(max(m, (t // 2 // m) * m) for t in current)
        minimum = max(_MIN_TILE, 2 * grid.overlap + m, m)
        if max(smaller) < minimum or smaller == current:
            raise MemoryError(
                f"out of memory on {self.device} even with batch_size=1 and {current[0]}×"
                f"{current[1]}-pixel tiles; use the CPU or a smaller model"
            ) from exc
        self.tile_size = (max(smaller[0], minimum), max(smaller[1], minimum))
        logger.warning(
            "out of memory on %s with %s-pixel tiles: retrying with tile_size=%s",
            self.device,
            current,
            self.tile_size,
        )
        return True

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def _network(self) -> torch.nn.Module:
        """The module to run: on a CPU a channels-last copy, made once per predictor.

        oneDNN convolutions in channels-last (NHWC) layout ran the bundled CGRDN
        1.5–1.9× faster on the 2-core CPU (512²–1024², same output to 10⁻⁶).
        The copy is taken inside :meth:`predict` (eval mode, normalisation as
        the engine set it), so the caller's module is never changed.
        """
        if self.device.type != "cpu":
            return self.model
        if self._channels_last is None:
            import copy

            self._channels_last = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        return self._channels_last

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Run ``(B, h, w)`` float32 tiles through the network; return ``(B, h, w)``."""
        dtype = _module_dtype(self.model)
        with torch.inference_mode(), autocast_context(self.device, "auto" if self.amp else None):
            x = torch.from_numpy(batch[:, None]).to(self.device, dtype=dtype)
            y = self._network()(x)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(
                    f"the model must return a tensor of its input's shape {tuple(x.shape)}, "
                    f"got {got}"
                )
            return y[:, 0].float().cpu().numpy()


# --------------------------------------------------------------------------- restore


def _resolve_model(
    model: str | Path | torch.nn.Module, device: str | torch.device | None
) -> tuple[torch.nn.Module, torch.device]:
    if isinstance(model, torch.nn.Module):
        if device is None:
            current = _module_device(model)
            dev = resolve_device(current) if current is not None else resolve_device(None)
        else:
            dev = resolve_device(device)
        return model, dev
    if isinstance(model, (str, Path)):
        dev = resolve_device(device)
        from ..models.registry import load_model

        module, _card = load_model(model if isinstance(model, str) else str(model), device=dev)
        return module, dev
    raise ValueError(
        f"model must be a model name, a checkpoint path or a torch.nn.Module, "
        f"got {type(model).__name__}"
    )


def _image_ndim(image: object) -> int:
    ndim = getattr(image, "ndim", None)
    if isinstance(ndim, (int, np.integer)) and hasattr(image, "shape"):
        return int(ndim)
    return np.asarray(image).ndim


class _StackProgress:
    """Turn per-frame tile counts into one monotone ``(done, total)`` over a stack."""

    def __init__(self, callback: ProgressCallback | None, n_frames: int, per_frame: int) -> None:
        self.callback = callback
        self.n_frames = n_frames
        self.per_frame = per_frame
        self.finished = 0  # tiles of completed frames
        self.frames_done = 0
        self.last = 0

    def start(self) -> None:
        if self.callback is not None:
            self.callback(0, self.n_frames * self.per_frame)

    def frame_hook(self) -> ProgressCallback:
        def hook(done: int, total: int) -> None:
            self.per_frame = total
            self._emit(self.finished + done)

        return hook

    def frame_finished(self) -> None:
        self.frames_done += 1
        self.finished += self.per_frame

    def _emit(self, done: int) -> None:
        total = self.finished + (self.n_frames - self.frames_done) * self.per_frame
        self.last = max(self.last, min(done, total))
        if self.callback is not None:
            self.callback(self.last, total)


def restore(
    image: object,
    model: str | Path | torch.nn.Module = "hrstem",
    device: str | torch.device | None = None,
    tile_size: int | tuple[int, int] | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    safeguard: bool = False,
    backend: str = "auto",
    safeguard_report: Callable[[int, BlendResult], None] | None = None,
    ensemble: int = 1,
    refine: bool = True,
    lattice: bool = True,
    keep_defects: bool = False,
    lattice_report: Callable[[int, float], None] | None = None,
    fast_scan_axis: str = "x",
) -> np.ndarray:
    """Restore an EM image or a stack of frames with a trained network.

    Parameters
    ----------
    image : array_like
        ``(height, width)`` image or ``(frames, height, width)`` stack (time
        series, in-situ movie; frames are restored independently), any
        integer or float dtype, finite, at least 2 pixels per axis. numpy,
        dask and zarr arrays are accepted; a lazy stack is read one frame at
        a time. RGB(A) pictures (last axis 3 or 4) are refused.
    model : str, pathlib.Path or torch.nn.Module
        Bundled model name (e.g. ``"hrstem"``), checkpoint path (both via
        :func:`napari_emdenoise.models.registry.load_model`) or a network.
    device : str, torch.device or None
        ``None``: the module's own device, or automatic (CUDA, MPS, CPU)
        for a name/path.
    tile_size : int or tuple of int, optional
        Tile size in pixels. None: the whole frame in one pass if it has at
        most 1024² pixels (CPU) / 2048² (MPS) / 4096² (CUDA), the reference
        result; else tiles of at most 1024 pixels overlapping by 128 (which
        reproduces the whole-frame result of the bundled networks to float
        rounding), sized so that the fewest tiles cover the frame.
        A given size must be at least 64 pixels with the default overlap (at
        least 16 and more than ``overlap`` otherwise): smaller tiles give
        visibly tiled results and are refused.
    overlap : int, optional
        Overlap between tiles in pixels (default 32 for a given ``tile_size``,
        128 for the automatic tiling).
    batch_size : int, optional
        Tiles per forward pass (default 4 on CUDA, 1 elsewhere).
    progress : callable, optional
        ``progress(done, total)`` counted in tiles over all frames;
        ``done`` never decreases.
    cancel : callable, optional
        Polled before every batch; True aborts with :class:`Cancelled`.
    safeguard : bool
        Blend each frame's restoration with the frame, one weight per
        frequency band, by the weights that minimise Stein's unbiased
        estimate of the squared error (:mod:`.safeguard`): a network that
        removes or moves signal on an image it does not know is pulled back
        towards the input at the scales where it errs. Costs two extra
        passes over a central crop of at most 432² pixels per frame. It
        assumes pixel-independent (Poisson–Gaussian) noise: distortions that
        are not (fast-scan blur, scan jitter, row lines) count as signal, so
        their correction is given back, which is why it is off by default.
    safeguard_report : callable, optional
        With ``safeguard``: called as ``safeguard_report(frame_index, result)``
        after each frame with its :class:`~.safeguard.BlendResult` (weights per
        frequency band, from the lowest frequencies to Nyquist), so a caller
        can show how much of the network's change was kept.
    backend : {"auto", "torch", "onnxruntime"}
        What runs the network. ``"onnxruntime"``: ONNX Runtime on the CPU
        (the network is exported once per weights and torch version to a
        cache folder, see :mod:`.onnx_backend`); needs the ``onnx`` extra.
        ``"auto"``: ONNX Runtime on the CPU when it is installed, the network
        exports and either its export is already cached or the call has at
        least 512² pixels (enough to repay a first export); torch otherwise,
        and always on a GPU. Both back ends use the same tiles and agree to
        float32 rounding.
    ensemble : {1, 2, 8}
        Geometric self-ensemble (:mod:`.self_ensemble`): restore the frame
        under this many flips and 90° rotations, transform the results back
        and average them; costs ``ensemble`` times the time. ``2`` adds the
        upside-down frame and is safe for every model; ``8`` uses all flips
        and rotations, for TEM/SEM images and S(T)EM images limited by
        counting noise (it turns scan distortions away from the fast-scan
        axis the S(T)EM models correct). With ``safeguard`` the ensemble is
        the restoration that is blended.
    refine : bool
        Wiener refinement (:mod:`.wiener`, on by default): each frame's
        restoration becomes the pilot of an empirical Wiener filter of the
        raw frame, in overlapping 64² windows, so the details the network
        attenuated more than the frame's noise requires come back. On
        multislice HAADF-STEM and HRTEM simulations it adds 0.2–2.3 and
        0.7–1.3 dB to the bundled models; on a 2-core CPU it adds 0.4 s to a 1024² frame
        (the network: 0.9 s) and 1.1 s to a 2048² one (4.1 s). Then the
        2-pixel pattern step (:mod:`.grid_pattern`, about 0.3 s at 2048²): the
        narrow bands around the Nyquist frequencies, where networks with
        stride-2 stages leave a faint grid-locked pattern, take the raw frame's
        content filtered like the neighbouring frequencies.
        ``False`` gives the network's output alone (no lattice pass either).
        With ``safeguard`` the refined restoration is the one that is blended.
    lattice : bool
        Lattice pass (:mod:`.lattice`, part of the refinement: on by default,
        skipped with ``refine=False``, which gives the network's output alone):
        the Bragg peaks that stand out of the noise in the spectrum of what
        the restoration removed (``frame − restored``, periods under 48
        pixels) are added back, so lattice fringes the network erased (periods
        of 6 pixels and less, weak fringes at low dose) return from the frame
        itself. Periodic noise in the frame (mains interference) returns with
        them. It runs after the safeguard if any. ``False`` skips it. When it
        gives back most of a frame's fine detail (the network erased a lattice
        finer than it resolves, e.g. sharp columns every 4–5 pixels), a
        ``RuntimeWarning`` says so: the lattice is then rebuilt from a 32-px
        average, which averages vacancies and dopant columns away.
    lattice_report : callable, optional
        With the lattice pass: called as ``lattice_report(frame_index, share)``
        after each frame with :func:`~.lattice.lattice_share` (the share of
        the output's fine detail the pass gave back), so a caller can show
        when a lattice was rebuilt from its average.
    keep_defects : bool
        Last step (:mod:`.deviations`, off by default): where the output
        differs from the frame by more than three noise deviations at the
        scale of an atom column (a vacancy or a dopant the restoration
        averaged away), the raw frame is put back. On the defect probe of
        ``benchmarks/defect_contrast.py`` it keeps the vacancies that the
        default fills on 4–5-px lattices; it also puts back scan distortions
        the network corrected (row offsets, jitter), hence off by default.
    fast_scan_axis : {"x", "y"}
        The image axis along which the beam was scanned fast (:mod:`.scan_axis`).
        The S(T)EM and SEM models undo detector lag, the fast-scan blur and
        line jitter along x, the rows, as they were trained; ``"y"``
        transposes each frame before the restoration and back after it, for
        images scanned along the columns or stored transposed. With a S(T)EM
        or SEM model, a ``RuntimeWarning`` says when the first frame's noise
        is correlated along the other axis only (it is along the scan lines).
        On the authors' own synthetic HR-STEM test pairs read in the wrong
        orientation the default restoration lost 3.4 dB.

    Returns
    -------
    numpy.ndarray
        Float32 array of the input's shape, in the input's intensity units.

    Raises
    ------
    ValueError
        For NaN/inf, empty, 1-D or 4-D input, an axis under 2 pixels, an
        unknown model, device or backend, an ensemble size other than 1, 2
        or 8, a ``fast_scan_axis`` other than ``"x"`` or ``"y"``, or
        ``backend="onnxruntime"`` with a device other than the CPU.
    ImportError
        For ``backend="onnxruntime"`` without onnxruntime, onnx and onnxscript.
    Cancelled
        If ``cancel`` returned True.

    Notes
    -----
    Networks with a true ``normalize`` attribute (CGRDN, DnCNN) see each
    frame normalised as a whole, ``(x − mean) / max(std, 10⁻⁶·|mean|)``,
    and not tile by tile; see the module notes.
    """
    image = tensor_to_numpy(image)
    _check_tiling_args(tile_size, overlap, batch_size)
    _check_backend(backend)
    transforms = ensemble_transforms(check_ensemble(ensemble))
    _check_flag(refine, "refine")
    _check_flag(lattice, "lattice")
    _check_flag(keep_defects, "keep_defects")
    transpose = check_fast_scan_axis(fast_scan_axis) == "y"
    data, ndim, lazy = _checked_image(image)
    shape = tuple(int(s) for s in data.shape)  # type: ignore[union-attr]

    module, dev = _resolve_model(model, device)
    # The card's modality, which load_model tags its networks with (None for others).
    modality = getattr(module, "emdenoise_modality", None)
    from ..models.pix2pix import Pix2PixGenerator

    if isinstance(module, Pix2PixGenerator):
        raise ValueError(
            "this model denoises 4D-STEM diffraction patterns, not micrographs: use "
            "napari_emdenoise.restore_4dstem (or a micrograph model such as 'hrstem')"
        )
    frame_shape = shape[-2:]
    # The frames the restoration sees: transposed when the fast-scan axis is y.
    seen_shape = frame_shape[::-1] if transpose else frame_shape
    if transpose and isinstance(tile_size, tuple):
        tile_size = (tile_size[1], tile_size[0])
    tile_size, overlap, batch_size = _default_tiling(
        seen_shape, dev, len(transforms), tile_size, overlap, batch_size
    )
    predictor = _make_predictor(
        backend,
        module,
        dev,
        int(np.prod(shape, dtype=np.int64)),
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
    )
    units = [0.0, 1.0]  # (offset, scale) of the frame being restored, see _unit_scaled
    steps = _FrameRestorer(
        predictor=predictor,
        transforms=transforms,
        cancel=cancel,
        refine=bool(refine),
        lattice=bool(lattice),
        keep_defects=bool(keep_defects),
        safeguard=bool(safeguard),
        safeguard_report=None
        if safeguard_report is None
        else _in_user_units(safeguard_report, units),
        lattice_report=lattice_report,
    )

    # A network that normalises each frame itself (the bundled ones) makes every step
    # affine-equivariant; such frames are restored at unit scale (see _unit_scaled).
    unit_free = _normalises_itself(module)
    frames = data[None] if ndim == 2 else data  # type: ignore[index]
    n_frames = int(frames.shape[0])  # type: ignore[union-attr]
    counter = _StackProgress(progress, n_frames, steps.tiles_of(seen_shape))
    counter.start()
    rebuilt: list[int] = []  # frames whose fine detail came mostly from the lattice pass
    out = np.empty((n_frames, *frame_shape), dtype=np.float32)
    for index in range(n_frames):
        frame = frames[index]  # type: ignore[index]
        if lazy:  # numpy input was validated above; lazy frames are read and checked here
            if hasattr(frame, "compute"):
                frame = frame.compute()
            frame = as_float_image(frame, ndim=2, name=f"frame {index}")
        if index == 0 and modality in SCANNED_MODALITIES:
            mismatch = scan_axis_mismatch(frame, fast_scan_axis)
            if mismatch is not None:
                advice = (
                    f" Restore with fast_scan_axis='{mismatch.suggested}' (command line: "
                    f"--fast-scan-axis {mismatch.suggested})."
                )
                # Without the numbers: one warning for a series restored frame by frame.
                text = mismatch.describe(numbers=False) + advice
                warnings.warn(text, RuntimeWarning, stacklevel=2)
        seen, offset, scale = scan_rows(frame, fast_scan_axis), 0.0, 1.0
        if unit_free:
            seen, offset, scale = _unit_scaled(seen)
        units[:] = [offset, scale]
        restored, was_rebuilt = steps(index, seen, counter.frame_hook())
        out[index] = scan_rows(restored.astype(np.float64) * scale + offset, fast_scan_axis)
        if was_rebuilt:
            rebuilt.append(index)
        counter.frame_finished()
    if rebuilt and not keep_defects:
        which = "the image" if ndim == 2 else f"{len(rebuilt)} of {n_frames} frames"
        warnings.warn(
            f"in {which} most of the fine detail was given back by the lattice pass: the "
            "network erased a lattice finer than it resolves, and the lattice was rebuilt "
            "from a 32-pixel average, which averages vacancies and dopant columns away. To "
            "study single columns, restore with keep_defects=True (CLI --keep-defects, "
            "the Restore dock's 'keep defects') or use the raw image.",
            RuntimeWarning,
            stacklevel=2,
        )
    n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if n_bad:
        warnings.warn(
            f"the model returned {n_bad} NaN or infinite value(s) in {n_bad / out.size:.1%} "
            "of the pixels; the model (or its weights) is broken for this input",
            RuntimeWarning,
            stacklevel=2,
        )
    return out[0] if ndim == 2 else out


def _in_user_units(
    report: Callable[[int, BlendResult], None], units: list[float]
) -> Callable[[int, BlendResult], None]:
    """``report`` called with the blend mapped from unit scale back to the frame's units."""

    def in_units(index: int, blend: BlendResult) -> None:
        offset, scale = units
        image = (blend.image.astype(np.float64) * scale + offset).astype(np.float32)
        report(index, dataclasses.replace(blend, image=image))

    return in_units


def _normalises_itself(model: torch.nn.Module) -> bool:
    """Whether ``model`` normalises each frame (its ``normalize`` attribute), read
    through :func:`_inference_state`, which turns the attribute off while it runs."""
    with _STATE_LOCK:
        saved = _SAVED.get(model)
        value = getattr(model, "normalize", _MISSING) if saved is None else saved.normalize
    return value is not _MISSING and bool(value)


def _unit_scaled(frame: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``((frame − offset) / scale, offset, scale)``: the frame at unit scale, in float32.

    With a network that normalises each frame (``normalize``: CGRDN, DnCNN),
    every step of :func:`restore` is affine-equivariant (``restore(a·x + b) =
    a·restore(x) + b``), so the frame is restored at zero mean and unit standard
    deviation (both summed in float64) and mapped back. That keeps the steps'
    float32 arithmetic (variances, spectra) away from overflow and underflow
    whatever unit the data are stored in: coulombs per pixel (about 10⁻¹⁸) as
    well as counts scaled by 10²⁰. A constant frame keeps a scale of 1.
    """
    offset = float(frame.mean(dtype=np.float64))
    scale = float(frame.std(dtype=np.float64))
    if not (scale > 0 and math.isfinite(scale)):
        scale = 1.0
    seen = (frame.astype(np.float64) - offset) / scale
    return seen.astype(np.float32), offset, scale


def _checked_image(image: object) -> tuple[Any, int, bool]:
    """``(data, ndim, lazy)`` of a ``restore`` input, or a ValueError that says what is wrong.

    numpy input comes back as a validated float array; a lazy (dask, zarr)
    stack comes back as it is, its frames are checked when read.
    """
    ndim = _image_ndim(image)
    if ndim == 4:
        raise ValueError(
            "restore takes a 2-D image or a (frames, y, x) stack; 4-D STEM data "
            "(scan_y, scan_x, det_y, det_x) go to napari_emdenoise.restore_4dstem "
            "(model 'pix2pix-4dstem'), `emdenoise restore-4d` or the 4D-STEM dock"
        )
    shape_in = tuple(int(s) for s in getattr(image, "shape", ()))
    if ndim == 3 and shape_in[-1] in (3, 4) and shape_in[0] > 4:
        raise ValueError(
            f"an array of shape {shape_in} looks like an RGB(A) picture, not a stack of "
            "micrographs; convert it to grey levels (e.g. skimage.color.rgb2gray) first"
        )
    if ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (y, x) or 3-D (frames, y, x), got a {ndim}-D array")
    lazy = ndim == 3 and not isinstance(image, np.ndarray)
    data = image if lazy else as_float_image(image, ndim=(2, 3), name="image")
    shape = tuple(int(s) for s in data.shape)  # type: ignore[union-attr]
    if 0 in shape:
        raise ValueError(f"image is empty (shape {shape})")
    if min(shape[-2:]) < 2:
        raise ValueError(
            f"image of shape {shape} is too small: height and width need at least 2 pixels"
        )
    return data, ndim, lazy


def _default_tiling(
    frame_shape: tuple[int, ...],
    dev: torch.device,
    n_views: int,
    tile_size: int | tuple[int, int] | None,
    overlap: int | None,
    batch_size: int | None,
) -> tuple[int | tuple[int, int], int, int]:
    """``(tile_size, overlap, batch_size)`` with :func:`restore`'s defaults filled in.

    Frames up to the device's whole-image budget run in one pass; larger ones
    in balanced tiles of at most ``_AUTO_TILE`` pixels. With 8 views (rotated
    frames swap height and width) tiles are square so every view tiles alike.
    """
    if tile_size is None:
        budget = _WHOLE_IMAGE_BUDGET.get(dev.type, _WHOLE_IMAGE_BUDGET["cpu"])
        if frame_shape[0] * frame_shape[1] <= budget:
            tile_size = (max(frame_shape[0], 2), max(frame_shape[1], 2))
        else:
            if overlap is None:
                overlap = _AUTO_OVERLAP
            tile_size = tuple(
                balanced_tile(n, max(_AUTO_TILE, 2 * overlap + _MIN_TILE), overlap)
                for n in frame_shape
            )
        if n_views == 8:
            tile_size = (max(tile_size),) * 2
    if overlap is None:
        overlap = min(_DEFAULT_OVERLAP, max(0, min(_as_pair(tile_size, "tile_size")) // 2 - 1))
    if batch_size is None:
        batch_size = 4 if dev.type == "cuda" else 1
    return tile_size, overlap, batch_size


def _optional_step(
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    what: str,
    flag: str,
    frame: np.ndarray,
    restored: np.ndarray,
    stacklevel: int = 4,
) -> np.ndarray:
    """``step(frame, restored)``; when it runs out of memory, a warning and ``restored``.

    ``stacklevel``: the warning's, counted from here (4: through
    ``_FrameRestorer.__call__`` and ``restore`` to ``restore``'s caller).
    """
    try:
        return step(frame, restored)
    except MemoryError:
        warnings.warn(
            f"the {what} of a {frame.shape[0]}×{frame.shape[1]} frame did not fit in "
            f"memory; this frame was restored without it ({flag}=False)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        return restored


def _frame_noise_line(frame: np.ndarray, restored: np.ndarray) -> tuple[float, float] | None:
    """The frame's noise line ``Var = a·mean + c`` measured against the network's
    restoration, shared by the Wiener refinement and the 2-pixel pattern step
    (None for frames those steps leave alone, which then return the restoration)."""
    x, y, usable = frame_pair(frame, restored, "restored", GRID_PATTERN_MIN_SIDE)
    return noise_variance_line(x, pilot=y) if usable else None


@dataclass(frozen=True)
class _FrameRestorer:
    """What :func:`restore` does to one frame, in order.

    The network (averaged over the self-ensemble's views), the Wiener
    refinement and the 2-pixel pattern step (:mod:`.grid_pattern`), the
    safeguard, the lattice pass and the keep-defects pass, each as its flag
    says. Called as ``restorer(index, frame, progress)``, it returns the
    restored frame and whether the lattice pass gave back most of its fine
    detail.
    """

    predictor: TiledPredictor
    transforms: Sequence[tuple[Callable, Callable]]
    cancel: CancelCallback | None
    refine: bool
    lattice: bool
    keep_defects: bool
    safeguard: bool
    safeguard_report: Callable[[int, BlendResult], None] | None
    lattice_report: Callable[[int, float], None] | None

    def tiles_of(self, shape: tuple[int, ...]) -> int:
        """Network tiles one frame of ``shape`` costs (over all views)."""
        return sum(
            self.predictor.count_tiles(s) for s in output_shapes(shape, len(self.transforms))
        )

    def network(self, frame: np.ndarray, hook: ProgressCallback | None = None) -> np.ndarray:
        """The network's restoration, averaged over the views of the self-ensemble."""
        if len(self.transforms) == 1:
            return self.predictor._predict_frame(frame, hook, self.cancel)
        total, offset = self.tiles_of(frame.shape), 0
        acc = np.zeros(frame.shape, dtype=np.float64)
        for to_view, from_view in self.transforms:
            view = to_view(frame)
            sub = None if hook is None else (lambda d, _t, o=offset: hook(o + d, total))
            acc += from_view(self.predictor._predict_frame(view, sub, self.cancel))
            offset += self.predictor.count_tiles(view.shape)
        return (acc / len(self.transforms)).astype(np.float32)

    def refined(self, frame: np.ndarray, hook: ProgressCallback | None = None) -> np.ndarray:
        """The network's restoration, refined when ``refine`` (the safeguard's input):
        the Wiener refinement, then the 2-pixel pattern step, with one noise line."""
        restored = self.network(frame, hook)
        if self.refine:
            line = _frame_noise_line(frame, restored)
            for step, what in (
                (wiener_refine, "Wiener refinement"),
                (remove_grid_pattern, "2-pixel pattern step"),
            ):
                restored = _optional_step(
                    functools.partial(step, noise_line=line),
                    what,
                    "refine",
                    frame,
                    restored,
                    stacklevel=5,
                )
        return restored

    def __call__(
        self, index: int, frame: np.ndarray, hook: ProgressCallback | None = None
    ) -> tuple[np.ndarray, bool]:
        restored = self.refined(frame, hook)
        if self.safeguard:
            blend = sure_blend(frame, restored, self.refined, np.random.default_rng(index))
            restored = blend.image
            if self.safeguard_report is not None:
                self.safeguard_report(index, blend)
        rebuilt = False
        if self.refine and self.lattice:
            # After the safeguard: a thresholded detection has no useful
            # divergence for the safeguard's risk estimate.
            before = restored
            restored = _optional_step(restore_lattice, "lattice pass", "lattice", frame, restored)
            # The share feeds the report and restore's warning, which keep_defects silences.
            if self.lattice_report is not None or not self.keep_defects:
                share = lattice_share(before, restored) if restored is not before else 0.0
                rebuilt = share > LATTICE_SHARE_WARNING
                if self.lattice_report is not None:
                    self.lattice_report(index, share)
        if self.keep_defects:
            restored = _optional_step(
                restore_deviations, "keep-defects pass", "keep_defects", frame, restored
            )
        return restored, rebuilt


BACKENDS = ("auto", "torch", "onnxruntime")
#: Smallest call (pixels over all frames) for which ``backend="auto"`` exports a
#: network that is not in the cache yet (the export costs a few seconds once).
AUTO_EXPORT_MIN_PIXELS = 512 * 512


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_backend(backend: object) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        names = ", ".join(map(repr, BACKENDS))
        raise ValueError(f"backend must be one of {names}, got {backend!r}")


def _make_predictor(
    backend: str,
    module: torch.nn.Module,
    dev: torch.device,
    n_pixels: int,
    *,
    tile_size: int | tuple[int, int],
    overlap: int,
    batch_size: int,
) -> TiledPredictor:
    """The predictor of ``backend`` (``"auto"`` resolved, see :func:`restore`)."""
    if backend == "onnxruntime" and dev.type != "cpu":
        raise ValueError(f'backend="onnxruntime" runs on the CPU only, not on {dev}')
    if backend != "torch" and dev.type == "cpu":
        from . import onnx_backend

        wanted = backend == "onnxruntime"
        if not wanted and onnx_backend.onnxruntime_available():
            try:
                wanted = n_pixels >= AUTO_EXPORT_MIN_PIXELS or onnx_backend.is_cached(module)
            except Exception as exc:  # a module whose weights cannot be hashed
                logger.info("ONNX Runtime not used: %s", exc)
        if wanted:
            try:
                return onnx_backend.OnnxPredictor(
                    module, tile_size=tile_size, overlap=overlap, batch_size=batch_size
                )
            except (ImportError, RuntimeError) as exc:
                if backend == "onnxruntime":
                    raise
                logger.info("ONNX Runtime not used, running the network in torch: %s", exc)
    return TiledPredictor(
        module, device=dev, tile_size=tile_size, overlap=overlap, batch_size=batch_size
    )


@functools.lru_cache(maxsize=4)
def _cached_model(model: str, device: str) -> torch.nn.Module:
    """One loaded copy of a named model per process (dask workers reuse it)."""
    module, _dev = _resolve_model(model, device)
    return module


def _restore_block(
    block: np.ndarray,
    model: str | torch.nn.Module,
    device: str | None,
    tile_size: int | tuple[int, int] | None,
    overlap: int | None,
    batch_size: int | None,
    backend: str = "auto",
    ensemble: int = 1,
    safeguard: bool = False,
    refine: bool = True,
    lattice: bool = True,
    keep_defects: bool = False,
) -> np.ndarray:
    if isinstance(model, str):
        dev = str(resolve_device(device))
        model = _cached_model(model, dev)
    return restore(
        block,
        model=model,
        device=device,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        backend=backend,
        ensemble=ensemble,
        safeguard=safeguard,
        refine=refine,
        lattice=lattice,
        keep_defects=keep_defects,
    )


def restore_dask(
    arr: object,
    model: str | Path | torch.nn.Module = "hrstem",
    device: str | torch.device | None = None,
    tile_size: int | tuple[int, int] | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    backend: str = "auto",
    ensemble: int = 1,
    safeguard: bool = False,
    refine: bool = True,
    lattice: bool = True,
    keep_defects: bool = False,
) -> Any:
    """Lazy restoration of a stack: one dask task per frame.

    Parameters
    ----------
    arr : array_like
        ``(frames, height, width)`` or ``(height, width)`` array, dask or
        anything ``dask.array.asarray`` accepts. It is rechunked to whole
        frames (a frame is normalised as a whole and tiled internally).
    model, device, tile_size, overlap, batch_size, backend
        As for :func:`restore`. A model name or path is loaded once per
        worker process, so the graph runs on a ``dask.distributed`` cluster;
        a module is shipped with the graph.
    ensemble, safeguard, refine, lattice, keep_defects
        As for :func:`restore`.

    Returns
    -------
    dask.array.Array
        Lazy float32 array of ``arr``'s shape. Compute it, or stream it to
        disk with ``.to_zarr(path)``.

    Raises
    ------
    ValueError
        For arrays that are not 2-D or 3-D or are empty (values are checked
        when each frame is computed).
    """
    import dask.array as da

    _check_tiling_args(tile_size, overlap, batch_size)
    _check_backend(backend)
    check_ensemble(ensemble)
    _check_flag(refine, "refine")
    _check_flag(lattice, "lattice")
    _check_flag(keep_defects, "keep_defects")
    arr = tensor_to_numpy(arr)
    darr = arr if isinstance(arr, da.Array) else da.asarray(arr)
    if darr.ndim not in (2, 3):
        raise ValueError(
            f"restore_dask takes a 2-D image or a (frames, y, x) stack, got {darr.ndim}-D"
        )
    if darr.size == 0:
        raise ValueError(f"array is empty (shape {darr.shape})")
    model_arg: str | torch.nn.Module = str(model) if isinstance(model, Path) else model
    if not isinstance(model_arg, (str, torch.nn.Module)):
        raise ValueError(
            f"model must be a model name, a checkpoint path or a torch.nn.Module, "
            f"got {type(model).__name__}"
        )
    device_arg = None if device is None else str(device)
    squeeze = darr.ndim == 2
    if squeeze:
        darr = darr[None]
    darr = darr.rechunk({0: 1, 1: -1, 2: -1})
    result = darr.map_blocks(
        _restore_block,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        model=model_arg,
        device=device_arg,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        backend=backend,
        ensemble=ensemble,
        safeguard=bool(safeguard),
        refine=bool(refine),
        lattice=bool(lattice),
        keep_defects=bool(keep_defects),
    )
    return result[0] if squeeze else result

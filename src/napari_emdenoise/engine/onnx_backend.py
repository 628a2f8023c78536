"""ONNX Runtime back end of the inference engine (CPU).

The network is exported once per (weights, torch version, ONNX opset) to an
``.onnx`` file in a cache folder and run through an
``onnxruntime.InferenceSession`` with free batch, height and width.
:class:`OnnxPredictor` is a :class:`~.predictor.TiledPredictor` whose forward
pass goes through that session: tiling, whole-frame normalisation, padding to
the network's stride, progress, cancel and the out-of-memory retries are the
torch path's, so both back ends compute the same thing (the outputs agree to
float32 rounding, about 10⁻⁶ of the output range).

The exported graph is the bare network with its own per-image normalisation
*off* (the engine normalises the whole frame before tiling, see
:mod:`.predictor`), wrapped so that odd sizes are reflect-padded to the
stride without Python branches (:mod:`napari_emdenoise.models.onnx_export`).

Cache folder: ``$EMDENOISE_CACHE_DIR`` if set, else the platform's user
cache folder (``~/.cache/napari-emdenoise/onnx`` on Linux). Files are written
through a temporary file and renamed, so concurrent processes never read a
half-written graph. Deleting the folder is always safe.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._onnx_common import export_program, publish_checked
from ._onnx_common import new_session as _new_session
from .predictor import TiledPredictor, infer_size_multiple

__all__ = [
    "CACHE_ENV",
    "OnnxPredictor",
    "cache_dir",
    "export_cached",
    "export_in_subprocess",
    "prepare_backend",
    "model_key",
    "onnxruntime_available",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache folder.
CACHE_ENV = "EMDENOISE_CACHE_DIR"
#: Default-domain opset of the exported graphs (part of the cache key).
OPSET = 18
#: Bump when the exported graph changes for the same weights.
_FORMAT = 1

_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, int], Any] = {}
_FAILED: dict[str, str] = {}


def onnxruntime_available() -> bool:
    """Whether onnxruntime, onnx and onnxscript (the exporter's needs) import.

    Returns
    -------
    bool
        False when any of them is missing or broken.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def cache_dir() -> Path:
    """Folder of the exported graphs.

    Returns
    -------
    pathlib.Path
        ``$EMDENOISE_CACHE_DIR`` if set, else ``<user cache>/napari-emdenoise/onnx``.
        It may not exist yet.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-emdenoise", appauthor=False)) / "onnx"


def model_key(model: torch.nn.Module, opset: int = OPSET) -> str:
    """Cache key of ``model``: a hash of its class, weights, torch version and opset.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    opset : int
        ONNX opset of the export.

    Returns
    -------
    str
        32 hexadecimal digits.
    """
    digest = hashlib.sha256()
    cls = type(model)
    header = f"{_FORMAT}|{cls.__module__}.{cls.__qualname__}|{torch.__version__}|{opset}"
    digest.update(header.encode())
    digest.update(repr(getattr(model, "config", None)).encode())
    digest.update(str(infer_size_multiple(model)).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"|{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        if value.dtype == torch.bfloat16:
            value = value.float()
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:32]


def _graph(model: torch.nn.Module) -> torch.nn.Module:
    """CPU float32 copy of ``model`` with its normalisation off, in the padding wrapper."""
    from ..models.onnx_export import _graph_class, _GraphSpec

    network = copy.deepcopy(model).cpu().float().eval()
    if hasattr(network, "normalize"):
        network.normalize = False
    config = getattr(network, "config", None)
    channels = getattr(config, "in_channels", None) or getattr(network, "in_channels", None) or 1
    spec = _GraphSpec(
        normalize=False,
        std_floor=0.0,
        size_multiple=infer_size_multiple(network),
        channels=int(channels),
    )
    return _graph_class()(network, spec).eval()


def _export(model: torch.nn.Module, target: Path, opset: int) -> None:
    """Export, check against torch and atomically publish ``target``."""
    from torch.export import Dim

    graph = _graph(model)
    low = max(2, graph.spec.size_multiple)
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=low), 3: Dim("width", min=low)}
    example = torch.rand(2, graph.spec.channels, max(64, 4 * low), max(96, 6 * low))
    program = export_program(graph, example, opset, {"image": dims})
    check = np.random.default_rng(0).standard_normal((1, graph.spec.channels, 75, 53))
    publish_checked(program, target, graph, check.astype(np.float32))


def cached_path(model: torch.nn.Module, opset: int = OPSET) -> Path:
    """Where the exported graph of ``model`` is (or will be) cached."""
    return cache_dir() / f"{type(model).__name__.lower()}-{model_key(model, opset)}.onnx"


def export_cached(model: torch.nn.Module, opset: int = OPSET) -> Path:
    """Export ``model`` to the cache unless an export of the same weights is there.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping ``(B, C, H, W)`` to the same shape.
    opset : int
        ONNX opset.

    Returns
    -------
    pathlib.Path
        The cached ``.onnx`` file.

    Raises
    ------
    ImportError
        If onnx, onnxscript or onnxruntime is missing.
    RuntimeError
        If the export fails or the graph disagrees with torch.
    """
    if not onnxruntime_available():
        raise ImportError(
            "the ONNX Runtime back end needs onnx, onnxscript and onnxruntime: pip install "
            '"napari-emdenoise[onnx]"'
        )
    path = cached_path(model, opset)
    if not path.is_file():
        logger.info("exporting the network to %s (once per model and torch version)", path)
        _export(model, path, opset)
    return path


def session_for(model: torch.nn.Module, threads: int | None = None) -> Any:
    """An ``InferenceSession`` running ``model`` (exported and cached on first use).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    threads : int, optional
        Intra-op threads; default ``torch.get_num_threads()``.

    Returns
    -------
    onnxruntime.InferenceSession
        Shared by all callers in this process (``run`` is thread safe).

    Raises
    ------
    ImportError, RuntimeError
        As :func:`export_cached`; a model that failed to export once is not
        retried in the same process.
    """
    n = int(threads or torch.get_num_threads())
    key = model_key(model)
    with _LOCK:
        if key in _FAILED:
            raise RuntimeError(_FAILED[key])
        session = _SESSIONS.get((key, n))
        if session is None:
            try:
                path = export_cached(model)
                session = _new_session(path, n)
            except ImportError:
                raise
            except Exception as exc:
                _FAILED[key] = f"ONNX export of the model failed: {type(exc).__name__}: {exc}"
                raise RuntimeError(_FAILED[key]) from exc
            _SESSIONS[(key, n)] = session
    return session


_CHILD_EXPORT = (
    "import sys\n"
    "from napari_emdenoise.models.registry import load_model\n"
    "from napari_emdenoise.engine.onnx_backend import export_cached\n"
    "print(export_cached(load_model(sys.argv[1], device='cpu')[0]))\n"
)


def export_in_subprocess(
    model: str | os.PathLike,
    *,
    cancel: Any = None,
    timeout_s: float = 900.0,
    poll_s: float = 0.1,
) -> Path:
    """Export a saved model's graph to the cache in a child Python process.

    The export takes seconds and cannot be interrupted inside a process; run in
    a child, it can be cancelled (the child is killed, nothing half-written is
    left: the cache is written through a temporary file) and a viewer closed
    meanwhile does not wait for it. Used by the Restore widget before it runs
    ``restore(..., backend="auto")``.

    Parameters
    ----------
    model : str or path-like
        A registry model name or a ``.safetensors`` path (what
        :func:`napari_emdenoise.models.registry.load_model` accepts).
    cancel : callable, optional
        Polled every ``poll_s`` seconds; True kills the child and raises
        :class:`~.predictor.Cancelled`.
    timeout_s : float
        The child is killed after this many seconds.
    poll_s : float
        Polling interval, seconds.

    Returns
    -------
    pathlib.Path
        The cached ``.onnx`` file (the same one :func:`export_cached` would use
        for the loaded model in this process).

    Raises
    ------
    ImportError
        If onnx, onnxscript or onnxruntime is missing.
    RuntimeError
        If the child fails or times out (its last error line is in the message).
    Cancelled
        If ``cancel`` returned True.
    """
    import subprocess
    import sys
    import time

    from .predictor import Cancelled

    if not onnxruntime_available():
        raise ImportError("the ONNX Runtime back end needs onnx, onnxscript and onnxruntime")
    # Files, not pipes: a chatty child can never block on a full pipe buffer.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_EXPORT, os.fspath(model)],
            stdout=out,
            stderr=err,
            text=True,
        )
        start = time.monotonic()
        try:
            while child.poll() is None:
                if cancel is not None and cancel():
                    raise Cancelled("cancelled while preparing the ONNX Runtime graph")
                if time.monotonic() - start > timeout_s:
                    raise RuntimeError(f"ONNX export did not finish within {timeout_s:.0f} s")
                time.sleep(poll_s)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if child.returncode != 0:
            err.seek(0)
            lines = [line for line in err.read().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {child.returncode}"
            raise RuntimeError(f"ONNX export failed: {last}")
        out.seek(0)
        printed = out.read().strip().splitlines()
    if not printed:
        raise RuntimeError("ONNX export failed: the exporting process printed no path")
    return Path(printed[-1])


def prepare_backend(
    model: str | os.PathLike, device: str | None, n_pixels: int, cancel: Any = None
) -> str:
    """The ``backend=`` for :func:`~.predictor.restore` after preparing ONNX Runtime.

    ``restore(..., backend="auto")`` exports the network in-process when a CPU
    call is large enough to pay for it. Here that export runs first in a child
    process (:func:`export_in_subprocess`, once per model and torch version),
    so it can be cancelled and never holds up an exiting viewer; ``"auto"`` is
    returned, or ``"torch"`` if the export failed (so that ``restore`` does not
    try again in-process). When ``"auto"`` would not export (GPU, small call,
    onnxruntime missing) ``"auto"`` is returned at once.

    Parameters
    ----------
    model : str or path-like
        Registry model name or ``.safetensors`` path.
    device : str or None
        The device the call will use (None: automatic).
    n_pixels : int
        Pixels of the call (all frames).
    cancel : callable, optional
        Polled during the export; True raises :class:`~.predictor.Cancelled`.

    Returns
    -------
    {"auto", "torch"}
    """
    from .device import resolve_device
    from .predictor import AUTO_EXPORT_MIN_PIXELS

    if resolve_device(device).type != "cpu" or n_pixels < AUTO_EXPORT_MIN_PIXELS:
        return "auto"
    if not onnxruntime_available():
        return "auto"
    try:
        export_in_subprocess(model, cancel=cancel)
    except (RuntimeError, OSError) as exc:
        logger.info("ONNX Runtime not used, running the network in torch: %s", exc)
        return "torch"
    return "auto"


def is_cached(model: torch.nn.Module) -> bool:
    """Whether a session or an exported file for ``model`` already exists."""
    key = model_key(model)
    with _LOCK:
        if any(k == key for k, _ in _SESSIONS):
            return True
    return cached_path(model).is_file()


class OnnxPredictor(TiledPredictor):
    """:class:`~.predictor.TiledPredictor` whose forward pass runs in ONNX Runtime (CPU).

    Parameters
    ----------
    model : torch.nn.Module
        The network; exported to the cache on first use (see :func:`export_cached`).
    tile_size, overlap, batch_size
        As for :class:`~.predictor.TiledPredictor`.
    threads : int, optional
        ONNX Runtime intra-op threads; default ``torch.get_num_threads()``.

    Raises
    ------
    ImportError
        If onnxruntime (or the exporter's packages) is missing.
    RuntimeError
        If the model cannot be exported.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tile_size: int | tuple[int, int] = 512,
        overlap: int = 32,
        batch_size: int = 1,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            model, device="cpu", tile_size=tile_size, overlap=overlap, batch_size=batch_size
        )
        # The network's state as the engine runs it: its own normalisation is off.
        self.session = session_for(self.model, threads)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Run ``(B, h, w)`` float32 tiles through the session; return ``(B, h, w)``."""
        x = np.ascontiguousarray(batch[:, None], dtype=np.float32)
        try:
            y = self.session.run(None, {"image": x})[0]
        except Exception as exc:
            message = str(exc).lower()
            if "alloc" in message or "out of memory" in message:
                raise MemoryError(str(exc)) from exc
            raise
        if y.shape != x.shape:
            raise ValueError(
                f"the model must return an array of its input's shape {x.shape}, got {y.shape}"
            )
        return y[:, 0]

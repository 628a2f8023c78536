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

from .predictor import TiledPredictor, infer_size_multiple

__all__ = [
    "CACHE_ENV",
    "OnnxPredictor",
    "cache_dir",
    "export_cached",
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
#: Largest ``|onnx − torch|`` accepted by the check after export, relative to
#: the output range of the check input.
_CHECK_TOLERANCE = 1e-4

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

    from ..models.onnx_export import _quiet_exporter

    graph = _graph(model)
    low = max(2, graph.spec.size_multiple)
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=low), 3: Dim("width", min=low)}
    example = torch.rand(2, graph.spec.channels, max(64, 4 * low), max(96, 6 * low))
    with _quiet_exporter():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=["image"],
            output_names=["restored"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"image": dims},
            verbose=False,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        program.save(str(tmp), external_data=False)
        session = _new_session(tmp, 1)
        check = np.random.default_rng(0).standard_normal((1, graph.spec.channels, 75, 53))
        check = check.astype(np.float32)
        got = session.run(None, {"image": check})[0]
        with torch.inference_mode():
            want = graph(torch.from_numpy(check)).numpy()
        span = float(np.ptp(want)) or 1.0
        err = float(np.max(np.abs(got - want))) / span
        if not err <= _CHECK_TOLERANCE:
            raise RuntimeError(f"the exported graph differs from torch by {err:.2e} of the range")
        umask = os.umask(0)  # mkstemp makes 0600 files; use the user's default mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _new_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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

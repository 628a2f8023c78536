"""Export trained restoration models to ONNX, to run them outside PyTorch.

:func:`export_onnx` turns any model known to :mod:`.registry` (a bundled name
such as ``"hrstem"``, a user model, or a ``.safetensors`` path with its JSON
card) into one self-contained ``.onnx`` file that onnxruntime and other
frameworks run on images of any batch size, height and width, and writes the
model card with an ``"onnx"`` section beside it.

The exported graph contract
---------------------------
* Input ``"image"``: float32, shape ``(batch, 1, height, width)`` (NCHW), raw
  intensities in any unit (counts, e⁻/pixel, grey levels) — **no scaling
  beforehand**. ``height`` and ``width`` are free (odd sizes included) but at
  least 2 pixels (the total stride for a network that downsamples more; the
  card's ``onnx.input.min_size_px``).
* Output ``"restored"``: float32, the input's shape and intensity unit.
* Per-image normalisation is *inside* the graph when the network uses it
  (``normalize`` true in its card: CGRDN, DnCNN; off for the bias-free
  DnCNN): every image of the batch is mapped to ``(x − mean) / max(std,
  10⁻⁶·|mean|)`` over its own height and width (population std) and the output is
  mapped back with ``· scale + mean``. Images of a batch do not influence each
  other.
* Padding is inside the graph too: networks with strided layers (the CGRDN
  halves and doubles the resolution, so it needs even sizes) get the bottom
  rows / right columns reflect-padded to a multiple of their total stride and
  the output cropped back — the same padding as the inference engine
  (:mod:`napari_emdenoise.engine.predictor`).

The graph therefore computes what the PyTorch model computes on the whole
image, and what :func:`napari_emdenoise.engine.restore` returns for images the
engine runs in one pass (up to 1024² pixels on a CPU). Larger images are
tiled by the engine; to do the same outside Python, cut tiles yourself (the
graph accepts any tile) — or run the whole image if memory allows.

Why a wrapper: exporting the bare CGRDN with dynamic sizes silently bakes in
the "no padding needed" branch of its even-size check, and the graph then
fails in onnxruntime on any odd size. The wrapper pads without Python
branches (reflect-pad by ``stride − 1``, then crop to the next multiple of
the stride), so the padding stays symbolic.

Exporter: ``torch.onnx.export(dynamo=True)`` (the default in torch 2.13;
it needs ``onnxscript``), opset 18 or newer. Install the extra with
``pip install "napari-emdenoise[onnx]"`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = [
    "CHECK_SHAPES",
    "CHECK_TOLERANCE",
    "DYNAMIC_AXES",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "OnnxExportError",
    "export_onnx",
    "onnx_card_path",
]

#: Name of the graph input (float32, ``(batch, 1, height, width)``).
INPUT_NAME = "image"
#: Name of the graph output (float32, the input's shape and units).
OUTPUT_NAME = "restored"
#: Axes of input and output that are free at run time.
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
}
#: Oldest default-domain opset the exporter writes (it cannot go lower reliably).
MIN_OPSET = 18
#: Largest accepted ``|onnx − torch|`` in the check, in input intensity units
#: (the check feeds values uniform in [0, 1)).
CHECK_TOLERANCE = 1e-3
#: ``(batch, channels, height, width)`` of the check inputs: odd and even
#: sizes, one and two images, different from the export example (2, 1, 64, 96).
CHECK_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 1, 96, 160), (2, 1, 75, 53))

_EXAMPLE_SHAPE = (2, 1, 64, 96)  # batch 2: torch.export specialises axes of size 1
_ONNX_SUFFIX = ".onnx"
_CARD_SUFFIX = ".json"
_INSTALL_HINT = 'pip install "napari-emdenoise[onnx]"  (onnx, onnxscript, onnxruntime)'


class OnnxExportError(RuntimeError):
    """The exporter failed, or the exported graph disagrees with the PyTorch model."""


@dataclass(frozen=True)
class _GraphSpec:
    """What the exported graph does around the network."""

    normalize: bool
    std_floor: float
    size_multiple: int
    channels: int

    @property
    def min_size(self) -> int:
        # reflect padding by (multiple - 1) needs that many rows + 1; the engine needs 2
        return max(2, self.size_multiple)


# --------------------------------------------------------------------------- public API


def onnx_card_path(out: str | Path) -> Path:
    """Path of the JSON card written beside an exported ``.onnx`` file (same stem)."""
    return Path(out).with_suffix(_CARD_SUFFIX)


def export_onnx(
    model: str | Path,
    out: str | Path,
    *,
    opset: int | None = None,
    check: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export a registered restoration model to an ONNX file with dynamic sizes.

    Parameters
    ----------
    model : str or pathlib.Path
        A model name known to :func:`~.registry.list_models` (bundled, e.g.
        ``"hrstem"``, or a user model) or the path of a ``.safetensors`` file
        with its ``.json`` card beside it (loaded by :func:`~.registry.load_model`;
        pickle files are refused).
    out : str or pathlib.Path
        Target ``.onnx`` file. Its folder is created if missing. The model
        card is written beside it as ``<stem>.json`` (:func:`onnx_card_path`).
    opset : int, optional
        Default-domain ONNX opset, from :data:`MIN_OPSET` (18) to the newest
        the installed ``onnx`` knows. None: the exporter's default (20 with
        torch 2.13).
    check : bool
        If True, validate the file with ``onnx.checker`` and, when onnxruntime
        is installed, run it and the PyTorch model on seeded random inputs
        of the shapes :data:`CHECK_SHAPES` (values uniform in [0, 1)); the
        largest absolute difference is written to the card.
    overwrite : bool
        Replace an existing ``.onnx`` file and card.

    Returns
    -------
    pathlib.Path
        The ``.onnx`` file. The graph takes ``"image"`` — float32
        ``(batch, 1, height, width)``, raw intensities, any height and width
        of at least 2 pixels (card: ``onnx.input.min_size_px``) — and returns
        ``"restored"`` of the same shape and intensity unit. Per-image
        normalisation and padding to the network's stride happen inside the
        graph (see the module docstring); the card's ``"onnx"`` section
        records this contract.

    Raises
    ------
    ValueError
        For an unknown model name, a pickle or non-safetensors weights path,
        an ``out`` without the ``.onnx`` suffix, a folder in place of the
        file or of its parent, an opset out of range, or a card that would
        replace the source model's own card.
    FileExistsError
        If the ``.onnx`` file or its card exists and ``overwrite`` is False.
    FileNotFoundError
        If a weights path or its card does not exist.
    PermissionError
        If the output folder is not writable.
    ImportError
        If ``onnx`` or ``onnxscript`` is not installed.
    OnnxExportError
        If the exporter fails or the graph differs from the PyTorch model by
        more than :data:`CHECK_TOLERANCE`; nothing is written then.

    Examples
    --------
    >>> export_onnx("hrstem", "hrstem.onnx")  # doctest: +SKIP
    >>> import onnxruntime as ort  # doctest: +SKIP
    >>> session = ort.InferenceSession("hrstem.onnx")  # doctest: +SKIP
    >>> batch = image[None, None].astype("float32")  # (1, 1, height, width)  # doctest: +SKIP
    >>> restored = session.run(None, {"image": batch})[0][0, 0]  # doctest: +SKIP
    """
    out_path, card_path = _check_output(out, overwrite)
    if not isinstance(check, bool):
        raise ValueError(f"check must be True or False, got {check!r}")
    torch, onnx = _import_exporter()
    opset = _check_opset(opset, onnx.defs.onnx_opset_version())

    from .registry import _atomic_write, _json_default, load_model

    module, card = load_model(model)
    source_card = card.weights_path.with_suffix(_CARD_SUFFIX) if card.weights_path else None
    if source_card is not None and source_card.resolve() == card_path.resolve():
        raise ValueError(
            f"exporting to {out_path} would replace the model card {source_card} of the "
            "source weights; choose another file name or folder"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _check_writable(out_path.parent)

    spec = _graph_spec(module)
    graph = _onnx_graph_module(module, spec)
    program = _run_exporter(torch, graph, spec, opset)
    _name_output_axes(program)
    program.model.doc_string = _contract_text(spec)
    program.model.metadata_props["napari_emdenoise_card"] = card.to_json()
    checked = _save_checked(onnx, program, module, out_path, check)

    data = card.to_dict()
    opset_used = int(program.model.opset_imports.get("", opset or 0))
    data["onnx"] = _onnx_section(torch, out_path, spec, opset_used, checked)
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    _atomic_write(card_path, lambda p: p.write_text(text, encoding="utf-8"))
    return out_path


# --------------------------------------------------------------------------- checks


def _check_output(out: str | Path, overwrite: bool) -> tuple[Path, Path]:
    """Validate the target path before anything is loaded; return (onnx, card) paths."""
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise ValueError(f"out must be a file path ending in {_ONNX_SUFFIX}, got {out!r}")
    path = Path(out).expanduser()
    if path.suffix.lower() != _ONNX_SUFFIX:
        raise ValueError(f"out must end in {_ONNX_SUFFIX}, got {path.name!r}")
    card_path = onnx_card_path(path)
    for target in (path, card_path):
        if target.is_dir():
            raise ValueError(f"{target} is a folder; out must name a file")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite)")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise ValueError(f"cannot write {path.name} into {parent}: it is not a folder")
    _check_writable(parent)
    return path, card_path


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _check_writable(folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"the output folder {folder} is not writable")


def _check_opset(opset: object, newest: int) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ValueError(f"opset must be an int, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be between {MIN_OPSET} (the oldest the torch exporter writes) and "
            f"{newest} (the newest the installed onnx knows), got {opset}"
        )
    return opset


def _import_exporter() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the packages onnx and onnxscript ({exc}); {_INSTALL_HINT}"
        ) from exc
    import torch

    return torch, onnx


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _save_checked(
    onnx: Any, program: Any, model: nn.Module, out_path: Path, check: bool
) -> dict[str, Any] | None:
    """Save to a temporary file, validate, compare with torch, then move into place.

    Returns
    -------
    dict or None
        The comparison (see :func:`_compare_with_torch`); None if not run.
    """
    tmp = _temp_path(out_path)
    try:
        program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
        checked = _compare_with_torch(tmp, model) if check else None
        _publish(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return checked


def _publish(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the user's default file mode (mkstemp makes 0600) and move it to ``target``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


# --------------------------------------------------------------------------- graph


def _graph_spec(model: nn.Module) -> _GraphSpec:
    from ..engine.predictor import infer_size_multiple
    from ._normalization import NORM_REL_FLOOR

    config = getattr(model, "config", None)
    channels = getattr(config, "in_channels", None) or getattr(model, "in_channels", None) or 1
    return _GraphSpec(
        normalize=bool(getattr(model, "normalize", False)),
        std_floor=float(getattr(model, "std_floor", NORM_REL_FLOOR)),
        size_multiple=infer_size_multiple(model),
        channels=int(channels),
    )


@functools.cache
def _graph_class() -> type:
    """The export wrapper class (defined on first use so that torch loads lazily)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from ._normalization import denormalize, normalize_per_image

    class OnnxRestorer(torch.nn.Module):
        """Normalise per image, pad to the stride without branches, run, crop, map back."""

        def __init__(self, network: torch.nn.Module, spec: _GraphSpec) -> None:
            super().__init__()
            self.network = network
            self.spec = spec

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2], image.shape[-1]
            x = image
            if self.spec.normalize:
                x, mean, scale = normalize_per_image(x, self.spec.std_floor)
            m = self.spec.size_multiple
            if m > 1:
                # pad by m-1 then keep up to the next multiple of m: the same rows as a
                # reflect pad by (-height mod m), with no branch on the symbolic size
                x = F.pad(x, (0, m - 1, 0, m - 1), mode="reflect")
                x = x[..., : (height + m - 1) // m * m, : (width + m - 1) // m * m]
            y = self.network(x)[..., :height, :width]
            if self.spec.normalize:
                y = denormalize(y, mean, scale)
            return y

    return OnnxRestorer


def _onnx_graph_module(model: nn.Module, spec: _GraphSpec) -> nn.Module:
    """Copy of ``model`` with its own normalisation off, inside the export wrapper."""
    network = copy.deepcopy(model).cpu().float().eval()
    if hasattr(network, "normalize"):
        network.normalize = False
    return _graph_class()(network, spec).eval()


def _run_exporter(torch: Any, graph: nn.Module, spec: _GraphSpec, opset: int | None) -> Any:
    from torch.export import Dim

    low = spec.min_size
    axes = DYNAMIC_AXES[INPUT_NAME]
    dims = {0: Dim(axes[0], min=1), 2: Dim(axes[2], min=low), 3: Dim(axes[3], min=low)}
    b, _, h, w = _EXAMPLE_SHAPE
    example = torch.rand(b, spec.channels, max(h, 4 * low), max(w, 6 * low))
    try:
        with _quiet_exporter():
            return torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={INPUT_NAME: dims},
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many error types
        raise OnnxExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc


def _name_output_axes(program: Any) -> None:
    """Call the output axes "batch", "height", "width" like the input's.

    The exporter names them after the symbolic expression of the crop
    (e.g. ``Min(height, 2*((height + 1)//2))``), which equals ``height``.
    """
    shape = program.model.graph.outputs[0].shape
    mapping = {
        shape[axis]: name
        for axis, name in DYNAMIC_AXES[OUTPUT_NAME].items()
        if isinstance(getattr(shape[axis], "value", None), str) and shape[axis].value != name
    }
    if mapping and hasattr(program, "rename_axes"):  # torch >= 2.8
        program.rename_axes(mapping)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's irrelevant chatter (torchvision ops not registered, pytree notice)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*treespec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- check


def _check_inputs() -> list[np.ndarray]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for shape in CHECK_SHAPES]


def _torch_reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Output of the PyTorch model itself (its own normalisation and padding)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        y = model(torch.from_numpy(x).to(device))
    return y.float().cpu().numpy()


def _compare_with_torch(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """Run the ONNX file with onnxruntime and ``model``; None without onnxruntime.

    Raises
    ------
    OnnxExportError
        If onnxruntime cannot run the file or the largest difference exceeds
        :data:`CHECK_TOLERANCE`.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types
        raise OnnxExportError(f"onnxruntime cannot load the exported graph: {exc}") from exc
    diffs = []
    for x in _check_inputs():
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        expected = _torch_reference(model, x)
        if got.shape != expected.shape:
            raise OnnxExportError(
                f"the ONNX graph returned shape {got.shape} for input {x.shape}, torch "
                f"{expected.shape}"
            )
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - expected))))
    worst = max(diffs)
    if not worst <= CHECK_TOLERANCE:
        raise OnnxExportError(
            f"the ONNX graph differs from the PyTorch model by up to {worst:.3g} (tolerance "
            f"{CHECK_TOLERANCE:g}) on inputs {[list(s) for s in CHECK_SHAPES]}; not written"
        )
    return {"max_abs_diff": worst, "per_shape": diffs, "runtime": f"onnxruntime {ort.__version__}"}


# --------------------------------------------------------------------------- card


def _contract_text(spec: _GraphSpec) -> str:
    norm = (
        f"per image (x - mean) / max(std, {spec.std_floor:g}·|mean|) over height and width inside "
        "the graph, undone at the output"
        if spec.normalize
        else "none (the network is used on raw intensities)"
    )
    return (
        f"napari-emdenoise restoration network. Input '{INPUT_NAME}': float32 "
        f"(batch, {spec.channels}, height, width), raw intensities in any unit, no scaling "
        f"beforehand, height and width >= {spec.min_size} px, odd sizes allowed. Output "
        f"'{OUTPUT_NAME}': same shape and unit. Normalisation: {norm}. Padding: reflect to a "
        f"multiple of {spec.size_multiple} inside the graph, output cropped back."
    )


def _onnx_section(
    torch: Any,
    out_path: Path,
    spec: _GraphSpec,
    opset: int,
    checked: dict[str, Any] | None,
) -> dict[str, Any]:
    shape = [DYNAMIC_AXES[INPUT_NAME][0], spec.channels, "height", "width"]
    return {
        "file": out_path.name,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": shape,
            "layout": "NCHW",
            "units": "raw intensities in any unit (counts, e-/pixel, grey levels)",
            "scaling": "none: the graph normalises each image itself"
            if spec.normalize
            else "none: the network works on raw intensities",
            "min_size_px": spec.min_size,
            "odd_sizes": True,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": shape,
            "units": "same as the input",
        },
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in DYNAMIC_AXES.items()},
        "normalization": {
            "in_graph": spec.normalize,
            "formula": "(x - mean) / max(std, std_floor * |mean|) per image over height and width "
            "(population std), output * scale + mean"
            if spec.normalize
            else None,
            "std_floor": spec.std_floor if spec.normalize else None,
        },
        "padding": {
            "in_graph": spec.size_multiple > 1,
            "size_multiple": spec.size_multiple,
            "mode": "reflect at the bottom and right, output cropped to the input size",
        },
        "contract": _contract_text(spec),
        "exported_with": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=True)",
        "check": "onnx.checker + onnxruntime vs torch" if checked else "onnx.checker",
        "check_shapes": [list(s) for s in CHECK_SHAPES] if checked else [],
        "check_runtime": checked["runtime"] if checked else None,
        "max_abs_diff_vs_torch": checked["max_abs_diff"] if checked else None,
    }

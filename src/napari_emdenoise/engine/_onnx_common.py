"""What the two ONNX Runtime back ends share: export, check and publish a graph, open a session.

Used by :mod:`.onnx_backend` (image restoration, free height and width) and
:mod:`._stack4d_onnx` (4D-STEM patterns, fixed padded size). A graph is
exported with the dynamo exporter, saved to a temporary file next to its
cache entry, checked against torch on a given input and only then renamed
into place, so concurrent processes never read a half-written or wrong graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHECK_TOLERANCE", "export_program", "new_session", "publish_checked"]

#: Largest ``|onnx − torch|`` accepted by the check after export, relative to
#: the output range of the check input.
CHECK_TOLERANCE = 1e-4


def export_program(network: Any, example: Any, opset: int, dynamic_shapes: dict) -> Any:
    """``torch.onnx.export`` (dynamo) of ``network`` with input ``image``, output ``restored``.

    Parameters
    ----------
    network : torch.nn.Module
        The network in eval mode, on the CPU, float32.
    example : torch.Tensor
        Example input ``(N, C, H, W)``.
    opset : int
        Default-domain ONNX opset.
    dynamic_shapes : dict
        ``dynamic_shapes`` of :func:`torch.onnx.export` (keyed by the forward
        argument's name).

    Returns
    -------
    torch.onnx.ONNXProgram
        The exported program (not saved yet); exporter errors propagate.
    """
    import torch

    from ..models.onnx_export import _quiet_exporter

    with _quiet_exporter():
        return torch.onnx.export(
            network,
            (example,),
            input_names=["image"],
            output_names=["restored"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )


def publish_checked(program: Any, target: Path, network: Any, check: np.ndarray) -> None:
    """Save ``program``, check it against ``network`` on ``check``, atomically publish ``target``.

    Parameters
    ----------
    program : torch.onnx.ONNXProgram
        From :func:`export_program`.
    target : pathlib.Path
        The cache file; written through a temporary file in its folder and
        renamed, with the user's default file mode.
    network : torch.nn.Module
        The exported network (the reference).
    check : numpy.ndarray
        float32 ``(N, C, H, W)`` input of the check.

    Raises
    ------
    RuntimeError
        If the graph's output differs from torch's by more than
        :data:`CHECK_TOLERANCE` of the output range; nothing is published then.
    """
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        program.save(str(tmp), external_data=False)
        got = new_session(tmp, 1).run(None, {"image": check})[0]
        with torch.inference_mode():
            want = network(torch.from_numpy(check)).numpy()
        span = float(np.ptp(want)) or 1.0
        err = float(np.max(np.abs(got - want))) / span
        if not err <= CHECK_TOLERANCE:
            raise RuntimeError(f"the exported graph differs from torch by {err:.2e} of the range")
        umask = os.umask(0)  # mkstemp makes 0600 files; use the user's default mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def new_session(path: str | os.PathLike, threads: int) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

"""Resumable training checkpoints, written atomically and loaded safely.

A checkpoint holds the generator, discriminator and optimiser states, the
step and the run configuration (as JSON text). It is written to a temporary
file in the same folder and renamed into place, so a crash or a stop during
the write never leaves a truncated file behind, and it is read with
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, state dicts) plus ``config`` atomically.

    Parameters
    ----------
    path : path-like
        Destination file.
    state : dict
        Keys such as ``"step"``, ``"generator"``, ``"discriminator"``,
        ``"opt_g"``, ``"opt_d"``; values must be loadable with
        ``weights_only=True`` (tensors, containers, numbers, strings).
    config : dict
        JSON-serialisable run configuration.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    payload["config_json"] = json.dumps(config)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    state, config : dict, dict

    Raises
    ------
    ValueError
        If the file is missing, not a checkpoint, or would need to execute code.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(
            f"{path} is not a loadable napari-emdenoise checkpoint (refusing anything that "
            f"would execute code): {exc}"
        ) from exc
    if not isinstance(payload, dict) or "config_json" not in payload:
        raise ValueError(f"{path} is not a napari-emdenoise checkpoint")
    config = json.loads(payload.pop("config_json"))
    return payload, config

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

__all__ = ["CHECKPOINT_NAME", "check_resumable", "load_checkpoint", "save_checkpoint"]

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
    try:
        config = json.loads(payload.pop("config_json"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} holds an unreadable run configuration: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no run configuration")
    return payload, config


#: Run settings that fix the shapes of the saved network and optimiser states.
_SHAPE_KEYS = ("arch", "model_config", "init_from")


def _network_settings(config: dict[str, Any]) -> dict[str, Any]:
    out = {key: config.get(key) for key in _SHAPE_KEYS}
    weights = config.get("loss_weights") or {}
    adversarial = isinstance(weights, dict) and (weights.get("adversarial") or 0) > 0
    out["disc_channels"] = config.get("disc_channels") if adversarial else None
    return out


def check_resumable(path: str | os.PathLike, config: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint written for another network.

    Parameters
    ----------
    path : path-like
        The checkpoint (nothing is checked when it does not exist).
    config : dict
        The new run's configuration (``TrainConfig.to_dict()``): its
        ``arch``, ``model_config``, ``init_from`` and, for adversarial runs,
        ``disc_channels`` must equal the checkpoint's.

    Raises
    ------
    ValueError
        If the checkpoint is unreadable or belongs to another configuration;
        the message names the differences and points to ``--restart``.
    """
    path = Path(path)
    if not path.is_file():
        return
    _, saved = load_checkpoint(path)
    new_config = json.loads(json.dumps(config, default=str))  # tuples → lists, as saved
    old, new = _network_settings(saved), _network_settings(new_config)
    differences = [
        f"{key} {old[key]!r} (checkpoint) vs {new[key]!r} (now)"
        for key in old
        if old[key] != new[key] and not (key == "disc_channels" and None in (old[key], new[key]))
    ]
    if differences:
        raise ValueError(
            f"the checkpoint {path} belongs to another configuration: "
            + "; ".join(differences)
            + ". Resume with the same settings, start afresh with --restart (the checkpoint "
            "is replaced), or choose another --out folder"
        )

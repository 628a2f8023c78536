"""Inference engine: device choice, seamless tiling and batched restoration.

``from napari_emdenoise.engine import restore`` is the usual entry point.
The names are loaded on first use, so importing this package does not import
torch (napari start-up stays fast); :mod:`.tiling` is pure numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BACKENDS",
    "Cancelled",
    "OnnxPredictor",
    "TileGrid",
    "TiledPredictor",
    "assemble",
    "autocast_context",
    "available_devices",
    "blend_window",
    "choose_restoration",
    "estimate_risk",
    "is_oom_error",
    "resolve_device",
    "restore",
    "restore_dask",
]

_WHERE = {
    "BACKENDS": "predictor",
    "OnnxPredictor": "onnx_backend",
    "Cancelled": "predictor",
    "TiledPredictor": "predictor",
    "restore": "predictor",
    "restore_dask": "predictor",
    "TileGrid": "tiling",
    "assemble": "tiling",
    "blend_window": "tiling",
    "autocast_context": "device",
    "available_devices": "device",
    "is_oom_error": "device",
    "resolve_device": "device",
    "estimate_risk": "risk",
    "choose_restoration": "risk",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f".{_WHERE[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

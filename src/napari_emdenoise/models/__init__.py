"""Networks and the model registry.

Importing this package is cheap: the public names are resolved on first
access (PEP 562), so torch is imported only when a network class or a
registry function that needs it is used.

Modules
-------
cgrdn
    CGRDN restoration generator (Lobato, Friedrich & Van Aert 2023) and its named configurations.
discriminators
    PatchGAN and multi-scale patch discriminators.
dncnn
    DnCNN denoiser and its bias-free variant (Vincent, Mohan, Fernandez-Granda & Crozier 2020).
registry
    Architecture table, model cards, safetensors save/load, model listing.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "CGRDN": "cgrdn",
    "CGRDNConfig": "cgrdn",
    "CGRDN_CONFIGS": "cgrdn",
    "PatchDiscriminator": "discriminators",
    "MultiScalePatchDiscriminator": "discriminators",
    "DnCNN": "dncnn",
    "DNCNN_CONFIGS": "dncnn",
    "DNCNN_BF_CONFIGS": "dncnn",
    "NORM_STD_FLOOR": "_normalization",
    "normalize_per_image": "_normalization",
    "denormalize": "_normalization",
    "ARCHITECTURES": "registry",
    "ModelCard": "registry",
    "build_model": "registry",
    "bundled_weights_dir": "registry",
    "list_models": "registry",
    "load_model": "registry",
    "save_model": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""The :class:`Layer` record that ties a distortion function to its parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._params import LayerParams

__all__ = ["Layer", "LayerFunc"]

LayerFunc = Callable[[np.ndarray, LayerParams, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Layer:
    """One distortion layer of a pipeline.

    Attributes
    ----------
    name : str
        Identifier used as the attribute name in the pipeline parameters and
        as the stage name (``"shot_noise"``, ``"scan_jitter"``, ...).
    func : callable
        ``func(image, params, rng) -> image``; pure: never modifies ``image``.
    params_type : type
        The :class:`LayerParams` subclass ``func`` takes.
    equation : str
        Equation number(s) in Lobato et al. (2023) (e.g. ``"30"`` or ``"41-42"``).
    title : str
        Human-readable name shown in the playground.
    applies_to_target : bool
        True for layers the paper applies identically to the clean target
        (TEM camera MTF, eq 27; post-processing interpolation, annotations and
        crops). Such a ``func`` must accept a stack ``(N, H, W)`` and apply the
        *same* random transform to every slice.
    """

    name: str
    func: LayerFunc
    params_type: type[LayerParams]
    equation: str
    title: str
    applies_to_target: bool = False

"""One synthetic example: clean image → distortion model → (target, distorted).

Shared by the ``emdenoise simulate`` command, the sample data and the
playground so that the same seed gives the same images everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .noise.pipeline import NoiseParams, make_pair, sample_params
from .synth import generate_clean

__all__ = ["Simulation", "simulate", "simulation_rngs"]


def simulation_rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for (clean image, random parameters, distortion) of one seed."""
    return tuple(np.random.default_rng([int(seed), stream]) for stream in range(3))


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    Attributes
    ----------
    clean : numpy.ndarray
        Generated undistorted image in [0, 1].
    target : numpy.ndarray
        What a perfect restoration returns: ``clean`` with the layers the paper
        applies to both images (TEM camera MTF, post-processing transforms).
    distorted : numpy.ndarray
        The distorted image.
    params : NoiseParams
        Distortion parameters used.
    info : dict
        What the clean-image generator drew (specimen type, pixel size, ...).
    """

    clean: np.ndarray
    target: np.ndarray
    distorted: np.ndarray
    params: NoiseParams
    info: dict[str, Any]


def simulate(
    modality: str = "stem",
    kind: str = "hr",
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    params: NoiseParams | None = None,
    random_params: bool = False,
) -> Simulation:
    """Generate one clean image and distort it.

    Parameters
    ----------
    modality : {"stem", "tem", "sem"}
    kind : {"hr", "lr"}
        High-resolution (atomic columns) or low-resolution (particles, grains).
    shape : (int, int)
        Image shape in pixels.
    seed : int
        Seed; the same seed gives identical images.
    params : NoiseParams, optional
        Distortion parameters; default: the defaults, or random ones if
        ``random_params``.
    random_params : bool
        Draw the parameters as the paper does (ignored when ``params`` is given).
    """
    rng_clean, rng_params, rng_noise = simulation_rngs(seed)
    clean, info = generate_clean(kind=kind, shape=shape, rng=rng_clean, return_info=True)
    if params is None:
        params = (
            sample_params(modality, rng_params, pixel_size=info.get("pixel_size_A"))
            if random_params
            else NoiseParams.default(modality)
        )
    target, distorted = make_pair(clean, modality, params, rng_noise)
    return Simulation(clean, target, distorted, params, info)

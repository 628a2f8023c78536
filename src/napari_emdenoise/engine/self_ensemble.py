"""Geometric self-ensemble: average a restoration over flips and 90° rotations of the frame.

A network is not exactly equivariant to flips and rotations, so its errors on
``T(x)`` and on ``x`` differ in part; restoring the transformed frames,
transforming the results back and averaging cancels that part (the
"self-ensemble" of Timofte, Rothe and Van Gool, "Seven ways to improve
example-based single image super resolution", CVPR 2016). It costs one network
pass per transform and changes nothing else: the average of affine-equivariant
restorations is affine-equivariant.

Which transforms are safe depends on what the network was trained to undo.
The S(T)EM models also correct scan distortions (fast-scan blur and lag, line
jitter), which run along x in one direction: a vertical flip keeps both, a
horizontal flip reverses the lag and a 90° rotation turns the distortion along
y, where the network does not correct it. Hence the sizes:

* ``1``: the network once (default);
* ``2``: also the frame flipped upside down; safe for every model;
* ``8``: all flips and 90° rotations (the dihedral group of the square); for
  TEM and SEM images, and for S(T)EM images limited by counting noise rather
  than by scan distortions.

On the multislice physics set (``benchmarks/restore_quality.py``), 8
transforms gained 0.3–0.7 dB on HAADF STEM at 5–20 counts/pixel and about
0.1 dB on HRTEM; 2 transforms about half of that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["ENSEMBLE_SIZES", "check_ensemble", "ensemble_transforms", "output_shapes"]

#: Allowed numbers of transforms.
ENSEMBLE_SIZES: tuple[int, ...] = (1, 2, 8)

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def check_ensemble(size: object) -> int:
    """Validate an ensemble size; returns it as an int."""
    is_int = isinstance(size, int | np.integer) and not isinstance(size, bool)
    if not is_int or size not in ENSEMBLE_SIZES:
        raise ValueError(
            f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))} (transforms of the "
            f"frame whose restorations are averaged), got {size!r}"
        )
    return int(size)


def _rotation(k: int, flip: bool) -> Transform:
    def forward(a: np.ndarray) -> np.ndarray:
        a = a[::-1] if flip else a
        return np.ascontiguousarray(np.rot90(a, k))

    def inverse(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, -k)
        return np.ascontiguousarray(a[::-1] if flip else a)

    return forward, inverse


def ensemble_transforms(size: int) -> list[Transform]:
    """``(forward, inverse)`` pairs of the ensemble, the identity first.

    Parameters
    ----------
    size : {1, 2, 8}
        See the module notes.

    Returns
    -------
    list of tuple of callable
        Each ``forward`` maps a 2-D frame to the transformed frame and
        ``inverse`` maps a restoration of it back to the frame's geometry.
    """
    size = check_ensemble(size)
    if size == 1:
        return [_rotation(0, False)]
    if size == 2:
        return [_rotation(0, False), _rotation(0, True)]
    return [_rotation(k, flip) for flip in (False, True) for k in range(4)]


def output_shapes(shape: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """Frame shapes the network sees, one per transform (rotations swap the axes)."""
    h, w = shape
    return [(h, w) if i % 2 == 0 or size < 8 else (w, h) for i in range(size)]

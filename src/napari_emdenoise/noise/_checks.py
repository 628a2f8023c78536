"""Argument checks shared by every distortion layer (TEM, S(T)EM, post-processing).

Every layer function ``layer(image, params, rng)`` starts with
:func:`check_layer_call`, so all layers accept and reject the same inputs with
the same messages.
"""

from __future__ import annotations

import numpy as np

from .._validation import as_float_image
from ._params import LayerParams

__all__ = ["MIN_SIZE", "check_image", "check_layer_call"]

#: Smallest accepted image height and width, in pixels (a 1-pixel axis has no
#: spectrum and no neighbours to interpolate between).
MIN_SIZE = 2


def check_image(image: object, *, stack: bool = False, name: str = "image") -> np.ndarray:
    """Return a float32 copy of a layer's input image after checking it.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` image; with ``stack`` also ``(N, H, W)``. Boolean, integer
        and float dtypes are accepted and converted to float32 (no rescaling:
        the noise model expects the [0, 1] intensity scale).
    stack : bool
        Whether a stack ``(N, H, W)`` is allowed (layers with
        ``applies_to_target``); it may hold a single slice.
    name : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray
        New C-contiguous float32 array of the input's shape.

    Raises
    ------
    ValueError
        If the image is non-numeric, empty, has the wrong number of
        dimensions, NaN/inf values, or a height or width below
        :data:`MIN_SIZE` pixels.
    """
    x = as_float_image(image, ndim=(2, 3) if stack else 2, name=name)
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(
            f"{name} of shape {x.shape} is too small: height and width need at least "
            f"{MIN_SIZE} pixels"
        )
    return x


def check_layer_call(
    image: object,
    params: LayerParams,
    params_type: type[LayerParams],
    rng: object,
    *,
    stack: bool = False,
) -> np.ndarray:
    """Check the arguments of a layer function; return a float32 copy of ``image``.

    Parameters
    ----------
    image : array_like
        The layer's input, checked with :func:`check_image`.
    params : LayerParams
        Must be an instance of ``params_type``; its values are validated.
    params_type : type
        The layer's parameter class.
    rng : numpy.random.Generator
        Must be a numpy ``Generator``.
    stack : bool
        Whether ``(N, H, W)`` stacks are allowed.

    Returns
    -------
    numpy.ndarray
        New float32 array of the input's shape.

    Raises
    ------
    TypeError
        If ``params`` or ``rng`` has the wrong type.
    ValueError
        If a parameter value or the image is invalid.
    """
    if not isinstance(params, params_type):
        raise TypeError(
            f"expected {params_type.__name__}, got {type(params).__name__}; "
            f"build one with {params_type.__name__}(...) or {params_type.__name__}.sample(rng)"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    params.validate()
    return check_image(image, stack=stack)

"""The physical distortion model of TEM, S(T)EM and SEM images (seed 001).

Public entry points: :func:`distort`, :func:`make_pair`, :func:`sample_params`
and :class:`NoiseParams`; :func:`fit_noise` estimates dose and read noise of a
real micrograph (:class:`NoiseFit`, convertible to :class:`NoiseParams`). Each
distortion layer is also usable on its own from :mod:`.tem`, :mod:`.stem` and
:mod:`.post`. Pure numpy/scipy: no torch, no Qt.
"""

from .fit import NoiseFit, fit_noise
from .pipeline import MODALITIES, NoiseParams, distort, layers_for, make_pair, sample_params

__all__ = [
    "MODALITIES",
    "NoiseFit",
    "NoiseParams",
    "distort",
    "fit_noise",
    "layers_for",
    "make_pair",
    "sample_params",
]

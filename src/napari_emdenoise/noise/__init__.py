"""The physical distortion model of TEM, S(T)EM and SEM images (Lobato et al. 2023).

Public entry points: :func:`distort`, :func:`make_pair`, :func:`sample_params`
and :class:`NoiseParams`; :func:`fit_noise` estimates dose and read noise of a
real micrograph (:class:`NoiseFit`, convertible to :class:`NoiseParams`). Each
distortion layer is also usable on its own from :mod:`.tem`, :mod:`.stem` and
:mod:`.post`. Pure numpy/scipy: no torch, no Qt.

Reference: I. Lobato, T. Friedrich and S. Van Aert, "Deep convolutional neural
networks to restore single-shot electron microscopy images", arXiv:2303.17025
(2023); equation numbers refer to it.
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

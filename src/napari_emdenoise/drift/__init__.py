"""Drift correction of EM frame pairs and movies (Vasudevan & Jesse, Microscopy and
Microanalysis, 2019): denoise → normalised cross-correlation → CNN shift regressor.

``estimate_shift(reference, moving)`` registers a pair and returns ``(dy, dx)`` in
pixels (the convention of ``skimage.registration.phase_cross_correlation``) with
its uncertainty; ``align_stack(frames)`` aligns a movie. Modules:
:mod:`.correlation` (overlap-normalised cross-correlation, phase correlation),
:mod:`.regressor` (the CNN), :mod:`.pipeline` (the two entry points),
:mod:`.mean_reference` (frames registered to the mean of the others),
:mod:`.shifting` (sub-pixel translation),
:mod:`.synthetic` (pairs and movies with known drift), :mod:`.training`.
Headless: no Qt or napari; torch is imported only when a network is used.
"""

from .pipeline import (
    DEFAULT_DENOISER,
    METHODS,
    REFERENCES,
    AlignmentInfo,
    ShiftEstimate,
    align_stack,
    apply_shift,
    chain_shifts,
    estimate_shift,
)

__all__ = [
    "DEFAULT_DENOISER",
    "METHODS",
    "REFERENCES",
    "AlignmentInfo",
    "ShiftEstimate",
    "align_stack",
    "apply_shift",
    "chain_shifts",
    "estimate_shift",
]

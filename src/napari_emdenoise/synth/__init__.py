"""Clean (undistorted) EM image generator of Lobato et al. (2023), "Data generation".

``generate_clean("hr" | "lr", shape, rng)`` returns a float32 image in [0, 1]
with maximum 1. The building blocks are public in :mod:`.atomic` (atomic
specimens), :mod:`.lowres` (low-magnification objects) and :mod:`.contrast`
(eqs 23–26). Pure numpy/scipy/scikit-image: no torch, Qt or napari.

Reference: I. Lobato, T. Friedrich and S. Van Aert, "Deep convolutional neural
networks to restore single-shot electron microscopy images", arXiv:2303.17025
(2023); equation numbers refer to it.
"""

from ._clean import KINDS, generate_clean

__all__ = ["KINDS", "generate_clean"]

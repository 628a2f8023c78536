"""Headless evaluation tools: measures that a restoration cannot game.

Only numpy and scipy are imported here; optional back-ends (``bm3d``) are
imported when the function that needs them is called.

Modules
-------
vst
    Generalized Anscombe transform for Poisson–Gaussian noise, its exact
    unbiased inverse (Mäkitalo & Foi, 2013) and BM3D in the stabilised domain.
columns
    Atom-column refinement (2-D Gaussian or centre of mass) and the column
    position / intensity errors of a restored image.
crlb
    The Cramér–Rao lower bound of a column position measured on Poisson counts:
    the floor no restoration can take an unbiased measurement below.
probes
    The lattice probe (Gaussian columns on a lag-free lattice with Poisson
    noise) and the defect probe (the same with vacancies and substitutions),
    with the share of the defect contrast a restoration keeps.
spectra
    The Nyquist-spike measure of a 2-px checkerboard.
transfer
    The gain of a restoration on a fine lattice, per period (does it erase it?).
bragg
    The same question on a real micrograph, without a ground truth: the share
    of each lattice peak of its spectrum that a restoration keeps.
metrics
    PSNR and SSIM with the clean image's data range, and the oracle Gaussian filter.
"""

from __future__ import annotations

from .bragg import BraggPeaks, bragg_peaks, bragg_transfer
from .columns import (
    ColumnFit,
    ColumnReference,
    column_errors,
    column_reference,
    integrated_intensity,
    refine_columns,
)
from .crlb import position_crlb, shift_gradient
from .metrics import best_gaussian, psnr, ssim
from .probes import (
    DefectContrast,
    DefectProbe,
    LatticeProbe,
    defect_contrast,
    defect_probe,
    lattice_probe,
    site_contrast,
)
from .spectra import (
    nyquist_amplitude,
    nyquist_excess,
    nyquist_ratio,
    nyquist_spikes,
    periodic_component,
)
from .transfer import lattice_gain, lattice_pattern
from .vst import (
    bm3d_gat,
    estimate_poisson_gaussian,
    gat_forward,
    gat_inverse,
    vst_denoise,
)

__all__ = [
    "BraggPeaks",
    "ColumnFit",
    "ColumnReference",
    "DefectContrast",
    "DefectProbe",
    "LatticeProbe",
    "best_gaussian",
    "bragg_peaks",
    "bragg_transfer",
    "bm3d_gat",
    "column_errors",
    "column_reference",
    "defect_contrast",
    "defect_probe",
    "estimate_poisson_gaussian",
    "gat_forward",
    "gat_inverse",
    "integrated_intensity",
    "position_crlb",
    "lattice_gain",
    "lattice_pattern",
    "lattice_probe",
    "nyquist_amplitude",
    "nyquist_excess",
    "nyquist_ratio",
    "nyquist_spikes",
    "periodic_component",
    "psnr",
    "refine_columns",
    "site_contrast",
    "shift_gradient",
    "ssim",
    "vst_denoise",
]

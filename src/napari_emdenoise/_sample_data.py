"""Sample data for File ▸ Open Sample ▸ EM Denoise, generated locally (no download).

Each sample is a distorted micrograph and its clean reference (hidden; show it
to compare), calibrated in nm, with the specimen record and the noise settings
in the layer metadata. The specimens (:mod:`napari_emdenoise.synth.samples`)
are fixed textbook cases, so the bundled models can be tried on something a
microscopist recognises:

* ``hrstem_grain_boundary`` — HAADF-STEM of a perovskite [001] bicrystal with a
  Σ5 tilt grain boundary and half-empty A-site columns, 0.12 Å/pixel, 10 e⁻/pixel;
  restore it with ``hrstem``.
* ``lrstem_particles`` — HAADF-STEM of nanoparticles on a carbon film,
  0.4 nm/pixel, 5 e⁻/pixel; restore it with ``lrstem``.
* ``stem4d_stack`` — a 24 × 24 scan of 64² convergent-beam diffraction
  patterns at ≈ 1000 counts each (4D-STEM), calibrated in Å (scan) and mrad
  (detector); open the 4D-STEM dock to see its virtual images and denoise it.
* ``drifting_movie`` — a 30-frame in-situ TEM movie (256², 10 e⁻/pixel) of
  particles on a film whose field of view drifts as a random walk; align it in
  the Drift correction dock and compare with the true drift in its metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .noise.pipeline import NoiseParams, make_pair
from .synth.samples import perovskite_grain_boundary, supported_particles

__all__ = [
    "SAMPLES",
    "drifting_movie",
    "hrstem_grain_boundary",
    "lrstem_particles",
    "sample_pair",
    "stem4d_stack",
]

#: key → (specimen, kwargs, pixel size in nm, dose in e⁻/pixel, scan-jitter on, title)
SAMPLES: dict[str, tuple[Any, dict, float, float, bool, str]] = {
    "hrstem_grain_boundary": (
        perovskite_grain_boundary,
        {"pixel_size": 0.12},
        0.012,
        10.0,
        True,
        "HR-STEM grain boundary",
    ),
    "lrstem_particles": (
        supported_particles,
        {"pixel_size": 0.4},
        0.4,
        5.0,
        False,
        "LR-STEM nanoparticles",
    ),
}


def sample_pair(key: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray, NoiseParams, dict]:
    """``(target, distorted, params, specimen info)`` of the sample ``key`` (headless).

    Parameters
    ----------
    key : str
        One of :data:`SAMPLES`.
    seed : int
        Seed of the distortion.
    """
    if key not in SAMPLES:
        raise ValueError(f"unknown sample {key!r}; known: {sorted(SAMPLES)}")
    specimen, kwargs, pixel_nm, dose, jitter, _title = SAMPLES[key]
    clean, info = specimen((512, 512), rng=0, **kwargs)
    layers = dict(NoiseParams.default("stem").layers)
    layers["detector_noise"] = layers["detector_noise"].replace(dose=dose)
    jitter_layer = layers["scan_jitter"].replace(enabled=jitter)
    if jitter:  # its amplitudes are in Å: tell it the pixel size
        jitter_layer = jitter_layer.replace(pixel_size=10.0 * pixel_nm)
    layers["scan_jitter"] = jitter_layer
    params = NoiseParams("stem", layers).validate()
    target, distorted = make_pair(clean, "stem", params, np.random.default_rng(seed))
    return target, distorted, params, info


def _layers(key: str) -> list[tuple]:
    target, distorted, params, info = sample_pair(key)
    _specimen, _kwargs, pixel_nm, dose, _jitter, title = SAMPLES[key]
    meta = {
        "pixel_size_nm": pixel_nm,
        "dose_e_per_px": dose,
        "noise_params": params.to_dict(),
        "specimen": info,
    }
    common = {"scale": (pixel_nm, pixel_nm), "units": ("nm", "nm"), "metadata": meta}
    return [
        (target, {**common, "name": f"{title} clean reference", "visible": False}),
        (distorted, {**common, "name": f"{title} distorted"}),
    ]


def hrstem_grain_boundary() -> list[tuple]:
    """HAADF-STEM of a perovskite bicrystal (512², 0.12 Å/px), distorted + clean reference."""
    return _layers("hrstem_grain_boundary")


def lrstem_particles() -> list[tuple]:
    """HAADF-STEM of nanoparticles on carbon (512², 0.4 nm/px), distorted + clean reference."""
    return _layers("lrstem_particles")


# -- 4D-STEM ------------------------------------------------------------------------------------
#: Layer name of the 4D-STEM sample (its clean reference: ``"<name> clean reference"``).
STEM4D_NAME = "4D-STEM scan"


def stem4d_stack() -> list[tuple]:
    """A synthetic 4D-STEM scan (24 × 24 positions × 64² patterns, ≈ 1000 counts/pattern).

    Two 4-D layers, ``(scan_y, scan_x, det_y, det_x)``, scaled in Å on the scan
    axes and mrad on the detector axes: the noisy counts and the clean expected
    counts (hidden, for comparison).
    """
    from .synth.samples import DIFFRACTION_SCAN, diffraction_scan

    noisy, clean, calibration = diffraction_scan()
    scan, det = float(calibration["scan_step"]), float(calibration["detector_step"])
    units = (calibration["scan_units"],) * 2 + (calibration["detector_units"],) * 2
    meta = {
        "stem4d_calibration": calibration,
        "counts_per_pattern": float(DIFFRACTION_SCAN["counts"]),
        "axes": ["scan_y", "scan_x", "det_y", "det_x"],
        "specimen": "synthetic convergent-beam diffraction, counting detector (Poisson)",
    }
    common = {"scale": (scan, scan, det, det), "units": units, "metadata": meta}
    return [
        (clean, {**common, "name": f"{STEM4D_NAME} clean reference", "visible": False}),
        (noisy, {**common, "name": STEM4D_NAME}),
    ]


# -- drift ----------------------------------------------------------------------------------------
#: Layer name of the drifting-movie sample.
MOVIE_NAME = "drifting TEM movie"
#: Nominal pixel size of the movie sample, nm (the synthetic scene has no intrinsic scale).
MOVIE_PIXEL_NM = 0.5


def drifting_movie() -> list[tuple]:
    """A synthetic in-situ TEM movie (30 frames of 256², 10 e⁻/px) drifting as a random walk.

    The true registration shift of every frame onto the first (pixels, the
    convention of :func:`napari_emdenoise.drift.align_stack`) is stored in the
    layer metadata as ``drift_true_shifts_px``.
    """
    from .drift.synthetic import drifting_movie as make_movie

    dose = 10.0
    frames, shifts, info = make_movie(
        30, (256, 256), np.random.default_rng(11), content="mixed", modality="tem", dose=dose
    )
    meta = {
        "dose_e_per_px": dose,
        "drift_true_shifts_px": shifts.tolist(),
        "specimen": "synthetic particles on an amorphous film (mixed scene), TEM noise model",
        "pixel_size_nm": MOVIE_PIXEL_NM,
        "note": "nominal pixel size; drift step 1.5 px per frame and axis (random walk)",
    }
    return [
        (
            frames,
            {
                "name": MOVIE_NAME,
                "scale": (1.0, MOVIE_PIXEL_NM, MOVIE_PIXEL_NM),
                "units": ("", "nm", "nm"),
                "axis_labels": ("frame", "y", "x"),
                "metadata": meta,
            },
        )
    ]

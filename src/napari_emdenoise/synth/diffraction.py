"""Synthetic 4D-STEM data: clean and noisy convergent-beam diffraction patterns.

Clean/noisy pattern pairs for training the Pix2Pix denoiser of Cao et al.,
"Denoising of 4D-STEM Dataset using Pix2Pix GAN Algorithm and Artifact
Reduction Strategy" (2024), and small synthetic scans for tests, demos and
benchmarks:

* :func:`make_diffraction_pair` — one ``(noisy, clean)`` pattern pair;
* :func:`simulate_4dstem` — a ``(scan_y, scan_x, det_y, det_x)`` stack whose
  orientation, thickness and beam position change across the scan.

Physics (see :mod:`._diffraction_crystal` and :mod:`._diffraction_detector`):
Bragg disks of a random 2-D reciprocal lattice (square, hexagonal,
rectangular, centred or oblique; zone-axis-like or tilted off-axis so that a
Laue circle of excited reflections appears), separated (small convergence) or
overlapping (large convergence); two-beam intensities that depend on
thickness and excitation error, with rocking-curve contrast inside every
disk and deficiency lines in the transmitted disk; inelastic and thermal
diffuse background, an amorphous ring; beam/descan shift, grains of different
orientation, orientation gradients, a thickness wedge and vacuum regions
across a scan. Detector: counting or integrating, MTF, Poisson noise at 10–10⁵
counts per pattern, read noise, hot and dead pixels, saturation.

Units: counts (electrons) per pixel; scan step in Å; detector step in mrad.
Every random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._validation import check_fits_in_memory
from ._diffraction_crystal import CrystalState, Specimen, draw_specimen, render_pattern
from ._diffraction_detector import DetectorState, apply_detector, draw_detector
from ._random import as_generator, log_uniform

__all__ = [
    "COUNTS_RANGE",
    "DiffractionConfig",
    "make_diffraction_pair",
    "simulate_4dstem",
]

#: Dose range (counts per pattern) the training pairs cover (Cao et al. 2024: low-dose 4D-STEM).
COUNTS_RANGE: tuple[float, float] = (10.0, 1e5)

#: Accepted pattern sides, in pixels.
MIN_PATTERN_SIZE, MAX_PATTERN_SIZE = 16, 1024


@dataclass
class DiffractionConfig:
    """Ranges of the random specimen, scan and detector (all have defaults).

    Attributes
    ----------
    counts_range : tuple of float
        Dose per pattern (counts) drawn log-uniformly when ``counts=None``;
        within [1, 10⁸].
    overlap_probability : float
        Probability of a large convergence angle with overlapping disks, [0, 1].
    overlap_ratio_range : tuple of float
        Disk radius of overlapping disks as a multiple of the first reflection's
        distance |g1|, within [0.5, 3].
    coherent_probability : float
        Probability that overlapping disks interfere (a coherent probe: fringes and
        probe-position-dependent overlaps, as in large-convergence CBED), [0, 1].
    defocus_range : tuple of float
        Probe defocus (Å) of the coherent patterns, within [−5000, 5000].
    zone_axis_probability : float
        Probability that a grain sits near a zone axis (tilt < 0.15 |g1|)
        rather than off-axis (tilt 0.5–2.5 |g1|, a Laue circle), [0, 1].
    max_grains : int
        Largest number of grains of different orientation in a scan, ≥ 1.
    vacuum_probability : float
        Probability that part of a scan is over vacuum/amorphous support, [0, 1].
    thickness_range : tuple of float
        Specimen thickness at the scan centre (Å), within [10, 5000].
    scan_step : float
        Probe step (Å).
    descan_max : float
        Largest beam/descan shift across the scan, as a fraction of the pattern side.
    centre_offset_max : float
        Largest offset of the transmitted beam from the detector centre, fraction of the side.
    counting_probability : float
        Probability of a counting detector (else integrating), [0, 1].
    mtf_sigma_range : tuple of float
        Detector PSF Gaussian σ (pixels).
    read_noise_range : tuple of float
        Read-noise σ of integrating detectors (counts).
    defect_fraction_range : tuple of float
        Fraction of hot and of dead pixels.
    saturation_probability : float
        Probability that the detector saturates below the brightest pixel, [0, 1].
    """

    counts_range: tuple[float, float] = COUNTS_RANGE
    overlap_probability: float = 0.3
    overlap_ratio_range: tuple[float, float] = (0.55, 1.4)
    coherent_probability: float = 0.0
    defocus_range: tuple[float, float] = (-300.0, 300.0)
    zone_axis_probability: float = 0.5
    max_grains: int = 3
    vacuum_probability: float = 0.15
    thickness_range: tuple[float, float] = (100.0, 1500.0)
    scan_step: float = 5.0
    descan_max: float = 0.05
    centre_offset_max: float = 0.08
    counting_probability: float = 0.6
    mtf_sigma_range: tuple[float, float] = (0.0, 0.8)
    read_noise_range: tuple[float, float] = (0.0, 0.5)
    defect_fraction_range: tuple[float, float] = (0.0, 1e-3)
    saturation_probability: float = 0.15

    def __post_init__(self) -> None:
        for name in (
            "overlap_probability",
            "coherent_probability",
            "zone_axis_probability",
            "vacuum_probability",
            "counting_probability",
            "saturation_probability",
        ):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        lo, hi = (float(v) for v in self.counts_range)
        if not (1.0 <= lo <= hi <= 1e8):
            raise ValueError(
                f"counts_range must satisfy 1 ≤ low ≤ high ≤ 1e8, got {self.counts_range}"
            )
        lo, hi = (float(v) for v in self.thickness_range)
        if not (10.0 <= lo <= hi <= 5000.0):
            raise ValueError(
                f"thickness_range must lie within [10, 5000] Å, got {self.thickness_range}"
            )
        lo, hi = (float(v) for v in self.overlap_ratio_range)
        if not (0.5 <= lo <= hi <= 3.0):
            raise ValueError(
                f"overlap_ratio_range must satisfy 0.5 ≤ low ≤ high ≤ 3, got "
                f"{self.overlap_ratio_range}"
            )
        lo, hi = (float(v) for v in self.defocus_range)
        if not (-5000.0 <= lo <= hi <= 5000.0):
            raise ValueError(
                f"defocus_range must lie within [-5000, 5000] Å, got {self.defocus_range}"
            )
        if int(self.max_grains) < 1:
            raise ValueError(f"max_grains must be ≥ 1, got {self.max_grains}")
        if not self.scan_step > 0:
            raise ValueError(f"scan_step must be positive (Å), got {self.scan_step}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (ranges as lists, as JSON gives them back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffractionConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        for key in (
            "counts_range",
            "thickness_range",
            "mtf_sigma_range",
            "read_noise_range",
            "defect_fraction_range",
            "overlap_ratio_range",
            "defocus_range",
        ):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _check_pattern_shape(shape: object) -> tuple[int, int]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"pattern_shape must be a pair (det_y, det_x) of pixels, got {shape!r}")
    out = []
    for side in shape:
        if not isinstance(side, numbers.Integral) or isinstance(side, bool):
            raise ValueError(f"pattern_shape entries must be integers, got {shape!r}")
        if not MIN_PATTERN_SIZE <= int(side) <= MAX_PATTERN_SIZE:
            raise ValueError(
                f"pattern_shape {tuple(shape)!r}: every side must be {MIN_PATTERN_SIZE}–"
                f"{MAX_PATTERN_SIZE} detector pixels"
            )
        out.append(int(side))
    return out[0], out[1]


def _check_scan_shape(shape: object) -> tuple[int, int]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"scan_shape must be a pair (scan_y, scan_x), got {shape!r}")
    out = []
    for side in shape:
        if not isinstance(side, numbers.Integral) or isinstance(side, bool) or int(side) < 1:
            raise ValueError(f"scan_shape entries must be positive integers, got {shape!r}")
        out.append(int(side))
    return out[0], out[1]


def _counts(counts: object, cfg: DiffractionConfig, rng: np.random.Generator) -> float:
    if counts is None:
        return float(log_uniform(rng, *cfg.counts_range))
    if isinstance(counts, bool) or not isinstance(counts, numbers.Real):
        raise ValueError(f"counts must be a number of electrons per pattern, got {counts!r}")
    value = float(counts)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"counts must be a positive finite number per pattern, got {counts!r}")
    return value


class _ScanModel:
    """Orientation, thickness, beam position and vacuum as smooth functions of probe position."""

    def __init__(
        self,
        rng: np.random.Generator,
        spec: Specimen,
        cfg: DiffractionConfig,
        scan_shape: tuple[int, int],
        pattern_shape: tuple[int, int],
    ) -> None:
        ny, nx = scan_shape
        h, w = pattern_shape
        self.scan_shape = scan_shape
        self.scan_step = float(cfg.scan_step)
        g1 = float(np.hypot(*spec.basis[0]))
        n_grains = int(rng.integers(1, int(cfg.max_grains) + 1))
        self.seeds = rng.uniform(0, 1, size=(n_grains, 2))
        self.grains = []
        for _ in range(n_grains):
            if rng.random() < cfg.zone_axis_probability:
                tilt_len = rng.uniform(0.0, 0.15) * g1
            else:
                tilt_len = rng.uniform(0.5, 2.5) * g1
            phi = rng.uniform(0, 2 * np.pi)
            self.grains.append(
                {
                    "rotation": rng.uniform(0, 2 * np.pi),
                    "tilt": tilt_len * np.array([np.cos(phi), np.sin(phi)]),
                    # bending: tilt change (Å⁻¹) and rotation change (rad) across the scan
                    "dtilt": rng.normal(0.0, 0.1 * g1, size=(2, 2)),
                    "drot": rng.normal(0.0, 0.02),
                }
            )
        t0 = rng.uniform(*cfg.thickness_range)
        wedge_dir = rng.uniform(0, 2 * np.pi)
        self.thickness = (t0, rng.uniform(0.0, 0.6) * t0, wedge_dir)
        self.vacuum = None
        if rng.random() < cfg.vacuum_probability:
            a = rng.uniform(0, 2 * np.pi)
            self.vacuum = (np.array([np.cos(a), np.sin(a)]), rng.uniform(0.15, 0.5))
        side = np.array([h, w], float)
        self.centre0 = (side - 1) / 2 + rng.uniform(-1, 1, 2) * cfg.centre_offset_max * side
        self.descan = rng.uniform(-1, 1, size=(2, 2)) * cfg.descan_max * side
        self.amorphous_gradient = rng.uniform(-0.5, 0.5)

    def state(self, iy: int, ix: int) -> CrystalState:
        ny, nx = self.scan_shape
        u = np.array([(iy + 0.5) / ny, (ix + 0.5) / nx])  # in [0, 1]
        k = int(np.argmin(((self.seeds - u) ** 2).sum(1)))
        grain = self.grains[k]
        d = u - 0.5
        tilt = grain["tilt"] + grain["dtilt"] @ d
        rotation = grain["rotation"] + grain["drot"] * d.sum()
        t0, dt, a = self.thickness
        thickness = max(t0 + dt * (d[0] * np.sin(a) + d[1] * np.cos(a)), 20.0)
        fraction = 1.0
        if self.vacuum is not None:
            normal, level = self.vacuum
            # smooth edge over ~1 probe step
            dist = float(u @ normal - level) * max(ny, nx)
            fraction = float(np.clip(0.5 + dist, 0.0, 1.0))
        centre = self.centre0 + self.descan @ d
        return CrystalState(
            centre=(float(centre[0]), float(centre[1])),
            rotation=float(rotation),
            tilt=(float(tilt[0]), float(tilt[1])),
            thickness=float(thickness),
            crystal_fraction=fraction,
            amorphous_scale=float(1.0 + self.amorphous_gradient * d.sum()),
            probe_position=(iy * self.scan_step, ix * self.scan_step),
        )


def _setup(
    rng: np.random.Generator,
    cfg: DiffractionConfig,
    scan_shape: tuple[int, int],
    pattern_shape: tuple[int, int],
) -> tuple[Specimen, DetectorState, _ScanModel]:
    spec = draw_specimen(
        rng,
        pattern_shape,
        overlap_probability=cfg.overlap_probability,
        overlap_ratio_range=tuple(cfg.overlap_ratio_range),
        coherent_probability=cfg.coherent_probability,
        defocus_range=tuple(cfg.defocus_range),
    )
    det = draw_detector(
        rng,
        pattern_shape,
        counting_probability=cfg.counting_probability,
        mtf_sigma_range=cfg.mtf_sigma_range,
        read_noise_range=cfg.read_noise_range,
        defect_fraction_range=cfg.defect_fraction_range,
        saturation_probability=cfg.saturation_probability,
    )
    scan = _ScanModel(rng, spec, cfg, scan_shape, pattern_shape)
    return spec, det, scan


def _config(config: DiffractionConfig | dict | None) -> DiffractionConfig:
    if config is None:
        return DiffractionConfig()
    if isinstance(config, DiffractionConfig):
        return config
    if isinstance(config, dict):
        return DiffractionConfig.from_dict(config)
    raise ValueError(
        f"config must be a DiffractionConfig, a dict or None, got {type(config).__name__}"
    )


def simulate_4dstem(
    scan_shape: tuple[int, int] = (16, 16),
    pattern_shape: tuple[int, int] = (64, 64),
    counts: float | None = 1000.0,
    *,
    config: DiffractionConfig | dict | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Simulate a noisy 4D-STEM scan and its clean expected counts.

    Parameters
    ----------
    scan_shape : tuple of int
        Probe positions ``(scan_y, scan_x)``.
    pattern_shape : tuple of int
        Detector pixels ``(det_y, det_x)``, each side 16–1024.
    counts : float or None
        Dose per pattern (electrons reaching the detector, expected). ``None``
        draws one from ``config.counts_range`` (log-uniform) for the scan.
    config : DiffractionConfig or dict, optional
        Ranges of the random specimen and detector.
    rng : numpy.random.Generator or int, optional
        Source of every random draw (an int is a seed).

    Returns
    -------
    noisy : numpy.ndarray
        ``(scan_y, scan_x, det_y, det_x)`` float32 recorded counts.
    clean : numpy.ndarray
        Same shape, float32 expected counts (after the detector MTF, without
        noise or defects); every pattern sums to ``counts``.
    calibration : dict
        ``scan_step`` (Å), ``detector_step`` (mrad), ``scan_units`` ("Å"),
        ``detector_units`` ("mrad"), plus ``convergence_mrad``,
        ``wavelength_A``, ``counts`` and ``detector`` ("counting"/"integrating").

    Raises
    ------
    ValueError
        For invalid shapes, counts or configuration, or a stack that does not
        fit in memory.
    """
    scan_shape = _check_scan_shape(scan_shape)
    pattern_shape = _check_pattern_shape(pattern_shape)
    cfg = _config(config)
    rng = as_generator(rng)
    n_pat = scan_shape[0] * scan_shape[1]
    check_fits_in_memory(
        2 * 4 * n_pat * pattern_shape[0] * pattern_shape[1],
        f"a {scan_shape} × {pattern_shape} 4D-STEM stack (noisy + clean)",
        hint="simulate a smaller scan or smaller patterns",
    )
    dose = _counts(counts, cfg, rng)
    spec, det, scan = _setup(rng, cfg, scan_shape, pattern_shape)
    noisy = np.empty((*scan_shape, *pattern_shape), np.float32)
    clean = np.empty_like(noisy)
    for iy in range(scan_shape[0]):
        for ix in range(scan_shape[1]):
            pattern = render_pattern(spec, scan.state(iy, ix), pattern_shape)
            n, c = apply_detector(dose * pattern, det, rng)
            noisy[iy, ix] = n
            clean[iy, ix] = c
    calibration = {
        "scan_step": float(cfg.scan_step),
        "detector_step": float(spec.detector_step_mrad),
        "scan_units": "Å",
        "detector_units": "mrad",
        "convergence_mrad": float(spec.convergence_mrad),
        "wavelength_A": float(spec.wavelength),
        "counts": dose,
        "detector": det.kind,
    }
    return noisy, clean, calibration


def make_diffraction_pair(
    pattern_shape: tuple[int, int] = (64, 64),
    counts: float | None = 1000.0,
    *,
    config: DiffractionConfig | dict | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(noisy, clean)`` diffraction-pattern pair, float32 counts.

    A new specimen, detector and probe position are drawn for every pair.

    Parameters
    ----------
    pattern_shape : tuple of int
        Detector pixels ``(det_y, det_x)``, each side 16–1024.
    counts : float or None
        Dose of the pattern (counts); ``None`` draws it log-uniformly from
        ``config.counts_range`` (10–10⁵ by default).
    config : DiffractionConfig or dict, optional
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    noisy, clean : numpy.ndarray
        2-D float32 arrays of ``pattern_shape``; ``clean.sum() == counts``.
    """
    pattern_shape = _check_pattern_shape(pattern_shape)
    cfg = _config(config)
    rng = as_generator(rng)
    dose = _counts(counts, cfg, rng)
    spec, det, scan = _setup(rng, cfg, (16, 16), pattern_shape)
    iy, ix = (int(v) for v in rng.integers(0, 16, size=2))
    pattern = render_pattern(spec, scan.state(iy, ix), pattern_shape)
    noisy, clean = apply_detector(dose * pattern, det, rng)
    return noisy.astype(np.float32), clean.astype(np.float32)

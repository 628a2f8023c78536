"""S(T)EM distortion layers, eqs 41–55 of Lobato, Friedrich & Van Aert.

Source: "Deep convolutional neural networks to restore single-shot electron
microscopy images" (2023, arXiv:2303.17025), section "S(T)EM noise model".

A scanning microscope records one pixel at a time: the probe moves along a
row (the *fast* scan direction, image axis -1, left to right) and then to the
next row (the *slow* scan direction, axis -2, top to bottom). Every layer below
follows that convention.

Pipeline order (:data:`STEM_LAYERS`): scan jitter (41–42) → detector noise
(43–46) → fast-scan blur (47–50) → row lines (51) → black pixels (52) →
zingers (53) → upper clip (54) → quantisation (55). Upper clip and
quantisation are the same equations as the TEM eqs 39–40 and are reused from
:mod:`napari_emdenoise.noise.tem`.

Intensity convention: the clean image is float32 with max 1 (eq 26) and every
layer keeps that scale; additive amplitudes are in units of that intensity.
Every layer returns a new float32 array of the input's shape (an unchanged
copy when its parameters say ``enabled=False``). Inputs are checked by
:func:`~napari_emdenoise.noise._checks.check_layer_call`: integer images are
converted to float32; non-finite, non-2-D or smaller than 2×2 pixel images
raise ``ValueError``. Scan jitter lives in :mod:`.scan_jitter` and is
re-exported here.

Occurrence probabilities used by the ``sample`` class methods: scan jitter 0.9
and its modes x/y/xy 0.25/0.25/0.5 come from the paper; the others are our
choices (the paper gives none): detector noise 1.0, fast-scan blur 0.8, row
lines 0.25, black pixels 0.2, zingers 0.2.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.fft
import scipy.ndimage

from ._checks import MIN_SIZE as MIN_SIZE  # re-exported: smallest accepted image side
from ._checks import check_layer_call
from ._layer import Layer
from ._params import OccurringParams, param
from .scan_jitter import (
    ScanJitterParams,
    _reflect_index,  # noqa: F401  (kept importable from here for existing callers)
    apply_scan_displacements,
    ar1_series,
    scan_jitter,
)
from .tem import QuantisationParams, UpperClipParams, quantisation, sample_dose, upper_clip

__all__ = [
    "STEM_LAYERS",
    "BlackPixelsParams",
    "DetectorNoiseParams",
    "FastScanBlurParams",
    "RowLinesParams",
    "ScanJitterParams",
    "ZingersParams",
    "apply_scan_displacements",
    "ar1_series",
    "black_pixels",
    "detector_noise",
    "fast_scan_blur",
    "fast_scan_lag",
    "fast_scan_psf",
    "shift_along_fast_scan",
    "pmt_sigma",
    "pulse_heights",
    "readout_psf_norm",
    "row_lines",
    "scan_jitter",
    "zingers",
]

#: Relative level (of the kernel's peak) below which PSF tails are cut.
_PSF_TAIL = 1e-4

#: Longest fast-scan kernel, in pixels (reached only for extreme widths).
_PSF_MAX_LEN = 4096


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------
def _check_ordered(params: OccurringParams, low: str, high: str) -> None:
    """Raise ``ValueError`` if the range field ``low`` exceeds ``high``."""
    lo, hi = getattr(params, low), getattr(params, high)
    if lo > hi:
        raise ValueError(f"{type(params).__name__}.{low} ({lo}) exceeds {high} ({hi})")


def _fft_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _streaks(
    shape: tuple[int, int], n_points: int, max_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random horizontal streaks, uniformly placed, each 1..max_length pixels long.

    A streak starts at a uniformly drawn pixel and runs to the right (later in
    the scan), cut at the right edge.

    Returns
    -------
    rows, cols : numpy.ndarray
        Pixel coordinates of every streak pixel.
    point : numpy.ndarray
        Index of the streak (0..n_points-1) each pixel belongs to.
    """
    h, w = shape
    r0 = rng.integers(0, h, n_points)
    c0 = rng.integers(0, w, n_points)
    lengths = rng.integers(1, max_length + 1, n_points)
    point = np.repeat(np.arange(n_points), lengths)
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(point.size) - np.repeat(starts, lengths)
    rows = r0[point]
    cols = c0[point] + offsets
    keep = cols < w
    return rows[keep], cols[keep], point[keep]


def _random_streaks(
    shape: tuple[int, int],
    density: float,
    max_length: int,
    value_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Streaks of black pixels or zingers (eqs 52–53) with one value per streak.

    The number of streaks is Poisson with mean ``density·H·W`` (density in
    1/pixel); each gets a value uniform in ``value_range``. Draw order:
    count, streaks (:func:`_streaks`), values.

    Returns
    -------
    rows, cols : numpy.ndarray
        Pixel coordinates of every streak pixel.
    values : numpy.ndarray
        float32 value of each pixel's streak.
    """
    n = int(rng.poisson(density * (shape[0] * shape[1])))
    rows, cols, point = _streaks(shape, n, int(max_length), rng)
    values = rng.uniform(value_range[0], value_range[1], n).astype(np.float32)
    return rows, cols, values[point]


# ---------------------------------------------------------------------------
# 1. scan jitter, eqs 41-42: see .scan_jitter
# 2. detector noise, eqs 43-46
# ---------------------------------------------------------------------------
def pmt_sigma(
    m_c: float,
    eta: float,
    gain: float,
    delta: float,
    delta_c: float,
    *,
    per_electron: bool = False,
) -> float:
    """Gaussian width of the scintillator–photomultiplier pulse, eq 44.

    ``σ = m_c η G sqrt((1 − η + 1/(δ − 1)) / (m_c η) + δ_c² / m_c²)``; the
    FWHM of eq 43 is ``2 sqrt(2 ln 2) σ``.

    Parameters
    ----------
    m_c : float
        Photons collected per incident electron (> 0).
    eta : float
        Detective quantum efficiency of the photocathode, in (0, 1].
    gain : float
        PMT gain G (> 0).
    delta : float
        Secondary-emission gain δ of each dynode stage (> 1).
    delta_c : float
        Standard deviation δ_c of the number of collected photons (>= 0).
    per_electron : bool
        If True return ``σ / (m_c η G)``: the spread relative to the mean
        pulse of one detected electron. That is the count scale of eq 46, so
        the value can be used directly as ``DetectorNoiseParams.sigma_pmt``.

    Returns
    -------
    float
        σ in anode charge (electrons), or in counts if ``per_electron``.
    """
    for name, value, ok in (
        ("m_c", m_c, m_c > 0),
        ("eta", eta, 0 < eta <= 1),
        ("gain", gain, gain > 0),
        ("delta", delta, delta > 1),
        ("delta_c", delta_c, delta_c >= 0),
    ):
        if not (math.isfinite(value) and ok):
            raise ValueError(f"pmt_sigma: invalid {name} = {value!r}")
    rel = math.sqrt((1.0 - eta + 1.0 / (delta - 1.0)) / (m_c * eta) + delta_c**2 / m_c**2)
    return rel if per_electron else m_c * eta * gain * rel


@dataclass
class DetectorNoiseParams(OccurringParams):
    """Scintillator/PMT detector noise parameters (eqs 45–46).

    The dose scale α of eq 45 is ``dose / mean(x)``, so ``dose`` is the mean
    number of detected electrons per pixel. ``sigma_pmt`` is the Gaussian
    noise of eq 46 in counts (units of one detected electron); the resulting
    image noise std at mean intensity μ is ``sqrt(μ/α + (σ_pmt/α)²)``, or
    ``sqrt((1 + s²)·μ/α + (σ_pmt/α)²)`` with a pulse-height spread ``s``.

    ``pulse_spread`` (ours, not in the paper) gives each detected electron a
    random signal of mean 1 and relative standard deviation ``s``, as the
    photon statistics of the scintillator and the PMT's gain do; the paper
    folds them into the Gaussian ``σ_pmt`` (eq 44). At a few electrons per
    pixel they make the image a sum of unequal pulses, whose histogram is a
    long continuous tail instead of counting levels (measured on a real
    low-dose HAADF micrograph: an exponential-like tail, ``s ≈ 1``). It is 0
    in the paper's draw (:meth:`sample`).
    """

    dose: float = param(
        50.0, 0.5, 750.0, hard_min=0.0, hard_max=1e7, unit="e⁻/pixel", log=True,
        doc="Mean detected electrons per pixel (sets α = dose / mean image)",
    )  # fmt: skip
    sigma_pmt: float = param(
        0.3, 0.0, 2.0, hard_min=0.0, hard_max=1e4, unit="counts",
        doc="Std of the Gaussian PMT noise, in units of one detected electron (eq 44)",
    )  # fmt: skip
    pulse_spread: float = param(
        0.0, 0.0, 1.2, hard_min=0.0, hard_max=10.0, unit="× mean pulse",
        doc="Relative std of one detected electron's signal (scintillator and PMT gain "
        "statistics); 0: every electron gives the same signal",
    )  # fmt: skip

    def validate(self) -> DetectorNoiseParams:
        super().validate()
        if self.dose <= 0:
            raise ValueError(f"DetectorNoiseParams.dose must be > 0 e⁻/pixel, got {self.dose!r}")
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> DetectorNoiseParams:
        """Always on. The dose is drawn in [0.5, 750] e⁻/pixel favouring low
        doses exactly as the TEM shot noise (:func:`.tem.sample_dose`, the
        paper's truncated exponential; ~73 % of the draws below 19 e⁻/pixel);
        σ_pmt uniform in [0, 2] counts. The paper gives no S(T)EM-specific
        distributions: these are our choices."""
        return cls(
            enabled=True,
            dose=sample_dose(rng),
            sigma_pmt=float(rng.uniform(0.0, 2.0)),
        ).validate()


def pulse_heights(counts: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Summed signal of ``counts`` electrons per pixel whose pulses vary in height.

    Each electron's pulse is Gamma-distributed with mean 1 and relative
    standard deviation ``spread`` (shape ``1/spread²``), so the sum of ``n``
    of them is one Gamma draw of shape ``n/spread²`` and scale ``spread²``:
    mean ``n``, variance ``n·spread²``; 0 electrons give exactly 0.
    ``spread = 1`` is an exponential pulse-height distribution.

    Parameters
    ----------
    counts : numpy.ndarray
        Non-negative electron counts per pixel.
    spread : float
        Relative standard deviation of one pulse (> 0).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32 signal in units of the mean pulse.
    """
    if not (math.isfinite(spread) and spread > 0):
        raise ValueError(f"pulse spread must be a positive number, got {spread!r}")
    var = float(spread) ** 2
    shape = np.asarray(counts, dtype=np.float64) / var
    return rng.gamma(shape, var).astype(np.float32)


def detector_noise(
    image: np.ndarray, params: DetectorNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Poisson electron counting then Gaussian PMT noise (eqs 45–46).

    ``x ← P(αx)`` then ``x ← (x + N(0, σ_pmt)) / α`` with
    ``α = dose / mean(x)``, so the mean electron count per pixel is ``dose``.
    Negative intensities (interpolation overshoot) carry no electrons: they
    are set to 0 before counting (and in the mean). As in the paper, the PMT
    term is one signal-independent Gaussian draw per pixel; build σ_pmt from
    detector constants with ``pmt_sigma(..., per_electron=True)`` (eq 44).
    With ``pulse_spread > 0`` the counts become unequal pulses first
    (:func:`pulse_heights`).

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image with a positive mean, intensity scale [0, 1].
    params : DetectorNoiseParams
        Dose (e⁻/pixel) and PMT noise (counts).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        New float32 image in the input's intensity scale.

    Raises
    ------
    ValueError
        On bad input, a non-positive dose or an image whose mean is not positive.
    """
    img = check_layer_call(image, params, DetectorNoiseParams, rng)
    if not params.enabled:
        return img
    np.maximum(img, 0.0, out=img)
    mean = float(img.mean(dtype=np.float64))
    if mean <= 0:
        raise ValueError(
            "detector_noise needs an image with a positive mean intensity: a dose in "
            "e⁻/pixel cannot be converted to intensity for a black image"
        )
    alpha = params.dose / mean
    if alpha * float(img.max()) > 1e15:
        raise ValueError(
            f"detector_noise: {alpha * float(img.max()):.3g} expected electrons in the "
            "brightest pixel is too many for a Poisson draw; lower the dose"
        )
    counts = rng.poisson(img * np.float32(alpha)).astype(np.float32)
    if params.pulse_spread > 0:
        counts = pulse_heights(counts, params.pulse_spread, rng)
    if params.sigma_pmt > 0:
        counts += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(params.sigma_pmt)
    counts *= np.float32(1.0 / alpha)
    return counts


# ---------------------------------------------------------------------------
# 3. fast-scan blur, eqs 47-50
# ---------------------------------------------------------------------------
def readout_psf_norm(beta: float, gamma: float, theta: float) -> float:
    """Normalisation ``a`` of the readout PSF (eq 49) so that it integrates to 1.

    ``a = 1 / I`` with ``I = ∫₀^∞ e^{−u/β} sin(2πu/γ + θ) du
    = βγ(γ sin θ + 2πβ cos θ) / (γ² + 4π²β²)``.

    Deviation from the paper: eq 50 prints ``I`` itself (not its reciprocal)
    and with ``4π``/``16π²`` in place of ``2π``/``4π²``, which is the integral
    of ``sin(4πu/γ + θ)`` rather than of eq 49 as written. We keep eq 49 and
    use the exact reciprocal of its integral.

    Parameters
    ----------
    beta : float
        Decay length β, pixels (> 0).
    gamma : float
        Oscillation period γ, pixels (> 0).
    theta : float
        Phase θ, radians; the integral must be positive.

    Returns
    -------
    float
        The factor a (1/pixel).
    """
    if not (beta > 0 and gamma > 0 and math.isfinite(beta * gamma * theta)):
        raise ValueError(f"readout_psf_norm needs beta, gamma > 0; got {beta}, {gamma}")
    integral = (
        beta
        * gamma
        * (gamma * math.sin(theta) + 2 * math.pi * beta * math.cos(theta))
        / (gamma**2 + 4 * math.pi**2 * beta**2)
    )
    if integral <= 0:
        raise ValueError(
            f"the readout PSF with theta = {theta} rad has a non-positive integral "
            "and cannot be normalised"
        )
    return 1.0 / integral


@dataclass
class FastScanBlurParams(OccurringParams):
    """Fast-scan PSF parameters (eqs 48–49), lengths in pixels along the scan.

    The paper fitted these to experimental images and varied them at random
    without publishing the ranges; the ranges below are our choice: a
    detector Lorentzian of half width at half maximum ``α/(2π)`` = 0.08–0.95
    pixels, a readout response decaying over 0.3–3 pixels with a ringing
    period of 4–24 pixels (above the 2-pixel Nyquist limit) and a phase in
    [0, π/2] (which keeps the readout PSF's integral positive).
    """

    alpha: float = param(
        2.0, 0.5, 6.0, hard_min=1e-3, hard_max=100.0, unit="pixels",
        doc="Lorentzian detector PSF parameter α (HWHM = α/2π)",
    )  # fmt: skip
    beta: float = param(
        1.0, 0.3, 3.0, hard_min=1e-3, hard_max=100.0, unit="pixels",
        doc="Decay length β of the readout response",
    )  # fmt: skip
    gamma: float = param(
        10.0, 4.0, 24.0, hard_min=2.0, hard_max=1e4, unit="pixels",
        doc="Oscillation period γ of the readout response",
    )  # fmt: skip
    theta: float = param(
        math.pi / 2, 0.0, math.pi / 2, hard_min=0.0, hard_max=math.pi / 2, unit="rad",
        doc="Phase θ of the readout oscillation",
    )  # fmt: skip

    #: Our choice; ``sample`` draws every value uniformly in its range, then ``enabled``.
    occurrence: ClassVar[float] = 0.8
    enabled_drawn_last: ClassVar[bool] = True


def _lorentzian_bins(alpha: float) -> np.ndarray:
    """Causal half-Lorentzian of eq 48 integrated over each pixel.

    Bin 0 covers lags [0, 0.5], bin k >= 1 covers [k − 0.5, k + 0.5]; the
    antiderivative of ``α / (4π²u² + α²)`` is ``arctan(2πu/α) / (2π)``.
    """
    n = min(_PSF_MAX_LEN, int(math.ceil(20.0 * alpha)) + 3)
    edges = np.concatenate([[0.0], np.arange(n) + 0.5])
    cdf = np.arctan(2.0 * np.pi * edges / alpha) / (2.0 * np.pi)
    return np.diff(cdf)


def _readout_bins(beta: float, gamma: float, theta: float) -> np.ndarray:
    """Causal damped oscillator of eq 49 integrated over each pixel (same bins)."""
    n = min(_PSF_MAX_LEN, int(math.ceil(beta * math.log(1.0 / _PSF_TAIL))) + 2)
    s, w = 1.0 / beta, 2.0 * np.pi / gamma
    edges = np.concatenate([[0.0], np.arange(n) + 0.5])
    ph = w * edges + theta
    antiderivative = -np.exp(-s * edges) * (s * np.sin(ph) + w * np.cos(ph)) / (s * s + w * w)
    return np.diff(antiderivative) * readout_psf_norm(beta, gamma, theta)


def _cut_tail(kernel: np.ndarray) -> np.ndarray:
    keep = np.nonzero(np.abs(kernel) >= _PSF_TAIL * np.abs(kernel).max())[0]
    return kernel[: keep[-1] + 1]


def fast_scan_psf(params: FastScanBlurParams) -> np.ndarray:
    """Discrete fast-scan kernel ``psf_detector ⊛ psf_readout`` (eqs 47–50).

    Sign convention: the response is causal in scan time, so the paper's
    ``x <= 0`` support is read as the lag ``u = |x|`` behind the probe and
    ``exp(−x/β)`` as ``exp(−u/β)`` (the literal form grows without bound).
    ``kernel[u]`` is the weight that pixel ``c − u`` (``u`` pixels *earlier*
    along the row) contributes to pixel ``c``: signal smears to the right.

    Each PSF is integrated exactly over pixel-wide bins centred on integer
    lags (bin 0 is the half pixel [0, 0.5]), cut where it falls below 1e-4 of
    its peak, and renormalised to sum 1, so the combined kernel sums to 1.

    Parameters
    ----------
    params : FastScanBlurParams
        α, β, γ (pixels) and θ (rad).

    Returns
    -------
    numpy.ndarray
        float64 kernel, index = lag in pixels (``kernel[0]`` is the current pixel).
    """
    params.validate()
    det = _cut_tail(_lorentzian_bins(params.alpha))
    read = _cut_tail(_readout_bins(params.beta, params.gamma, params.theta))
    kernel = np.convolve(det / det.sum(), read / read.sum())
    return kernel / kernel.sum()


def fast_scan_lag(params: FastScanBlurParams) -> float:
    """Mean lag of the fast-scan PSF: the centroid ``Σ u·k[u]`` of :func:`fast_scan_psf`.

    A causal PSF moves every feature by this many pixels along the fast-scan
    axis (towards +x) besides blurring it. A global shift cannot be observed
    in a single image, so a network trained to undo it would learn to move
    *every* image, lag-free ones included, by the average lag of its training
    set. :func:`~napari_emdenoise.noise.make_pair` therefore moves the target
    by the same lag, leaving only the blur to undo.

    Parameters
    ----------
    params : FastScanBlurParams

    Returns
    -------
    float
        Lag in pixels (≥ 0 for the paper's parameter ranges); 0 when disabled.
    """
    if not params.enabled:
        return 0.0
    kernel = fast_scan_psf(params)
    return float(np.dot(np.arange(kernel.size), kernel))


def shift_along_fast_scan(image: np.ndarray, lag: float) -> np.ndarray:
    """Move a 2-D (or stacked ``(n, H, W)``) image by ``lag`` pixels along x, sub-pixel.

    Cubic-spline interpolation, clipped to the input's value range; the edges
    continue with the nearest value.

    Parameters
    ----------
    image : numpy.ndarray
        Image(s), the last axis is the fast-scan axis.
    lag : float
        Shift in pixels, positive towards +x.

    Returns
    -------
    numpy.ndarray
        New float32 array of the same shape.
    """
    if lag == 0.0:
        return np.asarray(image, dtype=np.float32).copy()
    src = np.asarray(image, dtype=np.float64)
    shift = (0.0,) * (src.ndim - 1) + (float(lag),)
    out = scipy.ndimage.shift(src, shift, order=3, mode="nearest")
    # the cubic spline overshoots at sharp edges: keep the input's value range
    return np.clip(out, src.min(), src.max()).astype(np.float32)


def fast_scan_blur(
    image: np.ndarray, params: FastScanBlurParams, rng: np.random.Generator
) -> np.ndarray:
    """Blur along the fast scan direction only (eq 47).

    Every row is convolved with :func:`fast_scan_psf` (causal: pixel ``c``
    receives signal from pixels ``c, c−1, c−2, …``). Before the row starts the
    probe waits at the first pixel (fly-back), so the row is extended to the
    left with its first value (``"nearest"``). Done by real FFT along the
    rows, so the cost does not depend on the kernel length. Deterministic;
    ``rng`` is unused.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    params : FastScanBlurParams
        PSF parameters.
    rng : numpy.random.Generator
        Unused (kept for the layer signature).

    Returns
    -------
    numpy.ndarray
        New float32 image of the same shape.
    """
    img = check_layer_call(image, params, FastScanBlurParams, rng)
    if not params.enabled:
        return img
    kernel = fast_scan_psf(params)
    w = img.shape[1]
    pad = kernel.size - 1
    if pad == 0:
        return img
    padded = img[:, np.clip(np.arange(-pad, w), 0, None)]
    n = scipy.fft.next_fast_len(w + pad, real=True)
    workers = _fft_workers()
    spec = scipy.fft.rfft(padded, n, axis=1, workers=workers)
    spec *= scipy.fft.rfft(kernel.astype(np.float32), n).astype(np.complex64)
    out = scipy.fft.irfft(spec, n, axis=1, workers=workers)[:, pad : pad + w]
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------
# 4. row lines, eq 51
# ---------------------------------------------------------------------------
@dataclass
class RowLinesParams(OccurringParams):
    """Row-line (detector non-response) parameters (eq 51)."""

    n_lines: int = param(
        5, 1, 20, hard_min=0, hard_max=100_000, doc="Number of row segments"
    )  # fmt: skip
    max_length: float = param(
        0.3, 0.05, 1.0, hard_min=0.0, hard_max=1.0, unit="fraction of width",
        doc="Longest segment as a fraction of the row width",
    )  # fmt: skip
    factor_min: float = param(
        0.5, hard_min=0.0, hard_max=100.0,
        doc="Lowest factor applied to a segment's mean (paper: 0.5)",
    )  # fmt: skip
    factor_max: float = param(
        1.5, hard_min=0.0, hard_max=100.0,
        doc="Highest factor applied to a segment's mean (paper: 1.5)",
    )  # fmt: skip

    def validate(self) -> RowLinesParams:
        super().validate()
        _check_ordered(self, "factor_min", "factor_max")
        return self

    occurrence: ClassVar[float] = 0.25

    @classmethod
    def sample(cls, rng: np.random.Generator) -> RowLinesParams:
        """Occurs with p = 0.25 (our choice); 1–20 lines, longest 5–100 % of
        the width; factors fixed to the paper's [0.5, 1.5]."""
        return cls(
            enabled=cls.draw_enabled(rng),
            n_lines=int(rng.integers(1, 21)),
            max_length=float(rng.uniform(0.05, 1.0)),
        ).validate()


def row_lines(image: np.ndarray, params: RowLinesParams, rng: np.random.Generator) -> np.ndarray:
    """Row-line noise (eq 51).

    ``n_lines`` segments, each in one uniformly drawn row with a length
    uniform in ``[1, max_length·W]`` pixels and a uniformly drawn start; the
    segment's pixels are replaced by the segment's mean intensity (of the
    input) times a factor uniform in ``[factor_min, factor_max]``. Later
    segments overwrite earlier ones where they overlap.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    params : RowLinesParams
        Number, length and intensity factor of the segments.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        New float32 image; only the segments' pixels differ from the input.
    """
    img = check_layer_call(image, params, RowLinesParams, rng)
    if not params.enabled:
        return img
    h, w = img.shape
    out = img.copy()
    n = int(params.n_lines)
    longest = max(1, int(round(params.max_length * w)))
    rows = rng.integers(0, h, n)
    lengths = rng.integers(1, longest + 1, n)
    starts = rng.integers(0, w - lengths + 1)
    factors = rng.uniform(params.factor_min, params.factor_max, n)
    for r, c, length, f in zip(rows, starts, lengths, factors, strict=True):
        out[r, c : c + length] = img[r, c : c + length].mean(dtype=np.float64) * f
    return out


# ---------------------------------------------------------------------------
# 5. black pixels, eq 52
# ---------------------------------------------------------------------------
@dataclass
class BlackPixelsParams(OccurringParams):
    """S(T)EM black-pixel parameters (eq 52).

    Points are placed uniformly; each is a streak of 1..``max_length`` pixels
    along the scan (to the right) whose sensitivity S is uniform in
    ``[0, max_sensitivity]``.
    """

    density: float = param(
        2e-4, 1e-5, 1e-3, hard_min=0.0, hard_max=0.5, unit="1/pixel", log=True,
        doc="Expected number of black points per pixel",
    )  # fmt: skip
    max_length: int = param(
        3, 1, 8, hard_min=1, hard_max=10_000, unit="pixels",
        doc="Longest black streak along the fast scan",
    )  # fmt: skip
    max_sensitivity: float = param(
        0.1, 0.0, 0.3, hard_min=0.0, hard_max=1.0,
        doc="Largest sensitivity S of a black pixel (0 = fully black)",
    )  # fmt: skip

    #: Our choice; ``sample`` draws every value in its range, then ``enabled``.
    occurrence: ClassVar[float] = 0.2
    enabled_drawn_last: ClassVar[bool] = True


def black_pixels(
    image: np.ndarray, params: BlackPixelsParams, rng: np.random.Generator
) -> np.ndarray:
    """Black pixels and short black streaks, ``x ← x·S_black`` (eq 52).

    The number of points is Poisson with mean ``density·H·W``. Only the
    masked pixels change.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    params : BlackPixelsParams
        Density, streak length and sensitivity.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        New float32 image.
    """
    img = check_layer_call(image, params, BlackPixelsParams, rng)
    if not params.enabled:
        return img
    rows, cols, sens = _random_streaks(
        img.shape, params.density, params.max_length, (0.0, params.max_sensitivity), rng
    )
    img[rows, cols] = img[rows, cols] * sens
    return img


# ---------------------------------------------------------------------------
# 6. zingers, eq 53
# ---------------------------------------------------------------------------
@dataclass
class ZingersParams(OccurringParams):
    """S(T)EM zinger parameters (eq 53), amplitudes in image intensity units."""

    density: float = param(
        1e-4, 1e-5, 5e-4, hard_min=0.0, hard_max=0.5, unit="1/pixel", log=True,
        doc="Expected number of zingers per pixel",
    )  # fmt: skip
    max_length: int = param(
        3, 1, 8, hard_min=1, hard_max=10_000, unit="pixels",
        doc="Longest zinger streak along the fast scan",
    )  # fmt: skip
    amplitude_min: float = param(
        0.5, 0.2, 1.0, hard_min=0.0, hard_max=1e4,
        doc="Smallest intensity a zinger adds (clean image max = 1)",
    )  # fmt: skip
    amplitude_max: float = param(
        2.0, 1.0, 3.0, hard_min=0.0, hard_max=1e4,
        doc="Largest intensity a zinger adds (clean image max = 1)",
    )  # fmt: skip

    def validate(self) -> ZingersParams:
        super().validate()
        _check_ordered(self, "amplitude_min", "amplitude_max")
        return self

    #: Our choice; ``sample`` draws every value in its range, then ``enabled``.
    occurrence: ClassVar[float] = 0.2
    enabled_drawn_last: ClassVar[bool] = True


def zingers(image: np.ndarray, params: ZingersParams, rng: np.random.Generator) -> np.ndarray:
    """Bright zinger pixels and short streaks (eq 53).

    Deviation from the paper: eq 53 writes ``x ← x·S_zinger``; a product
    cannot brighten a dark (or, after detector noise, negative) pixel, so the
    burst is added instead: ``x ← x + A·S_zinger`` with a 0/1 mask S and an
    amplitude A uniform in ``[amplitude_min, amplitude_max]`` per zinger. The
    number of zingers is Poisson with mean ``density·H·W``; each is a streak
    of 1..``max_length`` pixels along the scan. Only masked pixels change.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    params : ZingersParams
        Density, streak length and amplitude range.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        New float32 image.
    """
    img = check_layer_call(image, params, ZingersParams, rng)
    if not params.enabled:
        return img
    rows, cols, amp = _random_streaks(
        img.shape, params.density, params.max_length,
        (params.amplitude_min, params.amplitude_max), rng,
    )  # fmt: skip
    np.add.at(img, (rows, cols), amp)
    return img


# ---------------------------------------------------------------------------
STEM_LAYERS: tuple[Layer, ...] = (
    Layer("scan_jitter", scan_jitter, ScanJitterParams, "41-42", "Scan jitter"),
    Layer("detector_noise", detector_noise, DetectorNoiseParams, "43-46", "Detector noise"),
    Layer("fast_scan_blur", fast_scan_blur, FastScanBlurParams, "47-50", "Fast-scan blur"),
    Layer("row_lines", row_lines, RowLinesParams, "51", "Row lines"),
    Layer("black_pixels", black_pixels, BlackPixelsParams, "52", "Black pixels"),
    Layer("zingers", zingers, ZingersParams, "53", "Zingers"),
    Layer("upper_clip", upper_clip, UpperClipParams, "54", "Upper clip"),
    Layer("quantisation", quantisation, QuantisationParams, "55", "Quantisation"),
)
"""The S(T)EM distortion layers in pipeline order (Lobato et al. 2023, eqs 41–55)."""

"""S(T)EM distortion layers (seed 001, "S(T)EM noise model", eqs 41–55).

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
copy when its parameters say ``enabled=False``) and rejects non-finite,
integer-typed, non-2-D or smaller than 4×4 pixel images with ``ValueError``.

Occurrence probabilities used by the ``sample`` class methods: scan jitter 0.9
and its modes x/y/xy 0.25/0.25/0.5 come from the paper; the others are our
choices (the paper gives none): detector noise 1.0, fast-scan blur 0.8, row
lines 0.25, black pixels 0.2, zingers 0.2.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from .._validation import as_float_image
from ._layer import Layer
from ._params import LayerParams, param
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
    "fast_scan_psf",
    "pmt_sigma",
    "readout_psf_norm",
    "row_lines",
    "scan_jitter",
    "zingers",
]

#: Smallest accepted image side, in pixels.
MIN_SIZE = 4

#: Relative level (of the kernel's peak) below which PSF tails are cut.
_PSF_TAIL = 1e-4

#: Longest fast-scan kernel, in pixels (reached only for extreme widths).
_PSF_MAX_LEN = 4096


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------
def _check_call(params: LayerParams, params_type: type, rng: object) -> None:
    """Type-check a layer call's parameters and generator, then validate the values."""
    if not isinstance(params, params_type):
        raise TypeError(f"expected {params_type.__name__}, got {type(params).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    params.validate()


def _check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate a 2-D floating-point image and return a float32 copy."""
    kind = np.asarray(image).dtype.kind
    if kind in "biu":
        raise ValueError(
            f"{name} has integer dtype {np.asarray(image).dtype}; the noise model works on "
            "float images in the [0, 1] intensity scale (convert with "
            "skimage.util.img_as_float32 or divide by the maximum)"
        )
    return as_float_image(image, ndim=2, min_size=MIN_SIZE, name=name)


def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Fold integer indices into ``[0, n)`` by half-sample symmetric reflection.

    Matches ``scipy.ndimage`` mode ``"reflect"`` (``d c b a | a b c d | d c b a``)
    for any distance outside the array.
    """
    m = np.mod(index, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _cubic_weights(t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Catmull–Rom (Keys, a = -0.5) weights of the samples at -1, 0, +1, +2.

    ``t`` is the fractional position in ``[0, 1)`` between samples 0 and 1.
    The four weights sum to 1 exactly, so constants are reproduced.
    """
    t2 = t * t
    t3 = t2 * t
    w0 = 0.5 * (-t3 + 2.0 * t2 - t)
    w1 = 0.5 * (3.0 * t3 - 5.0 * t2 + 2.0)
    w2 = 0.5 * (-3.0 * t3 + 4.0 * t2 + t)
    w3 = 0.5 * (t3 - t2)
    return w0, w1, w2, w3


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


# ---------------------------------------------------------------------------
# 1. scan jitter, eqs 41-42
# ---------------------------------------------------------------------------
def ar1_series(n: int, sigma: float, phi: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) displacement series in the Yule–Walker form of eq 41.

    ``Δ¹ = a¹ / sqrt(1 − φ²)`` and ``Δᵏ = φ Δᵏ⁻¹ + aᵏ`` for ``k > 1``, with
    innovations ``aᵏ ~ N(0, σ)``.

    Parameters
    ----------
    n : int
        Length of the series (number of scan lines).
    sigma : float
        Standard deviation σ of the *innovations* aᵏ (the paper's σₜ), in the
        unit the caller wants the displacements in. Because of the Yule–Walker
        start the series is stationary: every Δᵏ has standard deviation
        ``σ / sqrt(1 − φ²)``, which is larger than σ when φ > 0.
    phi : float
        Lag-1 correlation coefficient φ, ``0 <= φ < 1``; the lag-1
        autocorrelation of the series equals φ.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(n,)``.

    Raises
    ------
    ValueError
        If ``n < 1``, ``sigma < 0`` or ``phi`` is outside ``[0, 1)``.
    """
    from scipy.signal import lfilter  # scipy.signal is slow to import

    n = int(n)
    if n < 1:
        raise ValueError(f"ar1_series needs n >= 1, got {n}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"ar1_series needs a finite sigma >= 0, got {sigma}")
    if not (0.0 <= phi < 1.0):
        raise ValueError(f"ar1_series needs 0 <= phi < 1, got {phi}")
    a = rng.normal(0.0, sigma, n) if sigma > 0 else np.zeros(n)
    a[0] /= math.sqrt(1.0 - phi * phi)
    if phi == 0.0:
        return a
    return lfilter([1.0], [1.0, -phi], a)


def apply_scan_displacements(
    image: np.ndarray,
    dx: np.ndarray | None = None,
    dy: np.ndarray | None = None,
) -> np.ndarray:
    """Resample an image on a grid displaced scan line by scan line (eq 42).

    Pixel ``(r, c)`` of the result is the input evaluated at
    ``(r + dy[r], c + dx[r])`` by bicubic (Catmull–Rom) interpolation with
    ``"reflect"`` boundaries. Rows are resampled first (slow axis), then each
    row along the fast axis; because every displacement depends only on the
    row, this equals 2-D bicubic interpolation on the displaced grid.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image, shape ``(H, W)``.
    dx, dy : numpy.ndarray or None
        Per-row displacements along the fast (x, columns) and slow (y, rows)
        axis, in pixels, shape ``(H,)``; ``None`` means no displacement.
        A positive ``dx[r]`` makes row ``r`` show the specimen ``dx[r]`` pixels
        further right, i.e. its content moves left.

    Returns
    -------
    numpy.ndarray
        New float32 image of the same shape.
    """
    img = _check_image(image)
    h, w = img.shape
    out = img
    if dy is not None:
        dy = _per_row(dy, h, "dy")
        pos = np.arange(h) + dy
        base = np.floor(pos)
        wts = _cubic_weights((pos - base).astype(np.float32))
        base = base.astype(np.int64)
        acc = np.zeros_like(img)
        for j, wj in enumerate(wts):
            acc += wj[:, None] * img[_reflect_index(base + (j - 1), h)]
        out = acc
    if dx is not None:
        dx = _per_row(dx, h, "dx")
        base = np.floor(dx)
        wts = _cubic_weights((dx - base).astype(np.float32))
        # "reflect" is periodic with period 2W: fold the shifts into [0, 2W) so the
        # padding below stays at most 3W wide whatever the displacement.
        base = np.mod(base.astype(np.int64), 2 * w)
        # Reflect-pad the columns once, then read each row's 4 taps as contiguous
        # windows of the padded rows (no per-pixel index arithmetic).
        lo = int(base.min()) - 1
        padded = out[:, _reflect_index(np.arange(lo, int(base.max()) + 2 + w), w)]
        windows = sliding_window_view(padded, w, axis=1)
        rows = np.arange(h)
        start = base - lo - 1
        acc = np.zeros_like(out)
        for j, wj in enumerate(wts):
            acc += wj[:, None] * windows[rows, start + j]
        out = acc
    return out if out is not img else img.copy()


def _per_row(d: np.ndarray, h: int, name: str) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.shape != (h,):
        raise ValueError(f"{name} must have one value per row, shape ({h},), got {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError(f"{name} contains NaN or infinite displacements")
    return d


@dataclass
class ScanJitterParams(LayerParams):
    """Scan-jitter parameters (eqs 41–42).

    ``sigma_x``/``sigma_y`` are the standard deviations of the AR(1)
    innovations aᵏ (the paper's σₜ), in Å; the resulting per-line displacement
    has standard deviation ``σ / sqrt(1 − φ²)``. They are converted to pixels
    with ``pixel_size``; set it to the clean image's pixel size when known
    (``params.replace(pixel_size=...)``), :meth:`sample` otherwise draws it in
    the simulator's range.
    """

    mode: str = param(
        "xy",
        choices=("x", "y", "xy"),
        doc="Jitter along the fast scan (x), the slow scan (y) or both",
    )  # fmt: skip
    sigma_x: float = param(
        0.1, 0.0025, 0.8, hard_min=0.0, hard_max=20.0, unit="Å",
        doc="Std of the fast-scan (x) AR(1) innovations σₓ",
    )  # fmt: skip
    phi_x: float = param(
        0.5, 0.0, 0.7, hard_min=0.0, hard_max=0.99,
        doc="Line-to-line correlation φₓ of the x displacements",
    )  # fmt: skip
    sigma_y: float = param(
        0.1, 0.0025, 0.8, hard_min=0.0, hard_max=20.0, unit="Å",
        doc="Std of the slow-scan (y) AR(1) innovations σ_y",
    )  # fmt: skip
    phi_y: float = param(
        0.5, 0.0, 0.7, hard_min=0.0, hard_max=0.99,
        doc="Line-to-line correlation φ_y of the y displacements",
    )  # fmt: skip
    pixel_size: float = param(
        0.2, 0.025, 0.9, hard_min=1e-4, hard_max=1e4, unit="Å/pixel", log=True,
        doc="Pixel size used to convert σ from Å to pixels",
    )  # fmt: skip

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ScanJitterParams:
        """Paper's draw: occurs with p = 0.9; modes x/y/xy with p = 0.25/0.25/0.5;
        σ uniform in [0.0025, 0.8] Å, φ uniform in [0, 0.7]; pixel size
        log-uniform in [0.025, 0.9] Å (the clean-image simulator's range)."""
        enabled = bool(rng.random() < 0.9)
        mode = ("x", "y", "xy")[int(rng.choice(3, p=[0.25, 0.25, 0.5]))]
        return cls(
            enabled=enabled,
            mode=mode,
            sigma_x=float(rng.uniform(0.0025, 0.8)),
            phi_x=float(rng.uniform(0.0, 0.7)),
            sigma_y=float(rng.uniform(0.0025, 0.8)),
            phi_y=float(rng.uniform(0.0, 0.7)),
            pixel_size=float(math.exp(rng.uniform(math.log(0.025), math.log(0.9)))),
        ).validate()


def scan_jitter(
    image: np.ndarray, params: ScanJitterParams, rng: np.random.Generator
) -> np.ndarray:
    """Scan-line jitter along the fast and/or slow scan direction (eqs 41–42).

    One AR(1) displacement per scan line (:func:`ar1_series`) for x (a
    sideways shift of the whole row) and/or y (the row is recorded at a
    displaced height: stretching, squishing and line interchanges), converted
    from Å to pixels and applied by bicubic interpolation
    (:func:`apply_scan_displacements`).

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image, shape ``(H, W)``, intensity scale [0, 1].
    params : ScanJitterParams
        Jitter mode, σ (Å), φ and pixel size (Å/pixel).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        New float32 image of the same shape.
    """
    img = _check_image(image)
    _check_call(params, ScanJitterParams, rng)
    if not params.enabled:
        return img
    h = img.shape[0]
    dx = dy = None
    if "x" in params.mode:
        dx = ar1_series(h, params.sigma_x / params.pixel_size, params.phi_x, rng)
    if "y" in params.mode:
        dy = ar1_series(h, params.sigma_y / params.pixel_size, params.phi_y, rng)
    return apply_scan_displacements(img, dx=dx, dy=dy)


# ---------------------------------------------------------------------------
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
class DetectorNoiseParams(LayerParams):
    """Scintillator/PMT detector noise parameters (eqs 45–46).

    The dose scale α of eq 45 is ``dose / mean(x)``, so ``dose`` is the mean
    number of detected electrons per pixel. ``sigma_pmt`` is the Gaussian
    noise of eq 46 in counts (units of one detected electron); the resulting
    image noise std at mean intensity μ is ``sqrt(μ/α + (σ_pmt/α)²)``.
    """

    dose: float = param(
        50.0, 0.5, 750.0, hard_min=0.0, hard_max=1e7, unit="e⁻/pixel", log=True,
        doc="Mean detected electrons per pixel (sets α = dose / mean image)",
    )  # fmt: skip
    sigma_pmt: float = param(
        0.3, 0.0, 2.0, hard_min=0.0, hard_max=1e4, unit="counts",
        doc="Std of the Gaussian PMT noise, in units of one detected electron (eq 44)",
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
    img = _check_image(image)
    _check_call(params, DetectorNoiseParams, rng)
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
class FastScanBlurParams(LayerParams):
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

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FastScanBlurParams:
        """Occurs with p = 0.8 (our choice); every value uniform in its range."""
        params = super().sample(rng)
        return params.replace(enabled=bool(rng.random() < 0.8)).validate()


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
    img = _check_image(image)
    _check_call(params, FastScanBlurParams, rng)
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
class RowLinesParams(LayerParams):
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
        if self.factor_min > self.factor_max:
            raise ValueError(
                f"RowLinesParams.factor_min ({self.factor_min}) exceeds factor_max "
                f"({self.factor_max})"
            )
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> RowLinesParams:
        """Occurs with p = 0.25 (our choice); 1–20 lines, longest 5–100 % of
        the width; factors fixed to the paper's [0.5, 1.5]."""
        return cls(
            enabled=bool(rng.random() < 0.25),
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
    img = _check_image(image)
    _check_call(params, RowLinesParams, rng)
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
class BlackPixelsParams(LayerParams):
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

    @classmethod
    def sample(cls, rng: np.random.Generator) -> BlackPixelsParams:
        """Occurs with p = 0.2 (our choice); values drawn in their ranges."""
        params = super().sample(rng)
        return params.replace(enabled=bool(rng.random() < 0.2)).validate()


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
    img = _check_image(image)
    _check_call(params, BlackPixelsParams, rng)
    if not params.enabled:
        return img
    out = img.copy()
    n = int(rng.poisson(params.density * img.size))
    rows, cols, point = _streaks(img.shape, n, int(params.max_length), rng)
    sens = rng.uniform(0.0, params.max_sensitivity, n).astype(np.float32)
    out[rows, cols] = img[rows, cols] * sens[point]
    return out


# ---------------------------------------------------------------------------
# 6. zingers, eq 53
# ---------------------------------------------------------------------------
@dataclass
class ZingersParams(LayerParams):
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
        if self.amplitude_min > self.amplitude_max:
            raise ValueError(
                f"ZingersParams.amplitude_min ({self.amplitude_min}) exceeds amplitude_max "
                f"({self.amplitude_max})"
            )
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ZingersParams:
        """Occurs with p = 0.2 (our choice); values drawn in their ranges."""
        params = super().sample(rng)
        return params.replace(enabled=bool(rng.random() < 0.2)).validate()


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
    img = _check_image(image)
    _check_call(params, ZingersParams, rng)
    if not params.enabled:
        return img
    out = img.copy()
    n = int(rng.poisson(params.density * img.size))
    rows, cols, point = _streaks(img.shape, n, int(params.max_length), rng)
    amp = rng.uniform(params.amplitude_min, params.amplitude_max, n).astype(np.float32)
    np.add.at(out, (rows, cols), amp[point])
    return out


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
"""The S(T)EM distortion layers in pipeline order (seed 001, eqs 41–55)."""

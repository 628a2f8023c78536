"""TEM distortion layers (Lobato et al. 2023, "TEM noise model", eqs 27–40).

Each layer is a pure function ``layer(image, params, rng) -> image`` and a
parameter dataclass; :data:`TEM_LAYERS` lists them in pipeline order:

====================  ======  ===============================================
layer                 eq      effect
====================  ======  ===============================================
camera_mtf            27–29   camera MTF/PSF, also applied to the clean target
shot_noise            30      Poisson counting noise at a dose in e⁻/pixel
fixed_pattern_noise   31      pixel-gain mismatch, x + x·N(0, σ_fpn)
dark_current          32–33   log-normal + hot-pixel dark counts, Poisson
thermal_noise         34      white Gaussian readout noise
flicker_noise         35      1/f readout noise made in Fourier space
reset_noise           36      one Gaussian offset per row
black_pixels          37      random-walk regions of low sensitivity
zingers               38      random-walk regions of bright spurious counts
upper_clip            39      saturation at a threshold
quantisation          40      analog-to-digital rounding
====================  ======  ===============================================

Intensity convention: the clean image is float32 scaled to a maximum of 1
(eq 26) and every layer keeps that scale, so additive noise standard
deviations are given in units of the image intensity. Each ``*Params`` class
carries ``occurrence``, the probability with which :meth:`sample` enables the
layer. The paper leaves most of these probabilities and many ranges implicit;
where it does, the values below are our choices and are documented as such.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.fft

from ._checks import check_layer_call
from ._layer import Layer
from ._masks import random_walk_mask
from ._params import OccurringParams, param

__all__ = [
    "TEM_LAYERS",
    "BlackPixelsParams",
    "CameraMTFParams",
    "DarkCurrentParams",
    "FixedPatternNoiseParams",
    "FlickerNoiseParams",
    "QuantisationParams",
    "ResetNoiseParams",
    "ShotNoiseParams",
    "ThermalNoiseParams",
    "UpperClipParams",
    "ZingersParams",
    "black_pixels",
    "camera_mtf",
    "dark_count_map",
    "dark_current",
    "fixed_pattern_noise",
    "flicker_noise",
    "mtf_is_monotone",
    "quantisation",
    "radial_mtf",
    "reset_noise",
    "sample_dose",
    "shot_noise",
    "thermal_noise",
    "upper_clip",
    "zingers",
]

# FFT/DCT threads. None defers to the caller's ``scipy.fft.set_workers`` context
# (1 thread by default): a 512² transform takes < 1 ms on one core, and training
# data loaders already run one process per core.
_FFT_WORKERS: int | None = None
# Paper's dose range (eq 30), in e⁻/pixel, and its exponential scale.
_DOSE_RANGE = (0.5, 750.0)
_DOSE_SCALE = 0.5


# -- shared machinery ---------------------------------------------------------
def _alpha(x: np.ndarray, dose: float, layer: str) -> float:
    """Dose scale factor α = dose / E{x} in counts per unit intensity (eq 30)."""
    mean = float(np.mean(np.maximum(x, 0.0), dtype=np.float64))
    if mean <= 0.0:
        raise ValueError(
            f"{layer}: the image has no positive intensity, so a dose in e⁻/pixel "
            "cannot be converted to image intensity"
        )
    return dose / mean


def _add_gaussian(
    x: np.ndarray, shape: tuple[int, ...], sigma: float, rng: np.random.Generator
) -> None:
    """Add ``N(0, σ)`` noise of ``shape`` (broadcast over ``x``) to ``x`` in place."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(sigma)
    x += noise


def _defect_mask(
    image: np.ndarray,
    params: BlackPixelsParams | ZingersParams,
    params_type: type[BlackPixelsParams | ZingersParams],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Checked float32 copy of ``image`` and its random-walk defect mask (eqs 37–38).

    The mask is ``None`` when the layer is disabled (no random draw is made).
    """
    x = check_layer_call(image, params, params_type, rng)
    if not params.enabled:
        return x, None
    return x, random_walk_mask(x.shape, params.n_points, params.max_steps, rng)


# -- camera MTF (eqs 27–29) --------------------------------------------------
def radial_mtf(g: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray:
    """Rotationally symmetric part of the camera MTF (Lobato et al. 2023, eq 29).

    ``MTF_r(g) = a·exp(−g²/2b²) + (1 − a)·exp(−g²/2c²)``.

    Parameters
    ----------
    g : array_like
        Radial spatial frequency in units of the Nyquist frequency
        (0.5 cycles/pixel), ``g = sqrt(u² + v²)``.
    a : float
        Weight of the first Gaussian (dimensionless).
    b, c : float
        Standard deviations of the two Gaussians, in units of Nyquist.

    Returns
    -------
    numpy.ndarray
        ``MTF_r`` (float64); 1 at ``g = 0``.
    """
    g2 = np.square(np.asarray(g, dtype=np.float64))
    return a * np.exp(-g2 / (2.0 * b * b)) + (1.0 - a) * np.exp(-g2 / (2.0 * c * c))


def mtf_is_monotone(a: float, b: float, c: float) -> bool:
    """Paper's acceptance test for ``MTF_r`` (Lobato et al. 2023, text after eq 29).

    ``MTF_r`` is evaluated on 1000 points spanning 10 Nyquist units; it is
    accepted when it is non-negative and non-increasing there. (Both Gaussians
    underflow to exactly 0 at large ``g`` for narrow widths, so "positive" is
    checked as ``>= 0``.) With ``0 <= a <= 1`` it always passes; ``a > 1`` or
    ``a < 0`` gives flat-topped shapes that pass only for suitable ``b, c``.
    """
    if not (b > 0 and c > 0):
        return False
    mtf = radial_mtf(np.linspace(0.0, 10.0, 1000), a, b, c)
    return bool(np.all(mtf >= 0.0) and np.all(np.diff(mtf) <= 0.0))


@dataclass
class CameraMTFParams(OccurringParams):
    """Camera modulation-transfer function (Lobato et al. 2023, eqs 28–29).

    Ranges are our choice (the paper gives none): they span MTFs at Nyquist
    (including the pixel sinc, 2/π there) from ≈0 (scintillator-coupled CCD
    with a broad halo) to ≈0.6 (direct electron detector). Always occurs: every
    camera has an MTF.
    """

    a: float = param(
        0.7, 0.0, 1.5, hard_min=-10.0, hard_max=10.0,
        doc="Weight of the first Gaussian of MTF_r (eq 29); > 1 gives a flat top",
    )  # fmt: skip
    b: float = param(
        0.8, 0.2, 2.0, hard_min=1e-3, hard_max=100.0, unit="× Nyquist",
        doc="Width (std) of the first Gaussian of MTF_r (eq 29)",
    )  # fmt: skip
    c: float = param(
        0.15, 0.05, 1.0, hard_min=1e-3, hard_max=100.0, unit="× Nyquist",
        doc="Width (std) of the second Gaussian of MTF_r (eq 29)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 1.0

    def validate(self) -> CameraMTFParams:
        """Check limits and that ``MTF_r`` is non-negative and non-increasing."""
        super().validate()
        if not mtf_is_monotone(self.a, self.b, self.c):
            raise ValueError(
                f"CameraMTFParams(a={self.a}, b={self.b}, c={self.c}) gives an MTF_r that is "
                "negative or increasing somewhere in [0, 10] Nyquist units (eq 29); "
                "use 0 <= a <= 1 or widen the subtracted Gaussian"
            )
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> CameraMTFParams:
        """Redraw ``(a, b, c)`` uniformly until ``MTF_r`` passes the paper's test."""
        enabled = cls.draw_enabled(rng)
        for _ in range(1000):  # acceptance rate is > 2/3; the cap is a safeguard
            values = cls.draw_values(rng)
            if mtf_is_monotone(values["a"], values["b"], values["c"]):
                return cls(enabled=enabled, **values).validate()
        return cls(enabled=enabled).validate()  # pragma: no cover


def _mtf_axis(n: int, width: float) -> np.ndarray:
    """float32 ``exp(−u²/2w²)·sinc(πu/2)`` on the DCT-II frequencies of ``n`` pixels.

    The DCT-II basis function ``k`` has frequency ``k/(2n)`` cycles/pixel,
    i.e. ``u = k/n`` in units of Nyquist.
    """
    u = np.arange(n, dtype=np.float64) / n
    # np.sinc(t) = sin(πt)/(πt), so np.sinc(u/2) is the paper's sinc(πu/2).
    return (np.exp(-u * u / (2.0 * width * width)) * np.sinc(u / 2.0)).astype(np.float32)


def camera_mtf(image: np.ndarray, params: CameraMTFParams, rng: np.random.Generator) -> np.ndarray:
    """Blur by the camera point-spread function (Lobato et al. 2023, eqs 27–29).

    ``y ← y ⊗ PSF`` with ``PSF = F⁻¹{MTF_r(g)·sinc(πu/2)·sinc(πv/2)}``. The
    Gaussians of eq 29 are separable, so the 2-D transfer function is a sum
    of two outer products. It is applied in the DCT-II domain, which is the
    exact convolution of the mirror-extended image (half-sample symmetric:
    ``scipy.ndimage`` mode ``'reflect'``, ``numpy.pad`` mode ``'symmetric'``)
    with the even PSF sampled on the ``2H × 2W`` grid: unlike a plain FFT
    product it does not wrap intensity from one edge to the other, and it
    keeps the total intensity exactly (the MTF is 1 at zero frequency).
    Deterministic: ``rng`` is only checked.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` image or ``(N, H, W)`` stack (the pipeline passes the
        clean target and the distorted image together, eq 27); every slice
        gets the same PSF.
    params : CameraMTFParams
        MTF shape.
    rng : numpy.random.Generator
        Unused (the layer is deterministic).

    Returns
    -------
    numpy.ndarray
        Blurred float32 copy, same shape.
    """
    x = check_layer_call(image, params, CameraMTFParams, rng, stack=True)
    if not params.enabled:
        return x
    h, w = x.shape[-2:]
    # a·Gb(v)Gb(u) + (1 − a)·Gc(v)Gc(u), pixel sincs included. Broadcasting, not a
    # BLAS matmul: a threaded BLAS spins badly when the cores are busy.
    gb_v, gb_u = _mtf_axis(h, params.b), _mtf_axis(w, params.b)
    gc_v, gc_u = _mtf_axis(h, params.c), _mtf_axis(w, params.c)
    transfer = np.float32(params.a) * gb_v[:, None] * gb_u
    transfer += np.float32(1.0 - params.a) * gc_v[:, None] * gc_u
    axes = (-2, -1)
    coeffs = scipy.fft.dctn(x, type=2, axes=axes, norm="ortho", workers=_FFT_WORKERS)
    coeffs *= transfer
    out = scipy.fft.idctn(coeffs, type=2, axes=axes, norm="ortho", workers=_FFT_WORKERS)
    return np.ascontiguousarray(out, dtype=np.float32)


# -- shot noise (eq 30) ------------------------------------------------------
def sample_dose(
    rng: np.random.Generator,
    low: float = _DOSE_RANGE[0],
    high: float = _DOSE_RANGE[1],
    scale: float = _DOSE_SCALE,
) -> float:
    """Draw a dose favouring low values, as Lobato et al. (2023) do for eq 30.

    The paper draws α "exponential, with a scale parameter of 0.5 and a range
    [0.5, 750]/E{y}". Our reading: ``t ~ Exp(scale)`` truncated to [0, 1]
    (exact inverse-CDF draw, no rejection) is mapped log-linearly onto the
    dose range, ``dose = low·(high/low)^t``; α = dose/E{y} then follows in
    the layer. On the log-dose axis the density falls by ``e^{-1/scale}``
    (7.4× for 0.5) from the lowest to the highest dose, so about half of the
    draws lie below 5 e⁻/pixel and 73 % below the geometric middle
    (19 e⁻/pixel): low dose, the paper's focus, dominates while every decade
    is still covered.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    low, high : float
        Dose range, in e⁻/pixel (mean electron count per pixel).
    scale : float
        Scale of the exponential on the unit interval.

    Returns
    -------
    float
        Dose in e⁻/pixel, within ``[low, high]``.
    """
    if not (0.0 < low <= high and scale > 0.0):
        raise ValueError(f"need 0 < low <= high and scale > 0, got {low}, {high}, {scale}")
    u = rng.random()
    t = -scale * math.log1p(-u * -math.expm1(-1.0 / scale))
    return float(min(high, max(low, low * (high / low) ** t)))


@dataclass
class ShotNoiseParams(OccurringParams):
    """Poisson counting noise (Lobato et al. 2023, eq 30). Always occurs."""

    dose: float = param(
        20.0, *_DOSE_RANGE, hard_min=0.0, hard_max=1e9, unit="e⁻/pixel", log=True,
        doc="Mean electron count per pixel, dose = α·E{x} (eq 30)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 1.0

    def validate(self) -> ShotNoiseParams:
        """Check limits; the dose must be strictly positive."""
        super().validate()
        if not self.dose > 0:
            raise ValueError(f"ShotNoiseParams.dose must be > 0 e⁻/pixel, got {self.dose!r}")
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ShotNoiseParams:
        """Draw the dose with :func:`sample_dose`."""
        enabled = cls.draw_enabled(rng)
        return cls(enabled=enabled, dose=sample_dose(rng)).validate()


def shot_noise(image: np.ndarray, params: ShotNoiseParams, rng: np.random.Generator) -> np.ndarray:
    """Poisson shot noise at a given dose (Lobato et al. 2023, eq 30).

    ``x ← P(α·x)/α`` with ``α = dose/E{x}``: the image mean corresponds to
    ``dose`` electrons per pixel and the output keeps the input intensity
    scale, so at mean intensity μ the noise standard deviation is
    ``sqrt(μ/α)`` and ``out·α`` is integer-valued. Negative intensities (from
    a background subtraction) carry no electrons: they are clipped to 0 for
    the Poisson mean and come out as 0 counts. An image without positive
    intensity receives no electrons and comes out all zero.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` image in the normalised intensity scale.
    params : ShotNoiseParams
        Dose in e⁻/pixel.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Noisy float32 copy.
    """
    x = check_layer_call(image, params, ShotNoiseParams, rng)
    if not params.enabled:
        return x
    np.maximum(x, 0.0, out=x)
    mean = float(np.mean(x, dtype=np.float64))
    if mean <= 0.0:
        return np.zeros_like(x)
    alpha = params.dose / mean
    peak = alpha * float(x.max())
    if peak > 1e15:
        raise ValueError(
            f"shot_noise: expected count {peak:.3g} e⁻ in the brightest pixel is too large "
            "for a Poisson draw; lower the dose or check the image scaling"
        )
    counts = rng.poisson(x * np.float32(alpha)).astype(np.float32)
    counts *= np.float32(1.0 / alpha)
    return counts


# -- fixed-pattern noise (eq 31) ---------------------------------------------
@dataclass
class FixedPatternNoiseParams(OccurringParams):
    """Residual pixel-gain mismatch after flat-field correction (Lobato et al. 2023, eq 31).

    Range and occurrence (0.5) are our choice: 0.1–5 % residual gain spread.
    """

    sigma: float = param(
        0.01, 0.001, 0.05, hard_min=0.0, hard_max=1.0, log=True,
        doc="Relative pixel-gain standard deviation σ_fpn (eq 31)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.5


def fixed_pattern_noise(
    image: np.ndarray, params: FixedPatternNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Multiplicative pixel-gain noise ``x ← x + x·N(0, σ_fpn)`` (Lobato et al. 2023, eq 31).

    The gain pattern is a property of the sensor; here each call draws a new
    sensor from ``rng`` (the same seed gives the same pattern). The added
    noise has standard deviation ``σ_fpn·|x|``: its variance scales with x².
    """
    x = check_layer_call(image, params, FixedPatternNoiseParams, rng)
    if not params.enabled:
        return x
    gain = rng.standard_normal(x.shape, dtype=np.float32)
    gain *= np.float32(params.sigma)
    gain += np.float32(1.0)
    x *= gain
    return x


# -- dark current (eqs 32–33) ------------------------------------------------
@dataclass
class DarkCurrentParams(OccurringParams):
    """Dark-current non-uniformity and its shot noise (Lobato et al. 2023, eqs 32–33).

    Dark counts are electrons, independent of the signal, so they are given
    in e⁻/pixel (the same count unit as the dose) and converted to image
    intensity with α = dose/E{x}. ``dose`` must therefore be the dose of the
    shot-noise layer; a pipeline that samples both should copy
    ``shot_noise.dose`` into it. Ranges and occurrence (0.5) are our choice.
    """

    dose: float = param(
        20.0, *_DOSE_RANGE, hard_min=0.0, hard_max=1e9, unit="e⁻/pixel", log=True,
        doc="Signal dose (mean e⁻/pixel) converting dark counts to intensity; = shot-noise dose",
    )  # fmt: skip
    dark_mean: float = param(
        0.1, 0.01, 2.0, hard_min=0.0, hard_max=1e6, unit="e⁻/pixel", log=True,
        doc="Mean μ of the log-normal dark-count map (eq 32)",
    )  # fmt: skip
    dark_std: float = param(
        0.05, 0.005, 1.0, hard_min=0.0, hard_max=1e6, unit="e⁻/pixel", log=True,
        doc="Standard deviation σ of the log-normal dark-count map (eq 32)",
    )  # fmt: skip
    hot_fraction: float = param(
        0.001, 0.0, 0.005, hard_min=0.0, hard_max=1.0,
        doc="Fraction of hot pixels with dark counts U(μ+5σ, μ+8σ) (eq 32)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.5

    def validate(self) -> DarkCurrentParams:
        """Check limits; the dose must be strictly positive."""
        super().validate()
        if not self.dose > 0:
            raise ValueError(f"DarkCurrentParams.dose must be > 0 e⁻/pixel, got {self.dose!r}")
        return self

    @classmethod
    def sample(cls, rng: np.random.Generator) -> DarkCurrentParams:
        """Dose as :func:`sample_dose`, the rest uniformly (log-uniformly)."""
        enabled = cls.draw_enabled(rng)
        dose = sample_dose(rng)
        return cls(enabled=enabled, dose=dose, **cls.draw_values(rng, "dose")).validate()


def dark_count_map(
    shape: tuple[int, int], params: DarkCurrentParams, rng: np.random.Generator
) -> np.ndarray:
    """Expected dark counts per pixel, DCNU (Lobato et al. 2023, eq 32).

    A mixture: most pixels follow a log-normal distribution whose own mean
    and standard deviation are ``dark_mean`` and ``dark_std`` (μ, σ of the
    paper); a random ``hot_fraction`` of the pixels instead takes values
    uniform in ``[μ + 5σ, μ + 8σ]`` (hot pixels, outliers).

    Returns
    -------
    numpy.ndarray
        float32 map of mean dark counts in e⁻/pixel, ``shape``.
    """
    mu, sigma = float(params.dark_mean), float(params.dark_std)
    if mu > 0.0:
        s2 = math.log1p((sigma / mu) ** 2)  # log-normal from its mean and std
        dcnu = rng.standard_normal(shape, dtype=np.float32)
        dcnu *= np.float32(math.sqrt(s2))
        dcnu += np.float32(math.log(mu) - 0.5 * s2)
        np.exp(dcnu, out=dcnu)
    else:
        dcnu = np.zeros(shape, dtype=np.float32)
    n_pixels = int(np.prod(shape))
    n_hot = int(rng.binomial(n_pixels, params.hot_fraction))
    if n_hot:
        hot = rng.choice(n_pixels, size=n_hot, replace=False)
        dcnu.reshape(-1)[hot] = rng.uniform(mu + 5.0 * sigma, mu + 8.0 * sigma, n_hot)
    return dcnu


def dark_current(
    image: np.ndarray, params: DarkCurrentParams, rng: np.random.Generator
) -> np.ndarray:
    """Add dark counts with their shot noise (Lobato et al. 2023, eqs 32–33).

    ``x ← x + P(DCNU)/α`` with DCNU from :func:`dark_count_map` and
    ``α = dose/E{x}`` (counts per unit intensity, as in eq 30). The mean
    added intensity is ``dark_mean/α`` and the added variance
    ``(dark_mean + dark_std²)/α²`` when there are no hot pixels.

    Raises
    ------
    ValueError
        If the image has no positive intensity (α is undefined).
    """
    x = check_layer_call(image, params, DarkCurrentParams, rng)
    if not params.enabled:
        return x
    alpha = _alpha(x, params.dose, "dark_current")
    counts = rng.poisson(dark_count_map(x.shape, params, rng)).astype(np.float32)
    counts *= np.float32(1.0 / alpha)
    x += counts
    return x


# -- readout noise (eqs 34–36) -----------------------------------------------
@dataclass
class ThermalNoiseParams(OccurringParams):
    """White Gaussian readout noise (Lobato et al. 2023, eq 34). Range, occurrence 0.5: ours."""

    sigma: float = param(
        0.01, 0.001, 0.1, hard_min=0.0, hard_max=1e3, unit="intensity", log=True,
        doc="Standard deviation of the thermal noise, in image-intensity units (eq 34)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.5


def thermal_noise(
    image: np.ndarray, params: ThermalNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Add white Gaussian noise ``x ← x + N(0, σ)`` (Lobato et al. 2023, eq 34).

    ``σ`` is in units of the image intensity (the clean maximum is 1).
    """
    x = check_layer_call(image, params, ThermalNoiseParams, rng)
    if params.enabled:
        _add_gaussian(x, x.shape, params.sigma, rng)
    return x


@dataclass
class FlickerNoiseParams(OccurringParams):
    """1/f readout noise (Lobato et al. 2023, eq 35). Range, occurrence 0.25: ours."""

    sigma: float = param(
        0.01, 0.001, 0.05, hard_min=0.0, hard_max=1e3, unit="intensity", log=True,
        doc="Standard deviation of the added 1/f field, in image-intensity units (eq 35)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.25


@functools.lru_cache(maxsize=8)
def _inverse_frequency(h: int, w: int) -> np.ndarray:
    """``1/f`` on the ``rfft2`` grid of an ``(h, w)`` image, 0 at ``f = 0`` (read-only)."""
    fy = scipy.fft.fftfreq(h)[:, None]
    fx = scipy.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = np.inf  # 1/f → 0: removes the mean
    inv = (1.0 / f).astype(np.float32)
    inv.flags.writeable = False
    return inv


def flicker_noise(
    image: np.ndarray, params: FlickerNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Add 1/f noise ``x ← x + F⁻¹{F{N(0, 1)}/f}`` scaled to std σ (Lobato et al. 2023, eq 35).

    White Gaussian noise is filtered in Fourier space by ``1/f``, ``f`` the
    radial spatial frequency in cycles/pixel, with the ``f = 0`` term set to
    zero (the field has zero mean). Its amplitude spectrum thus falls as
    ``1/f`` and its power spectrum as ``1/f²``. The field is periodic over
    the image and is rescaled so its standard deviation is exactly ``σ``
    (image-intensity units).
    """
    x = check_layer_call(image, params, FlickerNoiseParams, rng)
    if not params.enabled:
        return x
    h, w = x.shape
    spectrum = scipy.fft.rfft2(rng.standard_normal((h, w), dtype=np.float32), workers=_FFT_WORKERS)
    spectrum *= _inverse_frequency(h, w)
    field = scipy.fft.irfft2(spectrum, s=(h, w), workers=_FFT_WORKERS)
    std = float(field.std(dtype=np.float64))
    if std > 0.0:
        x += field * np.float32(params.sigma / std)
    return x


@dataclass
class ResetNoiseParams(OccurringParams):
    """Row-wise reset noise (Lobato et al. 2023, eq 36). Range, occurrence 0.25: ours."""

    sigma: float = param(
        0.01, 0.001, 0.05, hard_min=0.0, hard_max=1e3, unit="intensity", log=True,
        doc="Standard deviation of the per-row offset, in image-intensity units (eq 36)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.25


def reset_noise(
    image: np.ndarray, params: ResetNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Add one ``N(0, σ)`` offset per row to the whole row (Lobato et al. 2023, eq 36).

    Rows are the first array axis (horizontal lines in napari).
    """
    x = check_layer_call(image, params, ResetNoiseParams, rng)
    if params.enabled:
        _add_gaussian(x, (x.shape[0], 1), params.sigma, rng)
    return x


# -- defect masks (eqs 37–38) ------------------------------------------------
@dataclass
class BlackPixelsParams(OccurringParams):
    """Black pixels and regions (Lobato et al. 2023, eq 37). Ranges, occurrence 0.25: ours."""

    n_points: int = param(
        5, 1, 20, hard_min=0, hard_max=100_000, unit="points",
        doc="Number of black seed points, placed uniformly (eq 37)",
    )  # fmt: skip
    max_steps: int = param(
        4, 0, 10, hard_min=0, hard_max=10_000, unit="pixels",
        doc="Largest random-walk length growing each point into a region",
    )  # fmt: skip
    sensitivity: float = param(
        0.0, 0.0, 0.2, hard_min=0.0, hard_max=1.0,
        doc="Relative response of a black pixel (value of S_black in the mask)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.25


def black_pixels(
    image: np.ndarray, params: BlackPixelsParams, rng: np.random.Generator
) -> np.ndarray:
    """Multiply by a black-pixel sensitivity mask ``x ← x·S_black`` (Lobato et al. 2023, eq 37).

    ``S_black`` is ``sensitivity`` on the regions of
    :func:`~napari_emdenoise.noise._masks.random_walk_mask` (drawn first from
    ``rng``) and exactly 1 elsewhere: only masked pixels change.
    """
    x, mask = _defect_mask(image, params, BlackPixelsParams, rng)
    if mask is not None:
        x[mask] *= np.float32(params.sensitivity)
    return x


@dataclass
class ZingersParams(OccurringParams):
    """Zingers: bright spots and streaks (Lobato et al. 2023, eq 38).

    Ranges and occurrence 0.25: ours.
    """

    n_points: int = param(
        3, 1, 20, hard_min=0, hard_max=100_000, unit="points",
        doc="Number of zinger seed points, placed uniformly (eq 38)",
    )  # fmt: skip
    max_steps: int = param(
        3, 0, 10, hard_min=0, hard_max=10_000, unit="pixels",
        doc="Largest random-walk length growing each point into a region",
    )  # fmt: skip
    level: float = param(
        1.5, 1.0, 3.0, hard_min=0.0, hard_max=1e3, unit="× image max",
        doc="Zinger intensity as a multiple of the image maximum",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.25


def zingers(image: np.ndarray, params: ZingersParams, rng: np.random.Generator) -> np.ndarray:
    """Set random-walk regions to a bright value (Lobato et al. 2023, eq 38).

    Deviation from eq 38 (``x ← x·S_zinger``): a zinger is a burst of
    scintillator photons that does not depend on the signal, and a
    multiplicative mask would leave the many zero-count pixels of a low-dose
    image dark. Masked pixels are therefore set to ``level × max(x)``
    (``level`` × 1 if the image has no positive value); all other pixels are
    unchanged. A following :func:`upper_clip` may saturate them.
    """
    x, mask = _defect_mask(image, params, ZingersParams, rng)
    if mask is not None:
        peak = float(x.max())
        x[mask] = np.float32(params.level * (peak if peak > 0.0 else 1.0))
    return x


# -- upper clip and quantisation (eqs 39–40) ---------------------------------
@dataclass
class UpperClipParams(OccurringParams):
    """Saturation (Lobato et al. 2023, eq 39). Range, occurrence 0.25: ours.

    The threshold is a quantile of the image rather than a fraction of its
    maximum, so that a few zingers do not set it.
    """

    quantile: float = param(
        0.99, 0.95, 1.0, hard_min=0.0, hard_max=1.0,
        doc="T_u is this quantile of the image: the brightest 1−q of pixels saturate (eq 39)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.25


def upper_clip(image: np.ndarray, params: UpperClipParams, rng: np.random.Generator) -> np.ndarray:
    """Saturate: ``x ← min(x, T_u)``, ``T_u`` the ``quantile`` of x (Lobato et al. 2023, eq 39).

    Pixels below ``T_u`` are unchanged and no output pixel exceeds it;
    ``quantile = 1`` leaves the image as it is. Deterministic.
    """
    x = check_layer_call(image, params, UpperClipParams, rng)
    if not params.enabled:
        return x
    threshold = np.float32(np.quantile(x, params.quantile))
    np.minimum(x, threshold, out=x)
    return x


@dataclass
class QuantisationParams(OccurringParams):
    """Analog-to-digital quantisation (Lobato et al. 2023, eq 40). Range, occurrence 0.5: ours."""

    gain: float = param(
        255.0, 4.0, 1000.0, hard_min=1e-6, hard_max=1e9, unit="levels / intensity", log=True,
        doc="ADC gain g: grey levels per unit image intensity (eq 40)",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.5


def quantisation(
    image: np.ndarray, params: QuantisationParams, rng: np.random.Generator
) -> np.ndarray:
    """Round to ADC levels: ``x ← round(g·x)/g`` (Lobato et al. 2023, eq 40).

    Eq 40 returns ``round(g·x)`` in ADC units; the division by ``g`` keeps the
    normalised intensity scale, so ``out·g`` is integer-valued (to float32
    precision) and ``|out − x| <= 1/(2g)``. Deterministic.
    """
    x = check_layer_call(image, params, QuantisationParams, rng)
    if not params.enabled:
        return x
    g = np.float32(params.gain)
    x *= g
    np.round(x, out=x)
    x /= g
    return x


# -- pipeline order ------------------------------------------------------------
TEM_LAYERS: tuple[Layer, ...] = (
    Layer("camera_mtf", camera_mtf, CameraMTFParams, "27-29", "Camera MTF",
          applies_to_target=True),
    Layer("shot_noise", shot_noise, ShotNoiseParams, "30", "Shot noise"),
    Layer("fixed_pattern_noise", fixed_pattern_noise, FixedPatternNoiseParams, "31",
          "Fixed-pattern noise"),
    Layer("dark_current", dark_current, DarkCurrentParams, "32-33", "Dark current"),
    Layer("thermal_noise", thermal_noise, ThermalNoiseParams, "34", "Thermal noise"),
    Layer("flicker_noise", flicker_noise, FlickerNoiseParams, "35", "Flicker (1/f) noise"),
    Layer("reset_noise", reset_noise, ResetNoiseParams, "36", "Reset (row) noise"),
    Layer("black_pixels", black_pixels, BlackPixelsParams, "37", "Black pixels"),
    Layer("zingers", zingers, ZingersParams, "38", "Zingers"),
    Layer("upper_clip", upper_clip, UpperClipParams, "39", "Upper clip (saturation)"),
    Layer("quantisation", quantisation, QuantisationParams, "40", "Quantisation"),
)  # fmt: skip
"""TEM distortion layers in the order the pipeline applies them."""

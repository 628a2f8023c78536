"""How far a restoration is from the truth, estimated from the noisy image alone.

For an image ``y = x + n`` with zero-mean noise of known covariance ``C`` and a
restoration ``f(y)``, Stein's unbiased risk estimate (SURE; C. M. Stein,
"Estimation of the mean of a multivariate normal distribution", Ann. Stat. 9,
1135, 1981) gives the mean squared error ``E‖f(y) − x‖²/N`` without ``x``::

    MSE ≈ ( ‖y − f(y)‖² − Σᵢ vᵢ + 2 Σᵢⱼ Cᵢⱼ ∂fᵢ/∂yⱼ ) / N

Counting noise is not Gaussian, but its variance is a straight line of the
signal, ``Var(yᵢ) = a·(xᵢ − o) + b`` (gain ``a``, dark level ``o``, read
variance ``b``), so ``vᵢ = a·(yᵢ − o) + b`` is an unbiased estimate of it and the
formula above is the first-order form of the Poisson–Gaussian unbiased risk
estimate (F. Luisier, T. Blu and M. Unser, "Image denoising in mixed
Poisson–Gaussian noise", IEEE Trans. Image Process. 20, 696, 2011). The
divergence term is estimated by Monte Carlo (S. Ramani, T. Blu and M. Unser,
"Monte-Carlo SURE: a black-box optimization of regularization parameters for
general denoising algorithms", IEEE Trans. Image Process. 17, 1540, 2008): one
extra run of the restoration on ``y + ε·b`` with a probe ``b`` whose covariance is
the noise's, ``Σᵢⱼ Cᵢⱼ ∂fᵢ/∂yⱼ ≈ bᵀ(f(y + ε·b) − f(y))/ε``.

The absolute estimate is noisy where the error is far below the noise (a
restoration that is 100× better than the raw image), but *differences* between
two restorations of the same image are accurate: on the multislice physics set
of ``benchmarks/physics_set.py`` (27 images × 3 doses, four restorations of
each; ``benchmarks/risk_accuracy.py``) the estimate ordered 474 of 486 pairs
like the true error, with the noise fitted from the image itself, and each
misordered pair was within 0.45 dB (docs/restoration_fidelity.md, section 16). That is what
:func:`choose_restoration` uses it for.

Assumptions: the restoration is deterministic (the same input gives the same
output: torch on CPU, no stochastic layers) and smooth on the scale of a few
per cent of the noise; the noise is Poisson–Gaussian with the given line,
white or correlated between neighbours along one axis (a fast-scan blur).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "NoiseLine",
    "RiskChoice",
    "RiskEstimate",
    "central_region",
    "choose_restoration",
    "estimate_risk",
]

#: Probe step, as a fraction of the local noise standard deviation.
DEFAULT_STEP = 0.05

#: Largest neighbour correlation the two-tap probe can reproduce (its limit is 0.5).
_MAX_CORRELATION = 0.45


@dataclass(frozen=True)
class NoiseLine:
    """Poisson–Gaussian noise ``Var(y) = gain·(mean − offset) + read_variance``.

    Parameters
    ----------
    gain : float
        Image units per detected electron (> 0).
    read_variance : float
        Variance of the signal-independent noise, image units² (≥ 0).
    offset : float
        Image value of zero electrons (dark level), image units.
    correlation : float
        Correlation of the noise between neighbouring pixels along ``axis``
        (0 for white noise; a fast-scan blur makes it positive), within ±0.45.
    axis : int
        Array axis of that correlation (−1: along rows, the fast-scan axis).
    """

    gain: float
    read_variance: float = 0.0
    offset: float = 0.0
    correlation: float = 0.0
    axis: int = -1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain must be a positive number, got {self.gain!r}")
        if not (math.isfinite(self.read_variance) and self.read_variance >= 0):
            raise ValueError(f"read_variance must be ≥ 0, got {self.read_variance!r}")
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be finite, got {self.offset!r}")
        if not abs(self.correlation) <= _MAX_CORRELATION:
            raise ValueError(
                f"correlation must be within ±{_MAX_CORRELATION}, got {self.correlation!r}"
            )

    @classmethod
    def from_fit(cls, fit: Any) -> NoiseLine:
        """From a :class:`napari_emdenoise.noise.fit.NoiseFit`.

        The fit's neighbour correlation is used for scanned images (S(T)EM,
        SEM: along the fast-scan axis, the rows) and clipped to ±0.45; TEM
        noise is taken as white.
        """
        scanned = getattr(fit, "modality", "stem") in ("stem", "sem")
        rho = float(getattr(fit, "noise_correlation", 0.0)) if scanned else 0.0
        rho = float(
            np.clip(rho if math.isfinite(rho) else 0.0, -_MAX_CORRELATION, _MAX_CORRELATION)
        )
        return cls(
            gain=float(fit.gain),
            read_variance=max(float(fit.read_variance), 0.0),
            offset=float(fit.offset),
            correlation=rho,
        )

    def variance(self, y: np.ndarray) -> np.ndarray:
        """Unbiased per-pixel variance estimate ``gain·(y − offset) + read_variance``."""
        return self.gain * (y - self.offset) + self.read_variance


@dataclass(frozen=True)
class RiskEstimate:
    """Estimated mean squared error of one restoration (image units², per pixel).

    Attributes
    ----------
    mse : float
        The estimate; it can come out slightly negative where the true error
        is far below the noise. Compare estimates of one image, not images.
    residual : float
        Mean ``(y − f(y))²``.
    noise_variance : float
        Mean estimated noise variance ``Σᵢ vᵢ / N``.
    divergence : float
        Mean ``Σⱼ Cᵢⱼ ∂fᵢ/∂yⱼ``: how much of the noise the restoration passes
        through (the noise variance for the identity, 0 for a constant).
    """

    mse: float
    residual: float
    noise_variance: float
    divergence: float

    @property
    def noise_passed(self) -> float:
        """``divergence / noise_variance``: 1 for the raw image, near 0 for strong smoothing."""
        return self.divergence / self.noise_variance if self.noise_variance > 0 else math.nan


@dataclass
class RiskChoice:
    """Result of :func:`choose_restoration`.

    Attributes
    ----------
    name : str
        The candidate with the lowest estimated error.
    output : numpy.ndarray
        Its restoration of the whole image.
    risks : dict of str to RiskEstimate
        Every candidate's estimate, in the order given.
    outputs : dict of str to numpy.ndarray
        Every candidate's restoration of the region the estimates were made
        on (the whole image unless ``region`` is set; then
        ``output[region]`` is close to, but not the same as,
        ``outputs[name]``, which was restored without the rest of the image).
    region : tuple of slice or None
        Index of the central crop the estimates were made on (``max_pixels``),
        or None for the whole image.
    """

    name: str
    output: np.ndarray
    risks: dict[str, RiskEstimate] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    region: tuple[slice, ...] | None = None

    def describe(self, labels: Mapping[str, str] | None = None) -> str:
        """One line: every candidate's estimated RMS error, the chosen one marked.

        ``labels`` renames candidates in the text (e.g. to model names).
        """
        labels = labels or {}
        parts = []
        for name, r in self.risks.items():
            rms = math.sqrt(max(r.mse, 0.0))
            mark = " (chosen)" if name == self.name else ""
            parts.append(f"{labels.get(name, name)} {rms:.4g}{mark}")
        return "estimated RMS error: " + ", ".join(parts)


def _probe(
    shape: tuple[int, ...], std: np.ndarray, noise: NoiseLine, rng: np.random.Generator
) -> np.ndarray:
    """Random probe with the noise's covariance: ``std ⊙ c``, ``c`` unit variance.

    ``c`` is white, or a two-tap moving sum ``(z + t·z_shifted)/√(1 + t²)``
    along ``noise.axis`` whose neighbour correlation ``t/(1 + t²)`` is the
    noise's.
    """
    z = rng.standard_normal(shape)
    rho = noise.correlation
    if rho != 0.0:
        t = (1.0 - math.sqrt(1.0 - 4.0 * rho * rho)) / (2.0 * rho)
        z = (z + t * np.roll(z, 1, axis=noise.axis)) / math.sqrt(1.0 + t * t)
    return std * z


def estimate_risk(
    noisy: np.ndarray,
    restore_fn: Callable[[np.ndarray], np.ndarray],
    noise: NoiseLine | Any,
    *,
    rng: np.random.Generator,
    restored: np.ndarray | None = None,
    probes: int = 1,
    step: float = DEFAULT_STEP,
) -> RiskEstimate:
    """Estimate the mean squared error of ``restore_fn(noisy)`` against the clean image.

    Parameters
    ----------
    noisy : numpy.ndarray
        The image (or stack), in the units of ``noise``; finite.
    restore_fn : callable
        The restoration, ``array -> array`` of the same shape; deterministic.
        It is called ``probes`` times on perturbed copies of ``noisy`` (and
        once more if ``restored`` is not given).
    noise : NoiseLine or NoiseFit
        The noise model (a :class:`napari_emdenoise.noise.fit.NoiseFit` is
        converted with :meth:`NoiseLine.from_fit`).
    rng : numpy.random.Generator
        Source of the probes.
    restored : numpy.ndarray, optional
        ``restore_fn(noisy)`` if already computed.
    probes : int
        Monte-Carlo probes averaged for the divergence (≥ 1).
    step : float
        Probe amplitude as a fraction of the local noise standard deviation
        (0 < step ≤ 1).

    Returns
    -------
    RiskEstimate
    """
    if not isinstance(noise, NoiseLine):
        noise = NoiseLine.from_fit(noise)
    if int(probes) < 1:
        raise ValueError(f"probes must be ≥ 1, got {probes!r}")
    if not 0.0 < float(step) <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step!r}")
    y = np.asarray(noisy, dtype=np.float64)
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError("the image must be non-empty and finite (no NaN or inf)")
    f = np.asarray(restore_fn(noisy) if restored is None else restored, dtype=np.float64)
    if f.shape != y.shape:
        raise ValueError(f"the restoration has shape {f.shape}, the image {y.shape}")
    v = noise.variance(y)
    # The probe's per-pixel scale: the variance estimate, kept above the read
    # variance (and above a tiny floor for noise-free read-out) so that dark
    # pixels still get probed.
    floor = max(noise.read_variance, 1e-6 * noise.gain * noise.gain, 1e-30)
    std = np.sqrt(np.maximum(v, floor))
    div = 0.0
    for _ in range(int(probes)):
        b = _probe(y.shape, std, noise, rng)
        moved = np.asarray(restore_fn((y + step * b).astype(np.float32)), dtype=np.float64)
        div += float(np.sum(b * (moved - f))) / step
    n = y.size
    div /= int(probes) * n
    residual = float(np.mean((y - f) ** 2))
    var_mean = float(np.mean(v))
    return RiskEstimate(
        mse=residual - var_mean + 2.0 * div,
        residual=residual,
        noise_variance=var_mean,
        divergence=div,
    )


def choose_restoration(
    noisy: np.ndarray,
    candidates: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    noise: NoiseLine | Any,
    *,
    rng: np.random.Generator,
    probes: int = 1,
    progress: Callable[[str], None] | None = None,
    max_pixels: int | None = None,
) -> RiskChoice:
    """Run every candidate restoration and keep the one with the lowest estimated error.

    Parameters
    ----------
    noisy : numpy.ndarray
        The image (or stack), in the units of ``noise``.
    candidates : mapping of str to callable
        Named restorations, ``array -> array`` (e.g. the bundled model and the
        same model adapted to this image); ties go to the first.
    noise : NoiseLine or NoiseFit
        The noise model.
    rng : numpy.random.Generator
        Source of the probes (the same probes are used for every candidate,
        which makes their differences more precise).
    probes : int
        Monte-Carlo probes per candidate.
    progress : callable, optional
        Called with each candidate's name before it runs.
    max_pixels : int, optional
        Make the estimates on a central crop of at most this many pixels (the
        middle frame of a stack whose frames together exceed it) and run only
        the chosen candidate on the whole image: the choice then costs
        ``2·len(candidates)`` restorations of the crop and one of the image,
        instead of ``2·len(candidates)`` of the image. Sensible for images
        over about 1000² pixels. None: the whole image.

    Returns
    -------
    RiskChoice
    """
    if not candidates:
        raise ValueError("no candidate restorations given")
    data = np.asarray(noisy)
    region = None if max_pixels is None else central_region(data.shape, max_pixels)
    sample = data if region is None else data[region]
    seed = rng.integers(2**63)
    risks: dict[str, RiskEstimate] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, fn in candidates.items():
        if progress is not None:
            progress(name)
        outputs[name] = np.asarray(fn(sample))
        risks[name] = estimate_risk(
            sample,
            fn,
            noise,
            rng=np.random.default_rng(seed),
            restored=outputs[name],
            probes=probes,
        )
    best = min(risks, key=lambda k: risks[k].mse)
    output = outputs[best] if region is None else np.asarray(candidates[best](data))
    return RiskChoice(best, output, risks, outputs, region)


def central_region(shape: tuple[int, ...], max_pixels: int) -> tuple[slice, ...] | None:
    """Index of a central crop of an image or stack with at most ``max_pixels`` pixels.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` or ``(frames, height, width)``.
    max_pixels : int
        Largest crop (≥ 64² = 4096 pixels, so that the estimate has pixels enough).

    Returns
    -------
    tuple of slice or None
        None if the whole array fits; else the middle frame of a stack (if the
        frames together exceed ``max_pixels``) cropped to its centre, keeping
        the aspect ratio where that leaves both sides at least 64 pixels.
    """
    if int(max_pixels) < 4096:
        raise ValueError(f"max_pixels must be at least 4096 (64²), got {max_pixels!r}")
    if math.prod(shape) <= max_pixels:
        return None
    height, width = shape[-2], shape[-1]
    lead: tuple[slice, ...] = ()
    if len(shape) == 3:
        mid = shape[0] // 2
        lead = (slice(mid, mid + 1),)
    # the frame scaled down, each side at least 64 px where the frame has them;
    # then the longer side shortened until the crop fits
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    h = min(height, max(int(height * scale), 64))
    w = min(width, max(int(width * scale), 64))
    if h * w > max_pixels:
        if h > w:
            h = max_pixels // w
        else:
            w = max_pixels // h
    top, left = (height - h) // 2, (width - w) // 2
    return (*lead, slice(top, top + h), slice(left, left + w))

"""Keep a restoration no worse than its input: SURE-optimal blending with the raw image.

A network trained on synthetic pairs can meet an image it does not "know"
(another structure, pixel size or noise level). It may then remove signal
along with the noise, or reshape what it cannot explain. The safeguard asks
the image itself how much of the network's change to keep: the output is

    o = x + λ · (f(x) − x),    λ ∈ [0, 1],

with λ chosen to minimise an unbiased estimate of the mean squared error
against the unknown noise-free image (Stein's unbiased risk estimate, SURE;
Stein, "Estimation of the mean of a multivariate normal distribution", Ann.
Stat. 1981). With ``r = x − f(x)`` and per-pixel noise variance ``v``,

    E‖o − s‖² = Σ v − 2λ (Σ v − Σ v_i ∂f_i/∂x_i) + λ² ‖r‖²,

so λ* = (Σ v − Σ v_i ∂f_i/∂x_i) / ‖r‖². The weighted divergence is estimated
with one Monte-Carlo probe (Ramani, Blu & Unser, "Monte-Carlo SURE: a
black-box optimization of regularization parameters for general denoising
algorithms", IEEE TIP 2008), on a central crop to keep the cost small, and
the variance from the image's own mean–variance line ``v = a·mean + c``
(Poisson–Gaussian noise, measured on a high-pass residual).

If the network only removes noise, λ* ≈ 1 and nothing changes. If it also
removes or moves signal, ‖r‖² exceeds what the noise explains and λ* < 1
pulls the result towards the input. Distortions other than white noise (row
lines, scan jitter, blur) also raise ‖r‖², so on such images the safeguard
is conservative: it keeps less of the correction, never more than all of it.
The blend is affine-equivariant (``a·x + b`` gives ``a·o + b``).

**Impulses stay removed.** Zingers (X-ray hits on a camera) and hot or
dead pixels are departures of single pixels far beyond any counting noise,
and a network trained on them removes them. Left to the blend they would
come back with weight ``1 − λ``: a zinger of 1000 counts put back at 8 % is
80 counts, which at a few counts per pixel costs more than all the noise the
network removed. A pixel is therefore treated as an impulse when the
network's change there exceeds ``IMPULSE_SIGMAS`` noise deviations *and*
the raw pixel stands out from the median of its eight neighbours by
``IMPULSE_SPREADS`` times the noise deviation or their own spread, whichever
is larger (a spike, not an atom column or an edge the network blurred); the
mask grows by one pixel into neighbours whose change exceeds
``IMPULSE_GROW_SIGMAS``. The blend starts from the network's value there
instead of the raw one, and those pixels do not enter the risk estimate.
The deviations come from the noise line of the residual against the
network's output (which zingers do not move); the blend's own noise line is
then fitted to the frame with the impulses replaced, so a frame without
impulses is blended exactly as before. Thin bright lines (burnt-in
annotations) are not spikes by this test and are blended like the rest.

**One weight per frequency band.** A network can be right at some scales and
wrong at others: on a multislice image with a 5-px lattice period a CGRDN
trained on synthetic pairs removed the lattice (a change at 0.2 cycles/pixel)
while its smoothing of the background was correct. One global λ must then
trade both. With band ``edges`` the change ``d = f(x) − x`` is split by a
smooth partition of unity in radial frequency, ``d = Σ_k B_k d`` (octave
bands, raised-cosine crossovers), and

    o = x + Σ_k λ_k · B_k d,    λ ∈ [0, 1]^K.

Its SURE is a quadratic in λ, ``λᵀGλ + 2 Σ_k λ_k (D_k − T_k) + const``, with
``G_kl = ⟨B_k d, B_l d⟩``, ``D_k`` the noise-weighted divergence of ``B_k f``
(one Monte-Carlo probe serves all bands) and ``T_k = Σ_i v_i (B_k)_ii``, the
same for ``B_k x``. λ is the box-constrained minimiser (coordinate descent).
With one band this is the global weight above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..noise.variance import noise_variance_line

__all__ = [
    "BlendResult",
    "describe_band_weights",
    "impulse_mask",
    "noise_variance_line",
    "sure_blend",
]

logger = logging.getLogger(__name__)

#: Side of the central crop (pixels) on which λ is estimated, plus the margin
#: left out of the sums on each side (the network sees no context beyond it).
CROP_SIDE = 384
CROP_MARGIN = 24

#: Smallest frame side (pixels) on which λ is estimated; smaller frames keep
#: the network's output unchanged (too few pixels for the noise fit).
MIN_SIDE = 48

#: Radial frequencies (cycles/pixel) between the bands of the default
#: band-wise blend: five octave bands, the last one up to Nyquist.
BAND_EDGES = (1 / 32, 1 / 16, 1 / 8, 1 / 4)

#: Fewest periods of a band's lower edge frequency that the estimation region
#: must span for the band to get its own weight.
MIN_PERIODS_PER_BAND = 8

#: Smallest side (pixels) of the estimation region for weights per band; on
#: smaller frames one Monte-Carlo probe gives too noisy a divergence per band
#: (measured: a 128² frame lost 0.13 dB against its input), so one global
#: weight is used.
BAND_MIN_SIDE = 160

#: High-pass kernel of the noise-variance fit (``noise_variance_line``).
VARIANCE_KERNEL = "corner"

#: A pixel whose network change exceeds this many noise deviations is an
#: impulse (zinger, dead or hot pixel, annotation): it keeps the network's value.
IMPULSE_SIGMAS = 6.0

#: ... and stands out from the median of its eight neighbours by this many
#: times their spread (half the second-largest minus the second-smallest) or
#: noise deviations, whichever is larger.
IMPULSE_SPREADS = 8.0

#: Neighbours (8-connected) of an impulse whose change exceeds this many noise
#: deviations belong to it (the edges of a zinger or of annotation strokes).
IMPULSE_GROW_SIGMAS = 3.0

#: Padding (pixels, reflected) around a frame before it is filtered by bands.
_FILTER_PAD = 32


@dataclass(frozen=True)
class BlendResult:
    """Outcome of :func:`sure_blend`.

    Attributes
    ----------
    image : numpy.ndarray
        ``x + λ·(f(x) − x)``, float32.
    weight : float
        Share of the network's change kept, in [0, 1]: λ with one band, the
        energy-weighted mean ``Σ λ_k G_kk / Σ G_kk`` with several. 1 keeps the
        network's output, 0 returns the input.
    estimated : bool
        False when λ could not be estimated (tiny or flat frame) and 1 was used.
    band_weights : tuple of float
        λ_k per band, from the lowest frequencies to Nyquist (one value for a
        single band).
    """

    image: np.ndarray
    weight: float
    estimated: bool
    band_weights: tuple[float, ...] = (1.0,)


def _central_crop(shape: tuple[int, int]) -> tuple[slice, slice]:
    side = CROP_SIDE + 2 * CROP_MARGIN
    return tuple(  # type: ignore[return-value]
        slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape
    )


def describe_band_weights(
    weights: Sequence[Sequence[float]], edges: tuple[float, ...] = BAND_EDGES
) -> str:
    """One line for a microscopist: how much of the network's change the safeguard kept.

    Parameters
    ----------
    weights : sequence of sequences of float
        ``BlendResult.band_weights`` of one or more frames (the median over
        frames is shown).
    edges : tuple of float
        The band edges they were computed with, cycles/pixel.

    Examples
    --------
    >>> text = describe_band_weights([(0.0, 0.02, 0.5, 1.0, 1.0)])
    >>> text.split(" at ")[0]
    'safeguard kept 0 / 2 / 50 / 100 / 100 % of the change'
    >>> text.split(" at ")[1]
    '< 1/32 / 1/32–1/16 / 1/16–1/8 / 1/8–1/4 / > 1/4 cycles/px'
    """
    table = np.asarray([tuple(w) for w in weights], dtype=float)
    if table.ndim != 2 or table.shape[1] != len(edges) + 1 or not len(table):
        raise ValueError(f"expected weights of {len(edges) + 1} bands per frame, got {weights!r}")
    median = np.median(table, axis=0)
    names = [f"1/{round(1 / e)}" for e in edges]
    bands = [f"< {names[0]}"] + [f"{a}–{b}" for a, b in zip(names, names[1:])] + [f"> {names[-1]}"]
    frames = f" (median of {len(table)} frames)" if len(table) > 1 else ""
    kept = " / ".join(f"{100 * w:.0f}" for w in median)
    return f"safeguard kept {kept} % of the change at {' / '.join(bands)} cycles/px{frames}"


def band_responses(shape: tuple[int, int], edges: tuple[float, ...] = BAND_EDGES) -> np.ndarray:
    """Radial band filters on the ``numpy.fft.rfft2`` grid of ``shape``, summing to one.

    Band ``k`` passes radial frequencies between ``edges[k-1]`` and ``edges[k]``
    (cycles/pixel) with raised-cosine crossovers one octave wide, centred on
    each edge; band 0 includes zero frequency, the last band Nyquist.

    Returns
    -------
    numpy.ndarray
        ``(len(edges) + 1, ny, nx // 2 + 1)`` float64, non-negative, summing to 1
        at every frequency.
    """
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.hypot(fy, fx)
    with np.errstate(divide="ignore"):
        log_r = np.log2(radius)
    steps = [np.sin(0.5 * np.pi * np.clip(log_r - np.log2(e) + 0.5, 0.0, 1.0)) ** 2 for e in edges]
    ones = np.ones_like(radius)
    upper = [ones, *steps]
    lower = [*steps, np.zeros_like(radius)]
    return np.stack([u - lo for u, lo in zip(upper, lower, strict=True)])


def _split_bands(image: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """``image`` filtered by each band (circular), ``(K, *image.shape)``."""
    spectrum = np.fft.rfft2(image)
    return np.fft.irfft2(responses * spectrum[None], s=image.shape, axes=(-2, -1))


def _box_quadratic_minimum(gram: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """argmin over λ ∈ [0, 1]^K of ``λᵀ G λ + 2 bᵀ λ`` (G positive semi-definite)."""
    k = len(linear)
    lam = np.ones(k)
    for _ in range(500):
        previous = lam.copy()
        for i in range(k):
            if gram[i, i] <= 0:
                lam[i] = 1.0
                continue
            rest = gram[i] @ lam - gram[i, i] * lam[i]
            lam[i] = np.clip(-(linear[i] + rest) / gram[i, i], 0.0, 1.0)
        if np.max(np.abs(lam - previous)) < 1e-9:
            break
    return lam


def _apply_band_weights(
    x: np.ndarray, change: np.ndarray, edges: tuple[float, ...], lam: np.ndarray
) -> np.ndarray:
    """``x + Σ λ_k B_k change`` on a whole frame (reflect-padded to limit wrap-around)."""
    if np.allclose(lam, lam[0]):
        return x + lam[0] * change
    pad = min(_FILTER_PAD, *(n - 1 for n in change.shape))
    padded = np.pad(change, pad, mode="reflect")
    gain = np.tensordot(lam, band_responses(padded.shape, edges), axes=1)
    filtered = np.fft.irfft2(gain * np.fft.rfft2(padded), s=padded.shape)
    return x + filtered[pad : pad + change.shape[0], pad : pad + change.shape[1]]


def impulse_mask(
    noisy: np.ndarray, restored: np.ndarray, slope: float, intercept: float
) -> np.ndarray:
    """Pixels where the restoration removed an impulse, not noise (module notes).

    Parameters
    ----------
    noisy, restored : numpy.ndarray
        The input frame and the network's output, same shape.
    slope, intercept : float
        The frame's noise line, ``Var = slope·level + intercept`` (intensity
        units), evaluated at the restored level.

    Returns
    -------
    numpy.ndarray
        Boolean mask, True where ``|noisy − restored|`` exceeds
        ``IMPULSE_SIGMAS`` deviations and the raw pixel's departure from the
        median of its eight neighbours exceeds ``IMPULSE_SPREADS`` times the
        larger of the noise deviation and the neighbours' own spread (a spike
        of one or two pixels, not an atom column or an edge the network
        blurred),
        grown by one pixel into neighbours whose change exceeds
        ``IMPULSE_GROW_SIGMAS``.
    """
    x = np.asarray(noisy, dtype=np.float64)
    f = np.asarray(restored, dtype=np.float64)
    variance = slope * f + intercept
    # A floor for pixels at or below the offset: a tenth of the median variance.
    positive = variance[variance > 0]
    floor = 0.1 * float(np.median(positive)) if positive.size else 0.0
    if floor <= 0:
        return np.zeros(x.shape, dtype=bool)
    sd = np.sqrt(np.maximum(variance, floor))
    z = np.abs(x - f) / sd
    rows, cols = np.nonzero(z > IMPULSE_SIGMAS)
    core = np.zeros(x.shape, dtype=bool)
    if rows.size == 0:
        return core
    # The candidates' eight neighbours, sorted: an impulse stands out from
    # their median by far more than their own spread (the second-largest minus
    # the second-smallest, so that one neighbour of a two-pixel zinger does not
    # count). An atom column or an edge the network blurred does not: its
    # neighbours are nearly as bright and spread as much as it stands out.
    padded = np.pad(x, 1, mode="reflect")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    ring = np.sort(np.stack([padded[rows + 1 + dy, cols + 1 + dx] for dy, dx in offsets], 1), 1)
    median = 0.5 * (ring[:, 3] + ring[:, 4])
    spread = 0.5 * (ring[:, 6] - ring[:, 1])
    departure = np.abs(x[rows, cols] - median)
    # Neighbours never spread less than the noise (eight of them can, by chance).
    spike = departure > IMPULSE_SPREADS * np.maximum(spread, sd[rows, cols])
    core[rows[spike], cols[spike]] = True
    if not core.any():
        return core
    grown = ndimage.binary_dilation(core, structure=np.ones((3, 3)))
    return core | (grown & (z > IMPULSE_GROW_SIGMAS))


def sure_blend(
    noisy: np.ndarray,
    restored: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    *,
    edges: tuple[float, ...] = BAND_EDGES,
) -> BlendResult:
    """Blend a restoration with its input by SURE-optimal weights per frequency band (module notes).

    Parameters
    ----------
    noisy : numpy.ndarray
        The input frame ``x`` (2-D).
    restored : numpy.ndarray
        The network's output ``f(x)`` for the whole frame, same shape.
    forward : callable
        ``forward(crop) -> restored crop``: the same restoration applied to a
        2-D array (two calls, on a central crop of at most 432² pixels).
    rng : numpy.random.Generator
        Source of the Monte-Carlo probe (seeded: the result is reproducible).
    edges : tuple of float
        Radial frequencies (cycles/pixel) between the bands; ``()`` gives one
        global weight.

    Returns
    -------
    BlendResult
    """
    x = np.asarray(noisy, dtype=np.float64)
    fx = np.asarray(restored, dtype=np.float64)
    n_bands = len(edges) + 1
    keep = BlendResult(fx.astype(np.float32), 1.0, False, (1.0,) * n_bands)
    if min(x.shape) < MIN_SIDE:
        return keep
    # Impulses start from the network's value: the blend cannot put them back.
    # They are found with the noise line of the residual against the network
    # (which zingers do not move), and the blend's own noise line is fitted
    # to the frame without them (block variances: zingers would inflate it).
    impulses = impulse_mask(x, fx, *noise_variance_line(x, kernel=VARIANCE_KERNEL, pilot=fx))
    start = np.where(impulses, fx, x)
    slope, intercept = noise_variance_line(start, kernel=VARIANCE_KERNEL)
    crop = _central_crop(x.shape)
    xc = x[crop]
    start_c = start[crop]
    outside = ~impulses[crop]
    inner = tuple(
        slice(CROP_MARGIN, n - CROP_MARGIN) if n > 4 * CROP_MARGIN else slice(None)
        for n in xc.shape
    )
    # A band needs several periods inside the estimation region, or its SURE
    # is too noisy: lower edges merge into the first band on small frames.
    side = min(xc[inner].shape)
    used = tuple(e for e in edges if e * side >= MIN_PERIODS_PER_BAND)
    if side < BAND_MIN_SIDE:
        used = ()
    f0 = np.asarray(forward(xc.astype(np.float32)), dtype=np.float64)
    v = np.clip(slope * f0 + intercept, 0.0, None)
    sum_v = float((v * outside)[inner].sum())
    if not np.isfinite(sum_v) or sum_v <= 0:
        return keep
    sd = np.sqrt(v)
    probe = rng.standard_normal(xc.shape)
    # Perturbation small against the noise (10⁻² σ), large against float32 rounding.
    eps = 1e-2
    f1 = np.asarray(forward((xc + eps * sd * probe).astype(np.float32)), dtype=np.float64)

    responses = band_responses(xc.shape, used)
    n_used = len(used) + 1
    change_bands = _split_bands(f0 - start_c, responses)[(slice(None), *inner)]
    delta_bands = _split_bands(f1 - f0, responses)[(slice(None), *inner)]
    flat = change_bands.reshape(n_used, -1)
    gram = flat @ flat.T
    if np.trace(gram) <= 0:
        return keep
    weighted_probe = (sd * probe * outside)[inner]
    divergence = (delta_bands * weighted_probe[None]).reshape(n_used, -1).sum(1) / eps
    # Diagonal of the circular filter B_k: its impulse response at the origin.
    trace = np.fft.irfft2(responses, s=xc.shape, axes=(-2, -1))[:, 0, 0] * sum_v
    lam = _box_quadratic_minimum(gram, divergence - trace)
    weight = float(lam @ np.diag(gram) / np.trace(gram))
    logger.info("safeguard: keeping %s of the network's change per band", np.round(lam, 3))
    out = _apply_band_weights(start, fx - start, used, lam)
    # Report one weight per requested band (merged low bands share the first weight).
    per_band = [float(lam[0])] * (n_bands - n_used) + [float(v) for v in lam]
    return BlendResult(out.astype(np.float32), weight, True, tuple(per_band))

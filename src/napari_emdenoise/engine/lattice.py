"""Lattice pass: give back the periodic signal a restoration removed.

A network trained on synthetic pairs, and the Wiener refinement that follows
it (:mod:`.wiener`), cannot give back a lattice the network erased: the
refinement keeps of each raw coefficient the share the network's output says
is signal, and an erased fringe has none. On multislice simulations and on
the lattice probe of ``benchmarks/lattice_transfer.py`` the bundled networks
erase fringes of period ≤ 6 pixels at any dose, and weak fringes of longer
period at low dose (graphene HRTEM at 2–5 counts/pixel).

An erased lattice is still in the residual ``r = image − restored``, the part
of the frame the restoration called noise, and there it is easy to find: a
lattice concentrates its power into a few Fourier coefficients (the Bragg
reflections), while counting noise spreads evenly over all of them. The pass
has two steps.

1. **Find the reflections.** The periodogram ``|R_k|²`` of the residual
   (Moisan's periodic component, so the frame edges add no streaks) is
   compared with the noise floor ``F_k``, a running median over 16 × 16
   coefficients (on the two axes through the origin, where offsets between
   scan lines or columns put their power, the median along the axis when
   larger, so such lines count as floor). For noise alone ``|R_k|² / F_k`` is
   exponentially distributed, so coefficients above ``T = ln(n / α)`` (``n``
   coefficient pairs, ``α`` = :attr:`LatticeSettings.false_alarms`) are
   reflections; their neighbours above :attr:`LatticeSettings.grow_threshold`
   join them (a reflection spread by a finite or strained crystal, or by scan
   jitter). Only periods shorter than :attr:`LatticeSettings.longest_period`
   are considered: the networks keep coarser lattices, and slow intensity
   variations are not a lattice.
2. **Put each reflection back where it is.** A lattice is rarely periodic
   over the frame, so a few Fourier coefficients would rebuild it with the
   wrong phase near the edges (fringes shifted by up to a sixth of a period
   within 40 pixels of the edge, measured). Each reflection ``k`` is instead
   demodulated, as in geometric phase analysis: ``z = r·e^{−2πi k·x}`` is
   averaged over a Gaussian of :attr:`LatticeSettings.smoothing` pixels,
   normalised by the weights inside the frame (nothing outside it is assumed),
   shrunk by the local Wiener gain ``1 − N / |z̄|²`` (``N`` the noise left in
   the average) and put back as ``2·Re(z̄·e^{2πi k·x})``, with the local
   amplitude and phase of the frame's own fringes. Reflections are taken
   strongest first, each from what the previous ones left.

What comes back is significant in the frame itself, so nothing is invented;
it is the raw frame's lattice, with the noise of a narrow band around each
reflection. Periodic *noise* in the raw frame (mains interference in a scan)
comes back as well: in one frame it cannot be told apart from a lattice. The
pass is the Bragg filtering microscopists apply by hand to lattice images,
applied to what the restoration removed rather than to the image.

Frames larger than :attr:`LatticeSettings.tile` are processed in overlapping
tiles, cross-faded with the engine's :class:`~.tiling.TileBlender`.

Measured: ``benchmarks/lattice_transfer.py`` (lattices of 4–6 px erased by
the networks come back at 0.9 and more of their amplitude), the physics set of
``benchmarks/restore_quality.py`` and the real micrographs of
``benchmarks/real_micrographs.py``; ``docs/restoration_fidelity.md``,
section 12, has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._frame_pair import frame_pair
from .tiling import TileBlender, TileGrid

__all__ = ["LATTICE_SHARE_WARNING", "LatticeSettings", "lattice_share", "restore_lattice"]


@dataclass(frozen=True)
class LatticeSettings:
    """Settings of the lattice pass.

    Attributes
    ----------
    longest_period : float
        Longest lattice period given back, pixels (4–256). The bundled
        networks keep coarser lattices; slow variations are not a lattice.
    false_alarms : float
        Nominal number of noise coefficients passed per frame or tile
        (10⁻⁴–10); sets the detection threshold ``ln(n / false_alarms)``.
        The noise floor is itself estimated, which makes the tail heavier:
        with 0.01, 2–3 % of pure-noise frames (256²–512²) get one
        coefficient through (0.05: 12–15 %).
    grow_threshold : float
        Neighbours of a detected peak pass when their power exceeds this
        many times the noise floor (1–50).
    smoothing : float
        Width (Gaussian σ, pixels; 4–256) over which each reflection's local
        amplitude and phase are averaged: longer averages pass less noise,
        shorter ones follow a lattice that bends or changes between grains.
    max_peaks : int
        Most reflections given back per frame or tile (1–256), strongest first.
    tile : int
        Largest frame side processed in one piece, pixels (128–8192); larger
        frames go in tiles of this side overlapping by a quarter.
    """

    longest_period: float = 48.0
    false_alarms: float = 0.01
    grow_threshold: float = 2.0
    smoothing: float = 32.0
    max_peaks: int = 64
    tile: int = 2048

    def __post_init__(self) -> None:
        if not (4.0 <= self.longest_period <= 256.0):
            raise ValueError(f"longest_period must be in [4, 256] px, got {self.longest_period!r}")
        if not (1e-4 <= self.false_alarms <= 10.0):
            raise ValueError(f"false_alarms must be in [1e-4, 10], got {self.false_alarms!r}")
        if not (1.0 <= self.grow_threshold <= 50.0):
            raise ValueError(f"grow_threshold must be in [1, 50], got {self.grow_threshold!r}")
        if not (4.0 <= self.smoothing <= 256.0):
            raise ValueError(f"smoothing must be in [4, 256] px, got {self.smoothing!r}")
        if not (isinstance(self.max_peaks, int) and 1 <= self.max_peaks <= 256):
            raise ValueError(f"max_peaks must be an integer in [1, 256], got {self.max_peaks!r}")
        if not (isinstance(self.tile, int) and 128 <= self.tile <= 8192):
            raise ValueError(f"tile must be an integer in [128, 8192], got {self.tile!r}")


#: Smallest frame side (pixels) the pass works on; smaller frames are returned unchanged.
MIN_SIDE = 32

#: Block of the spectrum over which the 2-D noise floor is a median (coefficients).
FLOOR_BLOCK = 16

#: Run of coefficients along one axis over which the line floor is a median.
FLOOR_LINE = 32

#: Half-width (cycles/pixel) of the bands around the axes through the origin that get
#: the line floor: structure that varies along the scan lines more slowly than every
#: 64 pixels (a scan streak tens of pixels long is that wide in frequency).
FLOOR_AXIS_BAND = 1.0 / 64.0

#: Working memory of :func:`restore_lattice` per frame pixel, bytes (float64 copies of
#: the frame, its restoration and the residual, the tile's spectrum, periodogram and
#: noise floor; measured 72–76 with ``tracemalloc`` on 2048² and 3000² frames).
WORKING_BYTES_PER_PIXEL = 80


def _block_median(power: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Median of ``power`` over ``block`` tiles, repeated back to ``power``'s shape."""
    h, w = power.shape
    by, bx = min(block[0], h), min(block[1], w)
    ph, pw = (-h) % by, (-w) % bx
    padded = np.pad(power, ((0, ph), (0, pw)), mode="edge")
    ny, nx = padded.shape[0] // by, padded.shape[1] // bx
    med = np.median(padded.reshape(ny, by, nx, bx), axis=(1, 3))
    return np.repeat(np.repeat(med, by, axis=0), bx, axis=1)[:h, :w]


def _noise_floor(power: np.ndarray) -> np.ndarray:
    """Mean noise power of every coefficient of a centred (``fftshift``-ed) periodogram.

    A running median over 16 × 16 blocks, divided by ln 2 (the median of an
    exponential distribution over its mean); reflections are sparse and do not
    move it. Within :data:`FLOOR_AXIS_BAND` of the two axes through the
    centre, where offsets between scan lines or columns and the streaks of
    scan noise put their power, the median along the axis (32
    coefficients) is taken when larger, so that such lines count as floor,
    not as reflections. Elsewhere a line is signal: jitter smears a lattice
    reflection into a streak, which is still the frame's lattice.
    """
    h, w = power.shape
    floor = _block_median(power, (FLOOR_BLOCK, FLOOR_BLOCK))
    cy, cx = h // 2, w // 2
    by, bx = (max(1, math.ceil(n * FLOOR_AXIS_BAND)) for n in (h, w))
    columns = slice(max(cx - bx, 0), cx + bx + 1)
    rows = slice(max(cy - by, 0), cy + by + 1)
    np.maximum(floor[:, columns], _block_median(power[:, columns], (FLOOR_LINE, 1)),
               out=floor[:, columns])  # fmt: skip
    np.maximum(floor[rows, :], _block_median(power[rows, :], (1, FLOOR_LINE)), out=floor[rows, :])
    return floor / math.log(2.0)


@dataclass(frozen=True)
class _Peak:
    """One lattice reflection found in a residual's spectrum."""

    fy: float  # frequency, cycles/pixel
    fx: float
    power: float  # highest periodogram value of the peak
    floor: float  # noise floor around it, same unit


def _find_peaks(residual: np.ndarray, settings: LatticeSettings) -> list[_Peak]:
    """The reflections that stand out of the noise in the residual's spectrum.

    One entry per reflection pair ``±k`` (the one with ``fx > 0``, or ``fy > 0``
    on the ``fx = 0`` axis), strongest first, at most
    :attr:`LatticeSettings.max_peaks`. Frequencies are the power-weighted
    centroids of the significant coefficients of each peak (sub-bin).
    """
    from scipy import ndimage

    from ..evaluation.spectra import periodic_spectrum

    h, w = residual.shape
    spectrum = np.fft.fftshift(periodic_spectrum(residual))
    power = spectrum.real**2 + spectrum.imag**2
    del spectrum
    floor = _noise_floor(power)
    ky = ((np.arange(h) - h // 2) / h)[:, None]
    kx = ((np.arange(w) - w // 2) / w)[None, :]
    fine = np.hypot(ky, kx) >= 1.0 / settings.longest_period
    # Each real reflection is a pair of coefficients ±k: n/2 independent ones; for
    # noise alone power / floor is exponentially distributed.
    n = max(int(np.count_nonzero(fine)) // 2, 1)
    ratio = np.where(fine, power / np.maximum(floor, np.finfo(float).tiny), 0.0)
    seeds = ratio > math.log(n / settings.false_alarms)
    if not seeds.any():
        return []
    # A reflection spread over a few coefficients (a finite or strained crystal,
    # a lattice that is not periodic over the frame): its neighbours above the
    # lower threshold belong to it.
    grown = seeds | (ndimage.binary_dilation(seeds) & (ratio > settings.grow_threshold))
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    peaks = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[region] == index
        if not seeds[region][mask].any():
            continue
        p = power[region][mask]
        fy = float(np.sum(p * np.broadcast_to(ky[region[0]], mask.shape)[mask]) / p.sum())
        fx = float(np.sum(p * np.broadcast_to(kx[:, region[1]], mask.shape)[mask]) / p.sum())
        if fx > 1e-12 or (abs(fx) <= 1e-12 and fy > 0.0):
            peaks.append(_Peak(fy, fx, float(p.max()), float(np.median(floor[region][mask]))))
    peaks.sort(key=lambda pk: pk.power, reverse=True)
    return peaks[: settings.max_peaks]


def _gaussian_weights(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights, ±4σ."""
    radius = max(int(math.ceil(4.0 * sigma)), 1)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _blocks(n: int, d: int) -> tuple[int, np.ndarray]:
    """Number of ``d``-pixel blocks covering ``n`` pixels, and the pixels in each."""
    nb = -(-n // d)
    count = np.full(nb, float(d))
    count[-1] = n - d * (nb - 1)
    return nb, count


def _interpolation(n: int, d: int, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation from block centres to ``n`` pixels: indices i0, i1, i1's weight."""
    pos = np.clip((np.arange(n) + 0.5) / d - 0.5, 0.0, nb - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, nb - 1)
    return i0, i1, pos - i0


def _demodulate(residual: np.ndarray, peak: _Peak, sigma: float) -> np.ndarray:
    """The part of ``residual`` in step with one reflection, with its local amplitude and phase.

    Complex demodulation, as in geometric phase analysis (Hÿtch, Snoeck & Kilaas,
    Ultramicroscopy 74, 131, 1998): ``z = r·e^{−2πi k·x}`` is averaged by a
    Gaussian of ``sigma`` pixels, normalised by the weights inside the frame so
    that nothing outside it is assumed (no wrap-around, no edge bias), and
    ``2·Re(g·z̄·e^{2πi k·x})`` is the reflection's fringes. ``g = 1 − N / |z̄|²``
    (clipped at 0) is the local Wiener gain, ``N`` the noise power left in
    ``z̄``. ``z̄`` varies on the scale of ``sigma``, so it is computed on blocks
    of ``d ≈ sigma / 4`` pixels and interpolated back (bilinearly); both steps
    are separable, so the full-resolution work is one pass to form the block
    sums and one sparse product to put the fringes back.

    Parameters
    ----------
    residual : numpy.ndarray
        ``(h, w)`` float32 residual.
    peak : _Peak
        The reflection.
    sigma : float
        Gaussian σ of the average, pixels.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` float32 fringes.
    """
    from scipy import ndimage, sparse

    h, w = residual.shape
    d = max(1, int(sigma // 4))
    (hb, cy), (wb, cx) = _blocks(h, d), _blocks(w, d)
    ey = np.exp(-2j * np.pi * peak.fy * np.arange(hb * d))
    ex = np.exp(-2j * np.pi * peak.fx * np.arange(wb * d))
    ey[h:] = 0.0
    ex[w:] = 0.0
    r = residual
    if (hb * d, wb * d) != (h, w):
        r = np.pad(residual, ((0, hb * d - h), (0, wb * d - w)))
    # Block sums of r·e^{−2πi k·x}: along x (one pass over the frame, real and
    # imaginary parts), then along y on the (h, wb) result.
    rx = r.reshape(hb * d, wb, d)
    along_x = np.einsum("yjd,jd->yj", rx, ex.real.reshape(wb, d).astype(np.float32)) + 1j * (
        np.einsum("yjd,jd->yj", rx, ex.imag.reshape(wb, d).astype(np.float32))
    )
    z = (along_x.reshape(hb, d, wb) * ey.reshape(hb, d, 1)).sum(axis=1)

    kernel = _gaussian_weights(sigma / d)

    def smooth(a: np.ndarray, k: np.ndarray = kernel) -> np.ndarray:
        a = ndimage.correlate1d(a, k, axis=0, mode="constant")
        return ndimage.correlate1d(a, k, axis=1, mode="constant")

    def smooth1(a: np.ndarray, k: np.ndarray = kernel) -> np.ndarray:
        return ndimage.correlate1d(a, k, mode="constant")

    # Pixels per block are an outer product, so are their smoothed sums.
    weight = np.outer(smooth1(cy), smooth1(cx))
    z_mean = (smooth(z.real) + 1j * smooth(z.imag)) / weight
    # Noise of z̄: white noise of variance V per pixel (V = floor / n for the FFT's
    # power) averaged with these weights: V · Σ g²·count / (Σ g·count)².
    k2 = kernel * kernel
    variance = peak.floor / (h * w) * np.outer(smooth1(cy, k2), smooth1(cx, k2)) / weight**2
    power = z_mean.real**2 + z_mean.imag**2
    local = np.clip(1.0 - variance / np.maximum(power, np.finfo(float).tiny), 0.0, 1.0) * z_mean
    # Back to the pixels: along x on the block rows (with e^{+2πi kx·x}), then
    # along y with e^{+2πi ky·y} as one sparse (h × hb) product; the real part.
    j0, j1, fx = _interpolation(w, d, wb)
    phase_x = np.conj(ex[:w])
    rows = (local[:, j0] * (1.0 - fx) + local[:, j1] * fx) * phase_x
    i0, i1, fy = _interpolation(h, d, hb)
    phase_y = np.conj(ey[:h])
    ind = np.concatenate([i0, i1])
    ptr = np.arange(h + 1) * 2
    order = np.stack([np.arange(h), np.arange(h) + h], axis=1).ravel()
    vals = np.concatenate([phase_y * (1.0 - fy), phase_y * fy])[order]
    cols = ind[order]
    a_re = sparse.csr_matrix((vals.real.astype(np.float32), cols, ptr), shape=(h, hb))
    a_im = sparse.csr_matrix((vals.imag.astype(np.float32), cols, ptr), shape=(h, hb))
    out = a_re @ rows.real.astype(np.float32)
    out -= a_im @ rows.imag.astype(np.float32)
    out *= 2.0
    return np.asarray(out, dtype=np.float32)


def _lattice_of(residual: np.ndarray, settings: LatticeSettings) -> np.ndarray:
    """The significant lattice fringes of one tile's residual (float32)."""
    lattice = np.zeros(residual.shape, dtype=np.float32)
    remaining = residual.astype(np.float32)
    for peak in _find_peaks(residual, settings):
        # Strongest first, each from what the previous ones left: two reflections closer
        # than the demodulation's bandwidth (one peak split in two) are not counted twice.
        part = _demodulate(remaining, peak, settings.smoothing)
        lattice += part
        remaining -= part
    return lattice


def restore_lattice(
    image: np.ndarray, restored: np.ndarray, settings: LatticeSettings | None = None
) -> np.ndarray:
    """Add back the lattice (periodic) signal that ``restored`` removed from ``image``.

    Parameters
    ----------
    image : numpy.ndarray
        The raw 2-D frame, any intensity unit.
    restored : numpy.ndarray
        Its restoration, same shape and unit.
    settings : LatticeSettings, optional
        Detection settings (defaults: periods under 48 pixels, a nominal 0.01
        noise coefficients passed per frame).

    Returns
    -------
    numpy.ndarray
        Float32 ``restored`` plus the significant periodic part of
        ``image − restored``. Frames under 32 pixels on a side, and
        non-finite inputs, are returned as ``restored``.

    Raises
    ------
    ValueError
        If the arrays are not 2-D or differ in shape.
    """
    settings = settings or LatticeSettings()
    x, y, usable = frame_pair(image, restored, "restored", MIN_SIDE)
    if not usable:
        return y.astype(np.float32)
    residual = x - y
    # One tile for frames up to ``tile``; larger ones in tiles overlapping by a quarter,
    # cross-faded (no margin: the pass has no edge error to discard).
    grid = TileGrid(x.shape, settings.tile, overlap=settings.tile // 4, margin=0)
    if len(grid) == 1:  # no accumulators for the usual case
        return (y + _lattice_of(residual, settings)).astype(np.float32)
    blender = TileBlender(grid)
    for tile in grid:
        blender.add(tile, _lattice_of(residual[tile.slices], settings))
    return (y + blender.result()).astype(np.float32)


#: :func:`lattice_share` above which ``restore`` warns that the lattice pass rebuilt
#: most of a frame's fine detail (vacancies and dopants averaged away).
LATTICE_SHARE_WARNING = 0.5
#: Gaussian σ, pixels, separating a frame's fine detail from its slow variations in
#: :func:`lattice_share`.
DETAIL_SIGMA = 8.0


def lattice_share(before: np.ndarray, after: np.ndarray) -> float:
    """Share of a frame's fine detail that the lattice pass gave back.

    ``‖after − before‖² / ‖after − G₈ * after‖²``: the power the pass added
    over the power of the output's detail (what a Gaussian of 8 pixels
    removes). Near 0 when the network kept the lattice; near 1 when it erased
    it and the pass rebuilt it from its 32-px average (then vacancies and
    dopant columns are averaged away; :mod:`.deviations` puts them back).

    Parameters
    ----------
    before, after : numpy.ndarray
        The restoration before and after :func:`restore_lattice`, same 2-D shape.

    Returns
    -------
    float
        The share, ≥ 0 (0 for a frame without detail).
    """
    from scipy import ndimage

    a = np.asarray(after, dtype=np.float32)
    added = a - np.asarray(before, dtype=np.float32)
    detail = a - ndimage.gaussian_filter(a, DETAIL_SIGMA, mode="reflect")
    power = float(np.sum(detail.astype(np.float64) ** 2))
    return float(np.sum(added.astype(np.float64) ** 2)) / power if power > 0 else 0.0

"""Classical registration: overlap-normalised cross-correlation and phase correlation.

:func:`ncc_map` computes the normalised cross-correlation (NCC) of two frames
for every integer shift in a window, each value being the Pearson correlation
of the pixels the two frames share at that shift (Padfield, "Masked
object registration in the Fourier domain", IEEE TIP 2012, for rectangular
masks). No apodisation window is applied: a window fixed to the frame
multiplies both images by the same weights, so its own autocorrelation pulls
the peak towards zero shift. Normalising by the overlap instead keeps every
shift on an equal footing; the price is a noisier map at large shifts, where
the overlap is small, hence the search window (a little over a third of the
frame by default) and a minimum overlap.

The zero-padded FFT gives the cross term; the overlap sums come from integral
images. The sub-pixel position of the peak is then a 3-point parabola per axis
(:func:`parabolic_peak`, the classical "ncc" method) or the CNN of
:mod:`.regressor` applied to a crop of the map around the peak.

:func:`phase_shift` is the "phase" method: skimage's upsampled
``phase_cross_correlation`` on the periodic component of each frame (Moisan, "Periodic plus
smooth image decomposition", J. Math. Imaging Vis. 2011), which removes the
frame-edge cross artefact without a window, for the same reason as above.

Sign convention: the shift ``s`` with ``scipy.ndimage.shift(moving, s) ≈
reference``, as ``skimage.registration.phase_cross_correlation(reference,
moving)[0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..evaluation.spectra import periodic_component

__all__ = [
    "NEAR_EQUAL",
    "NCCMap",
    "bandpass",
    "clip_outliers",
    "crlb_sigma",
    "ncc_map",
    "parabolic_peak",
    "periodic_component",
    "phase_shift",
]

#: Pixels two frames must share for a shift to be scored.
_MIN_OVERLAP_PX = 16
#: Peaks whose significance is at least this fraction of the best one's are treated as
#: equally good: the smallest shift among them is taken, and a pair with such a second
#: peak is reported as ambiguous.
NEAR_EQUAL = 0.9
_EPS = 1e-12
#: Quantile at which raw frames are clipped before correlation (:func:`clip_outliers`).
OUTLIER_QUANTILE = 0.995


def clip_outliers(image: np.ndarray, quantile: float = OUTLIER_QUANTILE) -> np.ndarray:
    """Clip a frame at one of its quantiles, so that a few bright outliers cannot dominate.

    Zingers (bright spots and streaks from X-ray or cosmic-ray hits on the
    camera) are a few pixels many times brighter than the rest of a
    low-dose frame, and they land at random places in each frame. Two frames
    with a handful of zingers each correlate best at the shift that lays one
    zinger of a frame onto one of the other: on held-out TEM lattice pairs at
    2 counts/pixel that spurious peak reached a correlation of 0.45 where the
    true shift gave 0.03. Clipping at the 99.5th percentile (by default)
    caps them at the level of the brightest real pixels; it changes at most
    0.5 % of the pixels of a frame, by no more than their excess over that
    level.

    Parameters
    ----------
    image : numpy.ndarray
        2-D frame, any units.
    quantile : float
        Quantile in (0, 1] at which to clip; 1 leaves the frame unchanged.

    Returns
    -------
    numpy.ndarray
        float64 frame with no value above the ``quantile`` of ``image``.
    """
    out = np.asarray(image, dtype=np.float64)
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if quantile >= 1.0 or out.size == 0:
        return out.copy()
    return np.minimum(out, np.quantile(out, quantile))


def bandpass(image: np.ndarray, sigma: float = 1.0, highpass: float | None = None) -> np.ndarray:
    """Gaussian low-pass (and optional high-pass) before correlation; zero mean.

    Parameters
    ----------
    image : numpy.ndarray
        2-D frame.
    sigma : float
        Gaussian low-pass standard deviation in pixels (0: none).
    highpass : float, optional
        Standard deviation in pixels of a Gaussian background subtracted from
        the frame (removes slow intensity gradients that dominate the
        correlation of low-contrast frames); None: no high-pass.

    Returns
    -------
    numpy.ndarray
        float64 frame with zero mean.
    """
    from scipy import ndimage

    out = np.asarray(image, dtype=np.float64)
    if sigma and sigma > 0:
        out = ndimage.gaussian_filter(out, float(sigma), mode="reflect")
    if highpass:
        out = out - ndimage.gaussian_filter(out, float(highpass), mode="reflect")
    return out - out.mean()


def _integral(image: np.ndarray) -> np.ndarray:
    """Integral image ``I[i, j] = sum(image[:i, :j])`` of shape ``(h + 1, w + 1)``."""
    out = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(image, axis=0), axis=1, out=out[1:, 1:])
    return out


def _box_sums(integral: np.ndarray, y0, y1, x0, x1) -> np.ndarray:
    """Sums over ``[y0, y1) × [x0, x1)`` for broadcastable index arrays."""
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


@dataclass
class NCCMap:
    """Normalised cross-correlation over a window of integer shifts.

    Attributes
    ----------
    values : numpy.ndarray
        ``(2·ky + 1, 2·kx + 1)`` map; ``values[ky + sy, kx + sx]`` is the
        correlation at the registration shift ``(sy, sx)`` (0 where the
        frames share fewer than 16 pixels).
    radius : tuple of int
        ``(ky, kx)``, the largest shift in the map along each axis, pixels.
    search : tuple of int
        The peak is searched for within ``|sy| ≤ search[0]``, ``|sx| ≤ search[1]``;
        the map extends beyond it so that crops around the peak stay inside.
    overlap : numpy.ndarray
        Number of pixels the frames share at each shift (same shape as ``values``).

    Notes
    -----
    Peaks are ranked by significance, the Fisher score ``atanh(ρ)·sqrt(n)``
    with ``n`` the overlap, so that noise peaks at large shifts, where few
    pixels overlap, are discounted. Among the local maxima whose score is at
    least :data:`NEAR_EQUAL` of the highest, the *smallest* shift is taken:
    the translations of a periodic lattice correlate almost equally well, and
    a shift is only defined modulo the lattice there, so the convention is the
    smallest drift that explains the frames (the same peaks make the estimate
    "ambiguous", see :meth:`second_peak`). Only the choice of the integer
    peak uses the score; sub-pixel positions come from the unweighted map.
    """

    values: np.ndarray
    radius: tuple[int, int]
    search: tuple[int, int]
    overlap: np.ndarray

    def score(self) -> np.ndarray:
        """Fisher score ``atanh(ρ)·sqrt(n)`` of every shift in the search window."""
        ky, kx = self.radius
        sy, sx = self.search
        rho = self.values[ky - sy : ky + sy + 1, kx - sx : kx + sx + 1]
        n = self.overlap[ky - sy : ky + sy + 1, kx - sx : kx + sx + 1]
        return np.arctanh(np.clip(rho, -0.999999, 0.999999)) * np.sqrt(n)

    def value(self, shift: tuple[int, int]) -> float:
        """NCC at an integer shift (pixels)."""
        return float(self.values[self.radius[0] + shift[0], self.radius[1] + shift[1]])

    def peak(self) -> tuple[int, int]:
        """Integer shift of the highest correlation in the basin of the chosen peak.

        The Fisher score picks the peak: the smallest shift among those nearly
        as significant as the best (see the class notes). A climb on the
        unweighted map then moves to that peak's own maximum, so the weighting
        never pulls a broad peak towards zero shift.
        """
        sy, sx = self.search
        window = self.score()
        iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
        top = float(window[iy, ix])
        if top > 0:
            yy, xx = _local_maxima(window)
            near = window[yy, xx] >= NEAR_EQUAL * top
            yy, xx = yy[near], xx[near]
            # smallest shift first, then the higher score
            order = np.lexsort((-window[yy, xx], np.hypot(yy - sy, xx - sx)))
            iy, ix = yy[order[0]], xx[order[0]]
        return self._climb((int(iy) - sy, int(ix) - sx))

    def _climb(self, start: tuple[int, int]) -> tuple[int, int]:
        """Steepest ascent on ``values`` from ``start``, inside the search window."""
        ky, kx = self.radius
        sy, sx = self.search
        y, x = start
        for _ in range(4 * (sy + sx) + 4):
            best, best_value = (y, x), self.values[ky + y, kx + x]
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if (
                        abs(ny) <= sy
                        and abs(nx) <= sx
                        and self.values[ky + ny, kx + nx] > best_value
                    ):
                        best, best_value = (ny, nx), self.values[ky + ny, kx + nx]
            if best == (y, x):
                break
            y, x = best
        return y, x

    def crop(self, center: tuple[int, int], half: int) -> np.ndarray:
        """``(2·half + 1)²`` crop centred on an integer shift (edge values repeated outside)."""
        ky, kx = self.radius
        padded = np.pad(self.values, half, mode="edge")
        y, x = ky + center[0] + half, kx + center[1] + half
        return padded[y - half : y + half + 1, x - half : x + half + 1]

    def second_peak(
        self, exclude: float, peak: tuple[int, int] | None = None
    ) -> tuple[float, float]:
        """Score of the most significant local maximum farther than ``exclude`` px from the
        peak relative to the peak's score, and its distance in pixels (``(-inf, inf)`` if
        there is none). ``peak``: :meth:`peak`, when the caller has it already."""
        sy, sx = self.search
        window = self.score()
        py, px = self.peak() if peak is None else peak
        top = float(window[py + sy, px + sx])
        yy, xx = _local_maxima(window)
        dist = np.hypot(yy - sy - py, xx - sx - px)
        far = dist > exclude
        if not far.any():
            return -math.inf, math.inf
        heights = window[yy[far], xx[far]]
        best = int(np.argmax(heights))
        return float(heights[best]) / max(top, _EPS), float(dist[far][best])


def _local_maxima(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the local maxima (3 × 3) of a map."""
    from scipy import ndimage

    return np.nonzero(window == ndimage.maximum_filter(window, size=3, mode="nearest"))


def _window(
    shape: tuple[int, int], max_shift, extra: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    h, w = shape
    if max_shift is None:
        search = (max(1, math.ceil(0.375 * h)), max(1, math.ceil(0.375 * w)))
    else:
        pair = (max_shift, max_shift) if np.isscalar(max_shift) else tuple(max_shift)
        if len(pair) != 2 or not all(np.isfinite(p) and p >= 0 for p in pair):
            raise ValueError(
                f"max_shift must be a non-negative number of pixels or a pair of them, "
                f"got {max_shift!r}"
            )
        search = (int(math.ceil(pair[0])), int(math.ceil(pair[1])))
    search = (min(search[0], h - 2), min(search[1], w - 2))
    radius = (min(search[0] + extra, h - 1), min(search[1] + extra, w - 1))
    return search, radius


def ncc_map(
    reference: np.ndarray,
    moving: np.ndarray,
    max_shift: float | tuple[float, float] | None = None,
    extra: int = 0,
) -> NCCMap:
    """Overlap-normalised cross-correlation for every integer shift in a window.

    Parameters
    ----------
    reference, moving : numpy.ndarray
        Two 2-D frames of the same shape, already filtered (see :func:`bandpass`).
    max_shift : float or tuple of float, optional
        Largest shift searched along each axis, in pixels; default 3/8 of the
        frame (so that a shift of a third of the frame is inside the window).
    extra : int
        Extra shifts computed beyond the search window on each side, pixels
        (room for a crop around a peak at the window edge).

    Returns
    -------
    NCCMap
    """
    from scipy import fft

    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    if ref.shape != mov.shape or ref.ndim != 2:
        raise ValueError(f"frames must be 2-D of the same shape, got {ref.shape} and {mov.shape}")
    h, w = ref.shape
    search, (ky, kx) = _window((h, w), max_shift, int(extra))
    # Unit scale: the map is unit-free, and so must be the floor below (frames in
    # coulombs per pixel, about 1e-18, are as valid as frames in counts).
    ref = _standardized(ref)
    mov = _standardized(mov)
    shape = (fft.next_fast_len(h + ky, real=True), fft.next_fast_len(w + kx, real=True))
    cross = fft.irfft2(fft.rfft2(ref, shape) * np.conj(fft.rfft2(mov, shape)), shape)
    sy = np.arange(-ky, ky + 1)[:, None]
    sx = np.arange(-kx, kx + 1)[None, :]
    s12 = cross[sy % shape[0], sx % shape[1]]
    # overlap: reference pixels [max(0, s), min(n, n + s)), moving pixels shifted by -s
    ry0, ry1 = np.maximum(0, sy), np.minimum(h, h + sy)
    rx0, rx1 = np.maximum(0, sx), np.minimum(w, w + sx)
    n = (ry1 - ry0) * (rx1 - rx0)
    i_ref, i_ref2 = _integral(ref), _integral(ref * ref)
    i_mov, i_mov2 = _integral(mov), _integral(mov * mov)
    s1 = _box_sums(i_ref, ry0, ry1, rx0, rx1)
    s1q = _box_sums(i_ref2, ry0, ry1, rx0, rx1)
    s2 = _box_sums(i_mov, ry0 - sy, ry1 - sy, rx0 - sx, rx1 - sx)
    s2q = _box_sums(i_mov2, ry0 - sy, ry1 - sy, rx0 - sx, rx1 - sx)
    nn = np.maximum(n, 1).astype(np.float64)
    cov = s12 - s1 * s2 / nn
    var1 = np.maximum(s1q - s1 * s1 / nn, 0.0)
    var2 = np.maximum(s2q - s2 * s2 / nn, 0.0)
    scale = np.sqrt(var1 * var2)
    floor = _EPS * max(float(np.sum(ref * ref)), float(np.sum(mov * mov)), _EPS)
    values = np.where((n >= _MIN_OVERLAP_PX) & (scale > floor), cov / np.maximum(scale, floor), 0.0)
    return NCCMap(np.clip(values, -1.0, 1.0), (int(ky), int(kx)), search, n)


def _standardized(frame: np.ndarray) -> np.ndarray:
    """``(frame − mean) / std`` in float64 (a constant frame: ``frame − mean``)."""
    centred = frame - frame.mean()
    std = float(centred.std())
    return centred / std if std > 0 and math.isfinite(std) else centred


def parabolic_peak(ncc: NCCMap, peak: tuple[int, int]) -> tuple[float, float]:
    """Sub-pixel peak by a 3-point parabola along each axis.

    Parameters
    ----------
    ncc : NCCMap
        The map.
    peak : tuple of int
        Integer peak (shift in pixels).

    Returns
    -------
    tuple of float
        Sub-pixel shift ``(dy, dx)`` in pixels; each correction is clipped to ±1.
    """
    c = ncc.crop(peak, 1)
    out = []
    for lo, mid, hi in ((c[0, 1], c[1, 1], c[2, 1]), (c[1, 0], c[1, 1], c[1, 2])):
        curvature = lo - 2.0 * mid + hi
        delta = 0.5 * (lo - hi) / curvature if curvature < -_EPS else 0.0
        out.append(float(np.clip(delta, -1.0, 1.0)))
    return peak[0] + out[0], peak[1] + out[1]


def crlb_sigma(
    reference: np.ndarray, rho: float, n_pixels: int | None = None
) -> tuple[float, float]:
    """Heuristic 1-σ shift uncertainty per axis from the peak correlation and image gradients.

    For two frames ``s(x) + n₁`` and ``s(x − t) + n₂`` with white noise of
    variance σₙ², least squares estimates ``t`` with variance close to
    ``2σₙ² / Σ(∂s)²`` per axis (the Cramér–Rao bound). With the peak
    correlation ρ, ``σₙ² ≈ var(frame)·(1 − ρ)`` and ``Σ(∂s)² ≈ ρ·Σ(∂frame)²``.
    Filtered or denoised frames do not carry white noise, so this is a
    heuristic scale, not a bound; ``benchmarks/drift_accuracy.py`` reports
    how well it is calibrated.

    Parameters
    ----------
    reference : numpy.ndarray
        The filtered reference frame.
    rho : float
        Peak NCC.
    n_pixels : int, optional
        Pixels that contribute (default all).

    Returns
    -------
    tuple of float
        ``(σy, σx)`` in pixels.
    """
    ref = _standardized(np.asarray(reference, dtype=np.float64))
    rho = float(np.clip(rho, 1e-3, 0.999999))
    fraction = 1.0 if n_pixels is None else min(1.0, max(n_pixels, 1) / ref.size)
    noise_var = float(ref.var()) * (1.0 - rho)
    out = []
    for g in np.gradient(ref):
        signal_energy = max(rho * fraction * float(np.sum(g * g)), _EPS)
        out.append(math.sqrt(2.0 * noise_var / signal_energy))
    return out[0], out[1]


def phase_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    upsample_factor: int = 20,
    normalization: str | None = None,
) -> tuple[float, float]:
    """Sub-pixel shift by skimage's upsampled cross-correlation, without a window.

    ``skimage.registration.phase_cross_correlation`` (the upsampled-DFT
    registration of Guizar-Sicairos et al., Opt. Lett. 2008) on the periodic
    components of the frames. The default is its plain cross-correlation
    (``normalization=None``): on our synthetic pairs (clean to 5 counts/pixel)
    the whitened phase correlation found the right peak far less often
    (13 % vs 72 % within 1 px on 40 pairs), being dominated by the frames'
    noise and edges at high spatial frequencies.

    Parameters
    ----------
    reference, moving : numpy.ndarray
        Filtered 2-D frames of the same shape.
    upsample_factor : int
        Precision 1/upsample_factor pixels.
    normalization : {None, "phase"}
        Plain cross-correlation or phase correlation.

    Returns
    -------
    tuple of float
        ``(dy, dx)`` in pixels.
    """
    from skimage.registration import phase_cross_correlation

    shift, _error, _phase = phase_cross_correlation(
        periodic_component(reference),
        periodic_component(moving),
        upsample_factor=upsample_factor,
        normalization=normalization,
    )
    return float(shift[0]), float(shift[1])

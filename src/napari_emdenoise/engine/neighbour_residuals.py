"""Put back what the network got wrong the same way at neighbouring probe positions.

The 4D-STEM network restores one diffraction pattern at a time, so its errors
do not average out over a scan: a region's mean restored pattern carries the
network's systematic error (a disk edge softened the same way at every
position), while the raw mean's noise falls as 1/√N. The residual
``e(r) = raw(r) − restored(r)`` at scan position ``r`` is that systematic error
plus the pattern's counting noise; averaged over the *other* positions of a
scan window it is an estimate ``b(r)`` of the error at ``r`` whose noise is
independent of the pattern at ``r``. Adding ``λ·b(r)`` corrects the error where
the patterns of a window share it (nano-beam diffraction of one crystal) and
adds the neighbours' differences where they do not (convergent-beam patterns
that change inside the unit cell); ``λ`` decides, per detector pixel.

Because ``b(r)`` is independent of the noise at ``r``, the change of the summed
squared error that adding ``λ·b`` brings has an unbiased estimate from the data
alone (the noise term ``E[b·n] = 0`` drops out, as in Stein's unbiased risk
estimate)::

    ΔR(λ) = Σ_r λ²·|b(r)|² − 2·λ·b(r)·e(r)      (per detector pixel)

minimised by ``λ = Σ_r b·e / Σ_r b²``, clipped to [0, 1]. The sums are smoothed
over 2 detector pixels before the ratio (a λ from a few dozen positions is
noisy), and the scan window — 3×3, 5×5 or the whole scan — with the lowest
estimated ``ΔR``, after the fit's own optimism is charged (see
:func:`choose_correction`), is used; where none lowers it, nothing is changed.
Hot and dead detector pixels (:func:`defect_pixels`) and saturated plateaus
are neither pooled nor corrected: the network removes them on purpose. The corrected
patterns are clipped at 0 and rescaled to the restored patterns' totals, so
each pattern keeps its measured total counts.

With λ = 1 and the whole scan, a region's mean pattern becomes the raw mean:
the correction cannot take it further from the truth than raw's on average.

Measured with ``benchmarks/stem4d_quality.py`` (the bundled model, 300–3,000
counts per pattern; ``docs/stem4d.md``): +0.8 / +1.9 / +3.4 dB on abTEM
SrTiO₃ nano-beam patterns, +0.5 / +1.0 / +1.7 dB on Au, +1.0 / +0.8 / +0.4 dB
on the synthetic scans; the convergent-beam simulations are left unchanged
(no window passes the estimate).

Everything here is numpy; the scan is read in bands of rows (with a halo of
the largest window's half width), so memory stays bounded for stacks that are
not held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "OPTIMISM_FACTOR",
    "WINDOWS",
    "NeighbourCorrection",
    "apply_band",
    "apply_in_bands",
    "bands",
    "choose_correction",
    "correct_in_memory",
    "defect_pixels",
    "residual_statistics",
]

#: Candidate scan windows (positions per side; None: the whole scan).
WINDOWS: tuple[int | None, ...] = (3, 5, None)
#: Gaussian smoothing of the per-pixel sums before λ is formed, detector pixels.
WEIGHT_SMOOTHING_PX = 2.0

#: Multiple of ``G(0)·Σ b²·v / G*Σ b²`` charged as the fit's optimism (2 would
#: do for noise independent between pixels; see :func:`choose_correction`).
OPTIMISM_FACTOR = 6.0

#: ``read(y0, y1)`` → scan rows ``y0:y1`` as ``(rows, scan_x, det_y, det_x)`` counts.
RowReader = Callable[[int, int], np.ndarray]


def _label(window: int | None) -> str:
    return "whole scan" if window is None else f"{window}×{window}"


@dataclass(frozen=True)
class NeighbourCorrection:
    """The correction chosen for one scan.

    Attributes
    ----------
    window : int or None
        Scan window (positions per side), None for the whole scan.
    weights : numpy.ndarray
        ``λ`` per detector pixel, ``(det_y, det_x)``, in [0, 1].
    residual_sum : numpy.ndarray
        ``Σ_r e(r)`` over the scan, counts per detector pixel (used by the
        whole-scan window).
    n_positions : int
        Scan positions pooled.
    risk_change : dict
        Estimated change of the summed squared error, counts², for every
        candidate window (negative: better).
    """

    window: int | None
    weights: np.ndarray
    residual_sum: np.ndarray
    n_positions: int
    risk_change: dict[str, float] = field(default_factory=dict)

    @property
    def halo(self) -> int:
        """Scan rows needed above and below a band to correct it."""
        return 0 if self.window is None else self.window // 2

    def describe(self) -> str:
        """One line for a status bar or a log."""
        return (
            f"neighbour residuals: {_label(self.window)} window, mean weight "
            f"{float(self.weights.mean()):.2f}"
        )

    def to_record(self) -> dict:
        """A JSON-able form (stored with a resumable output)."""
        return {
            "window": self.window,
            "weights": np.asarray(self.weights, np.float32).tolist(),
            "residual_sum": np.asarray(self.residual_sum, np.float64).tolist(),
            "n_positions": self.n_positions,
            "risk_change": self.risk_change,
        }

    @classmethod
    def from_record(cls, record: dict) -> NeighbourCorrection:
        """Inverse of :meth:`to_record`."""
        return cls(
            window=record["window"],
            weights=np.asarray(record["weights"], np.float32),
            residual_sum=np.asarray(record["residual_sum"], np.float64),
            n_positions=int(record["n_positions"]),
            risk_change=dict(record.get("risk_change", {})),
        )


def _saturated(raw: np.ndarray) -> np.ndarray:
    """Pixels at their pattern's maximum when ≥ 3 pixels share a maximum of ≥ 10 counts.

    A counting detector's counter (or a clipped export) stops at a ceiling:
    such a plateau is not the pattern's expected count, and what the network
    makes of it is kept as it is.
    """
    flat = raw.reshape(*raw.shape[:2], -1)
    peak = flat.max(axis=-1, keepdims=True)
    at_peak = flat == peak
    plateau = (at_peak.sum(axis=-1, keepdims=True) >= 3) & (peak >= 10)
    return (at_peak & plateau).reshape(raw.shape)


def _residual(raw: np.ndarray, restored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``raw − restored`` (float32), 0 where the detector saturated, and that mask.

    The mask depends on the raw pattern only through its ceiling, not its
    noise, so the risk estimate stays unbiased elsewhere. (A noise threshold
    on the residual would not: it would also mask the large, systematic
    errors the correction is for.)
    """
    raw = np.asarray(raw, np.float32)
    e = raw - np.asarray(restored, np.float32)
    saturated = _saturated(raw)
    e[saturated] = 0.0
    return e, saturated


def defect_pixels(mean_pattern: np.ndarray, n_positions: int) -> np.ndarray:
    """Hot and dead detector pixels: single pixels far off all 8 neighbours in the mean pattern.

    Parameters
    ----------
    mean_pattern : numpy.ndarray
        Raw counts per detector pixel averaged over ``n_positions`` patterns.
    n_positions : int
        Patterns averaged (sets the Poisson deviation of the mean).

    Returns
    -------
    numpy.ndarray
        bool ``(det_y, det_x)``: above twice the brightest neighbour, or below
        half the dimmest, by more than 5 deviations of the mean. The detector
        blur spreads every real feature over more than one pixel; a Bragg
        disk's pixels have neighbours alike.
    """
    m = np.asarray(mean_pattern, np.float64)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    hi = ndimage.maximum_filter(m, footprint=ring, mode="mirror")  # an edge pixel is
    lo = ndimage.minimum_filter(m, footprint=ring, mode="mirror")  # never its own neighbour
    dev = 5.0 * np.sqrt(np.maximum(np.maximum(m, lo), 0.0) / max(int(n_positions), 1))
    return (m > 2.0 * hi + dev) | (m < 0.5 * lo - dev)


def bands(n_rows: int, band_rows: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """``(y0, y1, lo, hi)``: each band of rows and the rows to read around it."""
    band_rows = max(1, int(band_rows))
    for y0 in range(0, n_rows, band_rows):
        y1 = min(n_rows, y0 + band_rows)
        yield y0, y1, max(0, y0 - halo), min(n_rows, y1 + halo)


def _box_sums(e: np.ndarray, first: int, last: int, axis: int, halves: list[int]) -> dict:
    """Sums of ``e`` over ``±h`` neighbours along ``axis`` for each ``h`` in ``halves``.

    Only indices ``first:last`` of ``axis`` are returned; neighbours outside
    ``e`` count as 0. Nested windows share their partial sums (a 5-wide sum
    is the 3-wide one plus two slices), all contiguous slice additions.
    """
    n = e.shape[axis]

    def add_shifted(total: np.ndarray, offset: int) -> None:
        # total[i] += e[first + i + offset] where that index lies inside e
        src0, src1 = max(first + offset, 0), min(last + offset, n)
        if src1 > src0:
            dst = [slice(None)] * e.ndim
            src = [slice(None)] * e.ndim
            dst[axis] = slice(src0 - offset - first, src1 - offset - first)
            src[axis] = slice(src0, src1)
            total[tuple(dst)] += e[tuple(src)]

    sums, total, done = {}, np.take(e, range(first, last), axis=axis), 0
    for h in sorted(halves):
        for k in range(done + 1, h + 1):
            add_shifted(total, k)
            add_shifted(total, -k)
        done = h
        sums[h] = total.copy()
    return sums


def _window_means(
    e: np.ndarray, lo: int, y0: int, y1: int, windows: list[int], n_rows: int
) -> dict[int, np.ndarray]:
    """Mean of ``e`` over the other positions of each ``window``² scan window, rows ``y0:y1``.

    ``e`` holds scan rows ``lo:lo + len(e)``, including the halo the windows
    need; positions outside the scan do not count.
    """
    halves = [w // 2 for w in windows]
    by_rows = _box_sums(e, y0 - lo, y1 - lo, 0, halves)
    centre = e[y0 - lo : y1 - lo]
    rows, cols = np.arange(y0, y1), np.arange(e.shape[1])
    out = {}
    for w, h in zip(windows, halves, strict=True):
        box = _box_sums(by_rows[h], 0, e.shape[1], 1, [h])[h]
        n_r = np.minimum(rows + h + 1, n_rows) - np.maximum(rows - h, 0)
        n_c = np.minimum(cols + h + 1, e.shape[1]) - np.maximum(cols - h, 0)
        others = np.maximum(np.outer(n_r, n_c) - 1, 1).astype(np.float32)
        box -= centre
        box /= others[:, :, None, None]
        out[w] = box
    return out


def _window_mean(e: np.ndarray, lo: int, y0: int, y1: int, window: int, n_rows: int) -> np.ndarray:
    """:func:`_window_means` for one window."""
    return _window_means(e, lo, y0, y1, [window], n_rows)[window]


def _sum_of_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ a·b`` over the leading (position) axis, per detector pixel, in float64.

    float64 throughout, so the result does not depend (beyond float64
    rounding) on how the scan was cut into bands.
    """
    return np.einsum("i...,i...->...", a, b, dtype=np.float64)


@dataclass
class _Sums:
    """Per-detector-pixel sums accumulated over the scan.

    ``bbv`` (and ``v``, ``ev``, ``e2v`` for the whole-scan window) weight
    each position by the variance of its count, ``v(r) ≈ max(restored(r),
    0)`` (counting noise), for the optimism correction of
    :func:`choose_correction`.
    """

    e: np.ndarray
    e2: np.ndarray
    raw: np.ndarray
    v: np.ndarray
    ev: np.ndarray
    e2v: np.ndarray
    be: dict[int, np.ndarray]
    bb: dict[int, np.ndarray]
    bbv: dict[int, np.ndarray]
    n: int = 0


def residual_statistics(
    read_raw: RowReader,
    read_restored: RowReader,
    scan_shape: tuple[int, int],
    pattern_shape: tuple[int, int],
    band_rows: int,
    windows: tuple[int | None, ...] = WINDOWS,
    cancel: Callable[[], bool] | None = None,
) -> _Sums:
    """One pass over the scan: the sums :func:`choose_correction` needs.

    Parameters
    ----------
    read_raw, read_restored : callable
        ``read(y0, y1)`` → scan rows ``y0:y1`` in counts.
    scan_shape, pattern_shape : tuple of int
        ``(scan_y, scan_x)`` and ``(det_y, det_x)``.
    band_rows : int
        Scan rows read at a time (plus the halo).
    windows : tuple
        Candidate windows (odd sizes ≥ 3; None for the whole scan).
    cancel : callable, optional
        Polled between bands; True raises ``Cancelled``.
    """
    from .predictor import Cancelled

    local = [w for w in windows if w is not None]
    for w in local:
        if w < 3 or w % 2 == 0:
            raise ValueError(f"scan windows must be odd and at least 3, got {w}")
    halo = max([w // 2 for w in local], default=0)
    zeros = lambda: np.zeros(pattern_shape, dtype=np.float64)  # noqa: E731
    per_window = lambda: {w: zeros() for w in local}  # noqa: E731
    sums = _Sums(*(zeros() for _ in range(6)), per_window(), per_window(), per_window())
    n_rows = scan_shape[0]
    for y0, y1, lo, hi in bands(n_rows, band_rows, halo):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        raw = np.asarray(read_raw(lo, hi))
        restored = np.asarray(read_restored(lo, hi))
        e, masked = _residual(raw, restored)
        centre = e[y0 - lo : y1 - lo].reshape(-1, *pattern_shape)
        kept = ~masked[y0 - lo : y1 - lo]  # where apply_band may add the correction
        var = np.maximum(np.asarray(restored[y0 - lo : y1 - lo], np.float32), 0.0)
        var = var.reshape(centre.shape)
        sums.raw += raw[y0 - lo : y1 - lo].sum(axis=(0, 1), dtype=np.float64)
        sums.e += centre.sum(axis=0, dtype=np.float64)
        sums.e2 += _sum_of_products(centre, centre)
        sums.v += var.sum(axis=0, dtype=np.float64)
        sums.ev += _sum_of_products(centre, var)
        sums.e2v += _sum_of_products(centre * centre, var)
        sums.n += len(centre)
        for w, b in _window_means(e, lo, y0, y1, local, n_rows).items():
            b[~kept] = 0.0
            b = b.reshape(centre.shape)
            sums.be[w] += _sum_of_products(b, centre)
            sums.bb[w] += _sum_of_products(b, b)
            sums.bbv[w] += _sum_of_products(b * b, var)
    return sums


def choose_correction(
    sums: _Sums,
    windows: tuple[int | None, ...] = WINDOWS,
    smoothing_px: float = WEIGHT_SMOOTHING_PX,
) -> NeighbourCorrection | None:
    """The window and weights with the lowest estimated error, or None if none helps.

    Weights fitted per detector pixel look better on the data they were
    fitted to than they are: the fit follows the noise of ``Σ b·e``. For
    ``λ = G*(Σ b·e) / G*(Σ b²)`` (``G`` the smoothing) and noise independent
    between pixels, the expected optimism of the estimated change is
    ``2·G(0)·Σ_r b²·v / G*(Σ b²)`` per pixel (``v`` the counting variance,
    ``G(0)`` the kernel's centre weight), the analogue of Mallows' Cp. The
    residual's noise is not independent between pixels (the restoration's
    response to the noise spreads over its neighbours), so
    :data:`OPTIMISM_FACTOR` times that is charged before the windows are
    compared; the factor was set on a scratch test outside the 4D-STEM
    benchmark (ten noisy frames of one multislice image, pooled over frames:
    with 2 the estimate still called losses of 0.1–0.3 dB gains, with 6 it
    left all 29 such movies checked alone), and it changed none of the 4D-STEM
    benchmark's choices on nano-beam and synthetic scans. A restoration
    without a shared error is left alone (tested).
    """
    n = sums.n
    if n < 2:
        return None
    candidates = {w: (sums.be[w], sums.bb[w], sums.bbv[w]) for w in windows if w is not None}
    if None in windows:  # b(r) = (S − e(r)) / (n − 1)
        s, q = sums.e, sums.e2
        be = (s * s - q) / (n - 1)
        bb = ((n - 2) * s * s + q) / (n - 1) ** 2
        # Σ_r (S − e(r))² v(r) = S² Σ v − 2 S Σ e v + Σ e² v
        bbv = (s * s * sums.v - 2 * s * sums.ev + sums.e2v) / (n - 1) ** 2
        candidates[None] = (be, bb, bbv)
    # A hot or dead pixel's residual is the same at every position: pooled, it
    # would put back the defect the network removed.
    keep = ~defect_pixels(sums.raw / n, n)
    centre = _centre_weight(smoothing_px)
    best: tuple[float, int | None, np.ndarray] | None = None
    risk: dict[str, float] = {}
    for w, (be, bb, bbv) in candidates.items():
        be, bb, bbv = be * keep, bb * keep, bbv * keep
        if not np.any(bb > 0):
            continue
        num, den = be, bb
        if smoothing_px:
            num = ndimage.gaussian_filter(be, smoothing_px, mode="nearest")
            den = ndimage.gaussian_filter(bb, smoothing_px, mode="nearest")
        lam = np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 0.0, 1.0)
        lam *= keep
        fitted = (den > 0) & (lam > 0)
        optimism = (
            OPTIMISM_FACTOR * centre * np.divide(bbv, den, out=np.zeros_like(den), where=fitted)
        )
        change = float(np.sum(lam * lam * bb - 2.0 * lam * be + optimism))
        risk[_label(w)] = change
        if change < 0 and (best is None or change < best[0]):
            best = (change, w, lam)
    if best is None:
        return None
    return NeighbourCorrection(
        window=best[1],
        weights=best[2].astype(np.float32),
        residual_sum=np.asarray(sums.e, np.float64),
        n_positions=n,
        risk_change=risk,
    )


def _centre_weight(smoothing_px: float) -> float:
    """Weight of a pixel's own sum in its smoothed sum (1 without smoothing)."""
    if not smoothing_px:
        return 1.0
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return float(ndimage.gaussian_filter(delta, smoothing_px, mode="nearest")[16, 16])


def apply_band(
    raw: np.ndarray,
    restored: np.ndarray,
    lo: int,
    y0: int,
    y1: int,
    n_rows: int,
    correction: NeighbourCorrection,
) -> np.ndarray:
    """Corrected scan rows ``y0:y1``.

    Parameters
    ----------
    raw, restored : numpy.ndarray
        Scan rows ``lo:lo + len(raw)`` (the band and its halo) of the raw and
        the restored (not yet corrected) data, counts.
    lo, y0, y1 : int
        First row held; the band's rows.
    n_rows : int
        Scan rows in all.
    correction : NeighbourCorrection
        From :func:`choose_correction`.

    Returns
    -------
    numpy.ndarray
        float32 ``(y1 − y0, scan_x, det_y, det_x)``, each pattern with the
        restored pattern's total counts.
    """
    e, masked = _residual(raw, restored)
    base = np.asarray(restored[y0 - lo : y1 - lo], np.float32)
    if correction.window is None:
        total = correction.residual_sum.astype(np.float32)
        b = (total - e[y0 - lo : y1 - lo]) / np.float32(correction.n_positions - 1)
    else:
        b = _window_mean(e, lo, y0, y1, correction.window, n_rows)
    b[masked[y0 - lo : y1 - lo]] = 0.0
    b *= correction.weights.astype(np.float32)
    b += base
    out = np.maximum(b, 0.0, out=b)
    want = base.sum(axis=(2, 3), keepdims=True, dtype=np.float64)
    got = out.sum(axis=(2, 3), keepdims=True, dtype=np.float64)
    out *= np.divide(want, got, out=np.ones_like(got), where=got > 0).astype(np.float32)
    return out


def correct_in_memory(
    raw: np.ndarray,
    restored: np.ndarray,
    windows: tuple[int | None, ...] = WINDOWS,
    band_rows: int = 8,
) -> tuple[np.ndarray, NeighbourCorrection | None]:
    """Correct a whole ``(scan_y, scan_x, det_y, det_x)`` restoration held in memory.

    Returns the corrected copy (float32) and the correction (None: the data
    were returned unchanged, as float32).
    """
    raw = np.asarray(raw)
    restored = np.asarray(restored, np.float32)
    if raw.shape != restored.shape or raw.ndim != 4:
        raise ValueError(
            f"raw and restored must be the same 4-D shape, got {raw.shape} and {restored.shape}"
        )
    scan, pattern = raw.shape[:2], raw.shape[2:]

    def read_raw(a: int, b: int) -> np.ndarray:
        return raw[a:b]

    def read_restored(a: int, b: int) -> np.ndarray:
        return restored[a:b]

    sums = residual_statistics(read_raw, read_restored, scan, pattern, band_rows, windows)
    correction = choose_correction(sums, windows)
    out = restored.copy()
    if correction is None:
        return out, None

    def write(a: int, b: int, rows: np.ndarray) -> None:
        out[a:b] = rows

    apply_in_bands(read_raw, read_restored, write, scan[0], band_rows, correction)
    return out, correction


def apply_in_bands(
    read_raw: RowReader,
    read_restored: RowReader,
    write: Callable[[int, int, np.ndarray], None],
    n_rows: int,
    band_rows: int,
    correction: NeighbourCorrection,
    *,
    start_row: int = 0,
    carried: np.ndarray | None = None,
    before_write: Callable[[int], None] | None = None,
    on_band: Callable[[int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> None:
    """Correct scan rows ``start_row:`` band by band, overwriting them in place.

    ``read_restored`` reads the store being corrected, so the rows above a
    band are already corrected when the band is: the uncorrected halo rows
    are carried from one band to the next instead.

    Parameters
    ----------
    read_raw, read_restored : callable
        ``read(y0, y1)`` → scan rows of the raw data and of the (partly
        corrected) output.
    write : callable
        ``write(y0, y1, rows)`` stores corrected rows.
    n_rows, band_rows : int
        Scan rows in all; rows corrected per band.
    correction : NeighbourCorrection
        From :func:`choose_correction`.
    start_row : int
        First row still uncorrected (resuming).
    carried : numpy.ndarray, optional
        The uncorrected rows ``start_row − halo:start_row`` (needed when
        ``start_row > 0`` and the window is local).
    before_write : callable, optional
        ``before_write(y1)`` just before rows ``:y1`` are written.
    on_band : callable, optional
        ``on_band(y1)`` after each band is written (rows ``:y1`` done).
    cancel : callable, optional
        Polled between bands; True raises ``Cancelled``.
    """
    from .predictor import Cancelled

    halo = correction.halo
    for y0, y1, lo, hi in bands(n_rows, band_rows, halo):
        if y1 <= start_row:
            continue
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        below = np.asarray(read_restored(y0, hi), np.float32)
        if lo < y0:
            if carried is None or len(carried) < y0 - lo:
                raise ValueError("the uncorrected rows above the band are missing")
            restored = np.concatenate([carried[len(carried) - (y0 - lo) :], below])
        else:
            restored = below
        out = apply_band(read_raw(lo, hi), restored, lo, y0, y1, n_rows, correction)
        # the band's last uncorrected rows: the next band's halo above it
        carried = restored[y1 - lo - min(halo, y1 - lo) : y1 - lo].copy()
        if before_write is not None:
            before_write(y1)
        write(y0, y1, out)
        if on_band is not None:
            on_band(y1)

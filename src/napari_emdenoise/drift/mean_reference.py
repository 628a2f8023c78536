"""Every frame registered to the mean of the *other* frames (``align_stack(reference="mean")``).

A frame registered to a mean that contains it correlates its own noise with
itself at the shift it already has: at low dose that self-term outweighs the
signal and pins each frame where the first pass put it, wrong or not. Here
every frame is registered to the mean of all the other frames, aligned with
the current shifts (a leave-one-out mean, read off one running sum), and the
passes are repeated: each pass builds a better mean from better shifts.

A frame whose estimate is too uncertain to use (1-σ above
:data:`UNRELIABLE_SIGMA_PX` on either axis: at low dose that is where the
correlation peak is a noise peak) gets the shift interpolated in time from the
frames that registered, and enters the next pass's mean at that shift. When
fewer than half of the frames register, every shift is 0: no correction,
rather than a movie scrambled by noise peaks. The test trusts the
uncertainty the estimator reports; the CNN's, on denoised frames (the
default), was measured for it.

On 36 synthetic movies per dose (``benchmarks/drift_movies.py``) this took
the RMS error at 0.5 / 1 / 2 / 5 / 20 counts/pixel from 13.1 / 6.7 / 4.9 /
2.1 / 0.29 px (one pass against a mean that holds the frame itself) to
2.35 / 1.50 / 0.86 / 0.56 / 0.49 px; no correction is 3.3 / 2.8 / 2.7 / 2.7 /
2.9 px. At 20 counts/pixel it is worse than before: one movie whose frames all
came out with σ of about 1.6 px was left uncorrected (a threshold of 2 px
fixes that movie and loses 0.5 px at 1 count/pixel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .shifting import apply_shift

__all__ = [
    "CONVERGED_PX",
    "MEAN_PASSES",
    "MIN_RELIABLE_FRACTION",
    "UNRELIABLE_SIGMA_PX",
    "LeaveOneOutMeans",
    "MeanRegistration",
    "fill_unreliable",
    "register_to_mean",
]

#: Most passes of registration against the leave-one-out means.
MEAN_PASSES = 3
#: The passes stop once no shift moved by more than this, pixels.
CONVERGED_PX = 0.05
#: A frame whose 1-σ shift uncertainty exceeds this on either axis (pixels) is not
#: used: on the synthetic movies of ``benchmarks/drift_movies.py`` (0.5–5
#: counts/pixel) every frame with an error above 2 px had σ above 1.5 px except 2
#: of 58, and 29 of 374 frames within 2 px had σ above it.
UNRELIABLE_SIGMA_PX = 1.5
#: Below this fraction of usable frames no shift is used (all 0): on those movies the
#: few frames with a small σ were as often on a noise peak as on the drift (a
#: 0.5–1 count/pixel movie with 2 of 12 usable frames, both 13–39 px wrong).
MIN_RELIABLE_FRACTION = 0.5


def _parts(item: Any) -> list[np.ndarray]:
    return [part for part in (item.raw, item.den) if part is not None]


class LeaveOneOutMeans:
    """Running sums of the shifted frames; :meth:`without` gives the mean of all but one.

    Parameters
    ----------
    items : callable
        ``items(i)`` returns frame ``i`` prepared for correlation (a named
        tuple with ``raw`` and ``den``, ``den`` possibly None).
    shifts : numpy.ndarray
        ``(n, 2)`` shifts that align each frame onto the mean, pixels.
    check_cancel : callable
        Called before each frame is read.
    """

    def __init__(
        self,
        items: Callable[[int], Any],
        shifts: np.ndarray,
        check_cancel: Callable[[], None],
    ) -> None:
        self.shifts = np.asarray(shifts, dtype=float)
        self.sums: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        for i in range(len(self.shifts)):
            check_cancel()
            for k, moved in enumerate(self._moved(items(i), i)):
                ok = np.isfinite(moved)
                if len(self.sums) <= k:
                    self.sums.append(np.zeros(moved.shape))
                    self.counts.append(np.zeros(moved.shape))
                self.sums[k][ok] += moved[ok]
                self.counts[k] += ok

    def _moved(self, item: Any, i: int) -> list[np.ndarray]:
        return [
            apply_shift(part, self.shifts[i], order=1, fill_value=np.nan) for part in _parts(item)
        ]

    def without(self, i: int, item: Any) -> Any:
        """The mean of every frame but ``i`` (``item``, frame ``i`` itself), same type as ``item``.

        Pixels that no other frame reaches take the mean of those it does.
        """
        means = []
        for k, moved in enumerate(self._moved(item, i)):
            ok = np.isfinite(moved)
            count = self.counts[k] - ok
            total = self.sums[k] - np.where(ok, moved, 0.0)
            covered = count > 0
            mean = np.empty(moved.shape, np.float32)
            mean[covered] = total[covered] / count[covered]
            mean[~covered] = mean[covered].mean() if covered.any() else 0.0
            means.append(mean)
        if item.den is None:
            return item._replace(raw=means[0])
        return item._replace(raw=means[0], den=means[1])


def fill_unreliable(shifts: np.ndarray, unreliable: np.ndarray) -> np.ndarray:
    """Shifts of the unreliable frames interpolated in time from the others.

    Linear between reliable frames, held constant beyond the first and last of
    them; all zeros when no frame is reliable.

    Parameters
    ----------
    shifts : numpy.ndarray
        ``(n, 2)`` measured shifts, pixels.
    unreliable : numpy.ndarray
        ``(n,)`` bool.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float64 shifts.
    """
    out = np.array(shifts, dtype=float)
    good = ~np.asarray(unreliable, bool)
    if good.all():
        return out
    if not good.any():
        return np.zeros_like(out)
    t = np.arange(len(out), dtype=float)
    for k in range(out.shape[1]):
        out[~good, k] = np.interp(t[~good], t[good], out[good, k])
    return out


@dataclass
class MeanRegistration:
    """Result of :func:`register_to_mean`.

    Attributes
    ----------
    shifts, sigma : numpy.ndarray
        ``(n, 2)`` shift of every frame onto the mean and its 1-σ, pixels
        (σ as measured, also for the frames whose shift was interpolated).
    peak : numpy.ndarray
        ``(n,)`` correlation at each frame's peak.
    ambiguous, unreliable : numpy.ndarray
        ``(n,)`` bool; ``unreliable``: the frame's own estimate was not used
        (its shift is interpolated from its neighbours in time).
    passes : int
        Passes run (at most :data:`MEAN_PASSES`).
    """

    shifts: np.ndarray
    sigma: np.ndarray
    peak: np.ndarray
    ambiguous: np.ndarray
    unreliable: np.ndarray
    passes: int


def register_to_mean(
    items: Callable[[int], Any],
    initial: np.ndarray,
    estimate: Callable[[Any, Any], Any],
    check_cancel: Callable[[], None],
    passes: int = MEAN_PASSES,
) -> MeanRegistration:
    """Register every frame to the mean of the others, pass after pass.

    Parameters
    ----------
    items : callable
        ``items(i)``: frame ``i`` prepared for correlation (see
        :class:`LeaveOneOutMeans`).
    initial : numpy.ndarray
        ``(n, 2)`` starting shifts, pixels (a pass against the first frame).
    estimate : callable
        ``estimate(reference, moving)`` returns a shift estimate: a ``(dy,
        dx)`` sequence with ``sigma``, ``peak`` and ``ambiguous`` attributes
        (:class:`~napari_emdenoise.drift.pipeline.ShiftEstimate`).
    check_cancel : callable
        Called before every frame.
    passes : int
        Most passes; they stop early once no shift moves by more than
        :data:`CONVERGED_PX`.

    Returns
    -------
    MeanRegistration
    """
    shifts = np.array(initial, dtype=float)
    n = len(shifts)
    sigma, peak = np.zeros((n, 2)), np.ones(n)
    ambiguous, unreliable = np.zeros(n, bool), np.zeros(n, bool)
    done = 0
    while done < passes:
        done += 1
        means = LeaveOneOutMeans(items, shifts, check_cancel)
        measured = np.zeros((n, 2))
        for i in range(n):
            check_cancel()
            item = items(i)
            est = estimate(means.without(i, item), item)
            measured[i], sigma[i], peak[i], ambiguous[i] = est, est.sigma, est.peak, est.ambiguous
        unreliable = ~(np.max(sigma, axis=1) <= UNRELIABLE_SIGMA_PX)
        if np.count_nonzero(~unreliable) < MIN_RELIABLE_FRACTION * n:
            unreliable[:] = True  # a few confident frames among noise peaks: no correction
        new = fill_unreliable(measured, unreliable)
        moved = float(np.max(np.abs(new - shifts)))
        shifts = new
        if moved <= CONVERGED_PX:
            break
    return MeanRegistration(shifts, sigma, peak, ambiguous, unreliable, done)

"""The fast-scan axis of a scanned image, and a check that it is the one the models expect.

The S(T)EM and SEM models were trained on images whose fast-scan axis is x
(along the rows, the array's last axis): they undo detector lag, the
fast-scan blur and line jitter along x. An image recorded with the scan
rotated by 90°, or stored transposed (column-major, as MATLAB and some HDF5
writers do; the authors' released test data of Lobato et al. is stored that
way), has its scan distortions along y, which the models then do not
recognise. ``restore(..., fast_scan_axis="y")`` transposes each frame
before the network and back after it.

The axis can be read from the noise itself: pixels on one scan line share
noise over the detector's response time, pixels on different lines do not,
so the noise is correlated between neighbours along the fast-scan axis only
(:func:`napari_emdenoise.noise.correlation.noise_autocorrelation`; on the
experimental HR-STEM images of Lobato et al. 0.13–0.53 along the scan
lines and below 0.03 across them, at a lag of one pixel).
:func:`scan_axis_mismatch` says when an image's noise points to the other
axis than the one given. Measured: it flags 29 of the 38 S(T)EM/SEM images
shipped with the authors' released package when they are read transposed
and none of them the right way round, and none of the 216 noisy HAADF
images of our two abTEM validation sets (2–1000 counts/pixel, either axis
given), whose noise is pixel-independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise.correlation import noise_autocorrelation

__all__ = [
    "FAST_SCAN_AXES",
    "SCANNED_MODALITIES",
    "ScanAxisMismatch",
    "check_fast_scan_axis",
    "scan_axis_mismatch",
    "scan_correlations",
    "scan_rows",
]

#: Accepted values of ``fast_scan_axis``: the image's x axis (rows, the last
#: array axis, what the models were trained on) or its y axis (columns).
FAST_SCAN_AXES = ("x", "y")

#: Modalities whose models correct scan distortions along the fast-scan axis.
SCANNED_MODALITIES = ("stem", "sem")

#: Lag-1 noise correlation (dimensionless) from which an axis counts as scanned;
#: the given axis must stay below it (its lines hold independent noise) ...
SCANNED_CORRELATION = 0.1
#: ... and the other axis must exceed it and this many times the given axis's.
#: (On a well-exposed image rich in fine detail, signal leaks into both
#: correlations: 0.25 and 0.35 on one of our abTEM HAADF scenes at 100
#: counts/pixel, which is no scan.)
RATIO = 3.0

#: Side (pixels) of the central crop the correlations are measured on.
_CROP = 512


def check_fast_scan_axis(value: object) -> str:
    """``value`` if it is ``"x"`` or ``"y"``, else a ``ValueError`` that says so."""
    if value not in FAST_SCAN_AXES:
        raise ValueError(
            f"fast_scan_axis must be 'x' (along the rows) or 'y' (along the columns), got {value!r}"
        )
    return str(value)


def scan_rows(array: np.ndarray, fast_scan_axis: str) -> np.ndarray:
    """``array`` as the S(T)EM/SEM models see it: the scan lines along the rows.

    For ``fast_scan_axis="y"`` the last two axes (an image's, or each frame's of
    a stack) are exchanged, contiguously; for ``"x"`` ``array`` is returned as
    it is. Its own inverse: apply it again to a result to get the image's axes back.
    """
    if check_fast_scan_axis(fast_scan_axis) == "x":
        return array
    return np.ascontiguousarray(np.swapaxes(array, -1, -2))


def scan_correlations(frame: np.ndarray) -> tuple[float, float]:
    """Noise correlation between neighbours along x and along y, lag 1 pixel.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D image, any intensity unit (a central crop of at most 512² pixels
        is used).

    Returns
    -------
    (along_x, along_y) : tuple of float
        Dimensionless correlations; about 0 for pixel-independent noise.
    """
    x = np.asarray(frame, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"frame must be 2-D, got {x.ndim}-D")
    top, left = (max((n - _CROP) // 2, 0) for n in x.shape)
    crop = x[top : top + _CROP, left : left + _CROP]
    along_x = float(noise_autocorrelation(crop, axis=1, max_lag=1)[0])
    along_y = float(noise_autocorrelation(crop, axis=0, max_lag=1)[0])
    return along_x, along_y


@dataclass(frozen=True)
class ScanAxisMismatch:
    """An image whose noise points to another fast-scan axis than the one given.

    Attributes
    ----------
    given, suggested : {"x", "y"}
        The axis the restoration was told, and the one the noise points to.
    along_given, along_suggested : float
        Lag-1 noise correlations along each (dimensionless).
    """

    given: str
    suggested: str
    along_given: float
    along_suggested: float

    def describe(self, numbers: bool = True) -> str:
        """What was measured and why it matters, in one sentence (no advice).

        ``numbers=False`` leaves the correlations out, so that the sentence is
        the same for every frame of a series (Python then shows a warning
        with it once, not once per frame).
        """
        lines = {"x": "rows", "y": "columns"}
        there = f" ({self.along_suggested:.2f} between neighbours)" if numbers else ""
        here = f" ({self.along_given:.2f})" if numbers else ""
        return (
            f"The image's noise is correlated along its {lines[self.suggested]}{there} and "
            f"not along its {lines[self.given]}{here}: its fast-scan axis looks like "
            f"{self.suggested}, and the S(T)EM/SEM models correct scan distortions along the "
            "fast-scan axis."
        )


def scan_axis_mismatch(frame: np.ndarray, fast_scan_axis: str = "x") -> ScanAxisMismatch | None:
    """Whether ``frame``'s noise points to the other fast-scan axis.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D image as it will be restored.
    fast_scan_axis : {"x", "y"}
        The axis the restoration will treat as the fast-scan axis.

    Returns
    -------
    ScanAxisMismatch or None
        None when the noise agrees with ``fast_scan_axis`` or shows no clear
        scan direction (pixel-independent noise, a camera image, or detail
        along both axes): the correlation along the given axis must be below
        ``SCANNED_CORRELATION``, the other's at least that and ``RATIO``
        times the given axis's.
    """
    axis = check_fast_scan_axis(fast_scan_axis)
    along_x, along_y = scan_correlations(frame)
    given, other = (along_x, along_y) if axis == "x" else (along_y, along_x)
    if given >= SCANNED_CORRELATION or other < SCANNED_CORRELATION or other < RATIO * given:
        return None
    return ScanAxisMismatch(axis, "y" if axis == "x" else "x", given, other)

"""Drift correction: denoise → normalised cross-correlation → CNN refinement, and stacks.

:func:`estimate_shift` registers one frame pair as Vasudevan & Jesse, "Deep
Learning as a Tool for Image Denoising and Drift Correction" (Microscopy and
Microanalysis, 2019) propose: both frames are denoised by a restoration
network (:func:`napari_emdenoise.engine.restore`), their normalised
cross-correlation is computed (:func:`.correlation.ncc_map`, normalised by
the overlap, no apodisation window, hence no pull towards zero shift), and a
small CNN (:mod:`.regressor`) turns a crop of the map around the classical
integer peak into a sub-pixel shift with its uncertainty. ``method="ncc"``
replaces the CNN by a parabola through the peak; ``method="phase"`` uses
skimage's upsampled ``phase_cross_correlation`` on the (denoised) frames.

One deviation from the paper, measured on our synthetic pairs: with the
bundled (small, CPU-trained) restoration models, the correlation of denoised
frames alone was not more reliable than that of the raw frames after a 1.5-px
Gaussian low-pass — a denoiser smooths, and can add structure of its own, the
same in both frames. When denoising, the integer peak is therefore taken on
the mean of the two maps (denoised and low-passed raw), and the CNN sees crops
of both.

:func:`align_stack` estimates the shift of every frame of a movie against the
first frame, the previous frame (shifts chained, outliers flagged by a
transitivity check) or the mean of the other frames (:mod:`.mean_reference`),
on denoised copies, and applies the shifts to the raw frames; dask input stays
lazy.

Sign convention: a shift ``(dy, dx)`` in pixels registers ``moving`` onto
``reference`` — ``scipy.ndimage.shift(moving, (dy, dx)) ≈ reference`` —
exactly as ``skimage.registration.phase_cross_correlation(reference, moving)[0]``.
A specimen drifting by ``+d`` pixels between the frames gives ``-d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._validation import as_float_image, tensor_to_numpy
from ..engine.scan_axis import check_fast_scan_axis
from .correlation import (
    NEAR_EQUAL,
    NCCMap,
    bandpass,
    clip_outliers,
    crlb_sigma,
    ncc_map,
    parabolic_peak,
    phase_shift,
)
from .mean_reference import MEAN_PASSES, UNRELIABLE_SIGMA_PX, register_to_mean
from .shifting import apply_shift

__all__ = [
    "DEFAULT_DENOISER",
    "METHODS",
    "MIN_FRAME",
    "REFERENCES",
    "AlignmentInfo",
    "Prepared",
    "ShiftEstimate",
    "align_stack",
    "apply_shift",
    "chain_shifts",
    "estimate_shift",
]

#: Shift estimators.
METHODS: tuple[str, ...] = ("cnn", "ncc", "phase")
#: What each frame of a stack is registered to.
REFERENCES: tuple[str, ...] = ("first", "previous", "mean")
#: Restoration model used when ``denoise=True``.
DEFAULT_DENOISER = "hrstem"
#: Smallest frame side, pixels.
MIN_FRAME = 16
#: Gaussian low-pass before correlation (pixels) of raw and of denoised frames.
_SIGMA_RAW = 1.5
_SIGMA_DENOISED = 0.0
#: Factor on the Cramér–Rao-style heuristic uncertainty (:func:`.correlation.crlb_sigma`)
#: of the "ncc" and "phase" methods: the median of |error| / σ on 600 stored training
#: pairs (12 shards, both raw and denoised, errors < 1.5 px) divided by 0.6745, the median
#: of |z| for a Gaussian. The bound alone was 9× (ncc) and 16× (phase) too optimistic:
#: the frames' noise is neither white nor the only error (scan jitter, flicker).
#: benchmarks/drift_accuracy.py reports the calibration on held-out pairs.
_CRLB_SCALE = {"ncc": 8.7, "phase": 15.5}

#: Median per-frame 1-σ shift uncertainty (px) above which :meth:`AlignmentInfo.advice`
#: suggests frame grouping.
UNCERTAIN_SIGMA_PX = 0.4

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


class ShiftEstimate(tuple):
    """A registration shift ``(dy, dx)`` in pixels, with its uncertainty.

    It unpacks and converts like a pair (``dy, dx = estimate``,
    ``numpy.asarray(estimate)``); the extra information is in attributes.

    Attributes
    ----------
    sigma : tuple of float
        1-σ uncertainty ``(σy, σx)`` in pixels of the sub-pixel estimate
        around the chosen correlation peak (it does not cover picking the
        wrong peak; see ``ambiguous``).
    peak : float
        Normalised cross-correlation at the integer peak, in [-1, 1] (1: identical frames).
    ambiguous : bool
        True when another correlation peak, more than 3 pixels away, is almost
        as significant (≥ 90 %): a periodic lattice, or frames too noisy to
        register reliably.
    method : str
        The estimator.
    """

    sigma: tuple[float, float]
    peak: float
    ambiguous: bool
    method: str

    def __new__(
        cls,
        dy: float,
        dx: float,
        sigma: tuple[float, float] = (math.nan, math.nan),
        peak: float = math.nan,
        ambiguous: bool = False,
        method: str = "",
    ) -> ShiftEstimate:
        obj = super().__new__(cls, (float(dy), float(dx)))
        obj.sigma = (float(sigma[0]), float(sigma[1]))
        obj.peak = float(peak)
        obj.ambiguous = bool(ambiguous)
        obj.method = str(method)
        return obj

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickling
        return (self[0], self[1], self.sigma, self.peak, self.ambiguous, self.method)

    def __repr__(self) -> str:
        return (
            f"ShiftEstimate(dy={self[0]:.3f}, dx={self[1]:.3f}, sigma=({self.sigma[0]:.3f}, "
            f"{self.sigma[1]:.3f}), peak={self.peak:.3f}, ambiguous={self.ambiguous}, "
            f"method={self.method!r})"
        )


# --------------------------------------------------------------------------- checks


def _check_choice(value: object, allowed: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def _check_frame(image: object, name: str, constant_hint: str = "") -> np.ndarray:
    """A finite 2-D frame of at least MIN_FRAME pixels per side, as float32.

    ``constant_hint`` is appended to the message for a constant frame.
    """
    arr = tensor_to_numpy(image)
    kind = getattr(getattr(arr, "dtype", None), "kind", None)
    if kind == "c":
        raise ValueError(f"{name} is complex; pass the real intensity (e.g. numpy.abs)")
    frame = as_float_image(arr, ndim=2, min_size=1, name=name)
    if min(frame.shape) < MIN_FRAME:
        raise ValueError(
            f"{name} of shape {frame.shape} is too small to register: frames need at least "
            f"{MIN_FRAME} pixels per side"
        )
    if float(frame.max()) == float(frame.min()):
        raise ValueError(f"{name} is constant: there is nothing to correlate{constant_hint}")
    return frame


def _check_sigma(sigma: float | None) -> float | None:
    if sigma is None:
        return None
    if not isinstance(sigma, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(sigma)) and sigma >= 0
    ):
        raise ValueError(f"sigma must be a number of pixels >= 0 or None, got {sigma!r}")
    return float(sigma)


# --------------------------------------------------------------------------- models


def _resolve_denoiser(denoise: object, device: str | None) -> tuple[Any, str]:
    """The restoration network for ``denoise`` (None when off) and its name."""
    if denoise is False or denoise is None:
        return None, ""
    import torch

    from ..engine.predictor import _resolve_model

    if denoise is True:
        denoise = DEFAULT_DENOISER
    if isinstance(denoise, torch.nn.Module):
        module, _dev = _resolve_model(denoise, device)
        return module, type(denoise).__name__
    if isinstance(denoise, (str, Path)):
        module, _dev = _resolve_model(denoise, device)
        return module, str(denoise)
    raise ValueError(
        "denoise must be True, False, a restoration model name (e.g. 'hrstem'), a checkpoint "
        f"path or a torch.nn.Module, got {type(denoise).__name__}"
    )


def _resolve_regressor(method: str, model: object, device: str | None) -> Any:
    if method != "cnn":
        return None
    from .regressor import load_regressor

    if model is None or isinstance(model, (str, Path)):
        module, _card = load_regressor(model, device)
        return module
    import torch

    if isinstance(model, torch.nn.Module):
        return model
    raise ValueError(
        f"model must be None (the bundled shift regressor), a .safetensors path or a "
        f"torch.nn.Module, got {type(model).__name__}"
    )


def _denoise(
    frame: np.ndarray,
    module: Any,
    cancel: CancelCallback | None = None,
    fast_scan_axis: str = "x",
) -> np.ndarray:
    from ..engine.predictor import restore

    # The network alone: the shift regressor was trained and measured on it.
    return restore(frame, model=module, cancel=cancel, refine=False, fast_scan_axis=fast_scan_axis)


# --------------------------------------------------------------------------- one pair


class Prepared(NamedTuple):
    """A frame ready for correlation: the raw frame and, when denoising, its restored copy."""

    raw: np.ndarray
    den: np.ndarray | None = None


def _correlate(
    reference: Prepared,
    moving: Prepared,
    sigma: float | None,
    max_shift: float | tuple[float, float] | None,
) -> tuple[NCCMap, NCCMap, NCCMap, tuple[np.ndarray, np.ndarray]]:
    """Correlation maps of a pair (each extends one crop beyond the search window).

    Returns the map whose peak is used (the mean of the denoised and the raw
    frames' maps when denoising — the raw map anchors the denoised one, which
    can carry the network's own structure —, else the raw map), the denoised
    map (the raw map when not denoising), the raw map, and the filtered frames
    the uncertainty heuristic and the phase method use.
    """
    from .regressor import CROP_RADIUS

    raw_sigma = _SIGMA_RAW if sigma is None else sigma
    ref_raw = bandpass(clip_outliers(reference.raw), raw_sigma)
    mov_raw = bandpass(clip_outliers(moving.raw), raw_sigma)
    raw = ncc_map(ref_raw, mov_raw, max_shift=max_shift, extra=CROP_RADIUS)
    if reference.den is None or moving.den is None:
        return raw, raw, raw, (ref_raw, mov_raw)
    ref_den = bandpass(reference.den, _SIGMA_DENOISED)
    mov_den = bandpass(moving.den, _SIGMA_DENOISED)
    den = ncc_map(ref_den, mov_den, max_shift=max_shift, extra=CROP_RADIUS)
    combined = NCCMap(0.5 * (den.values + raw.values), raw.radius, raw.search, raw.overlap)
    return combined, den, raw, (ref_den, mov_den)


def _estimate_prepared(
    reference: Prepared,
    moving: Prepared,
    method: str,
    sigma: float | None,
    max_shift: float | tuple[float, float] | None,
    regressor: Any,
) -> ShiftEstimate:
    """Shift of two prepared frames (raw, and denoised when denoising)."""
    from .regressor import CROP_RADIUS, crop_features, predict_offsets

    ncc, den_map, raw_map, (ref_f, mov_f) = _correlate(reference, moving, sigma, max_shift)
    peak = ncc.peak()
    rho = ncc.value(peak)
    ratio, _distance = ncc.second_peak(exclude=3.0, peak=peak)
    ambiguous = ratio >= NEAR_EQUAL
    overlap = int(ncc.overlap[ncc.radius[0] + peak[0], ncc.radius[1] + peak[1]])
    if method == "cnn":
        x = crop_features(den_map, raw_map, peak)[None]
        offset, sig = predict_offsets(regressor, x)
        off = np.clip(offset[0], -CROP_RADIUS, CROP_RADIUS)
        return ShiftEstimate(
            peak[0] + off[0], peak[1] + off[1], tuple(sig[0]), rho, ambiguous, method
        )
    if method == "ncc":
        dy, dx = parabolic_peak(ncc, peak)
    else:
        dy, dx = phase_shift(ref_f, mov_f)
    sy, sx = crlb_sigma(ref_f, rho, overlap)
    scale = _CRLB_SCALE[method]
    return ShiftEstimate(dy, dx, (scale * sy, scale * sx), rho, ambiguous, method)


def estimate_shift(
    reference: object,
    moving: object,
    method: str = "cnn",
    denoise: bool | str | Path | Any = True,
    model: str | Path | Any | None = None,
    *,
    max_shift: float | tuple[float, float] | None = None,
    sigma: float | None = None,
    device: str | None = None,
    fast_scan_axis: str = "x",
) -> ShiftEstimate:
    """Sub-pixel shift that registers ``moving`` onto ``reference``, with its uncertainty.

    Parameters
    ----------
    reference, moving : array_like
        Two 2-D frames of the same shape, at least 16 pixels per side, finite;
        any integer or float dtype (converted to float32).
    method : {"cnn", "ncc", "phase"}
        ``"cnn"``: the CNN refines the correlation peak (Vasudevan & Jesse,
        2019); ``"ncc"``: 3-point parabola through the peak of the
        overlap-normalised cross-correlation; ``"phase"``: skimage's
        upsampled ``phase_cross_correlation`` (1/20 pixel, plain
        cross-correlation) on the frames' periodic components (no window),
        see :func:`.correlation.phase_shift`.
    denoise : bool, str, path or torch.nn.Module
        Denoise both frames before correlating them: True uses the bundled
        :data:`DEFAULT_DENOISER`; a model name (``"hrtem"``, ``"lrstem"``…),
        a checkpoint path or a network picks another; False correlates the raw
        frames.
    model : str, path or torch.nn.Module, optional
        Shift regressor for ``method="cnn"`` (default: the bundled one).
    max_shift : float or tuple of float, optional
        Largest shift searched per axis, pixels; default 3/8 of the frame
        (shifts up to a third of the frame are found).
    sigma : float, optional
        Gaussian low-pass of the raw frames before correlating them, pixels
        (default 1.5). Denoised frames are correlated unfiltered; when
        denoising, the peak is found on the mean of the denoised and the raw
        frames' correlation maps.
    device : str, optional
        Torch device for the networks (default: automatic for the
        denoiser, CPU for the small regressor).
    fast_scan_axis : {"x", "y"}
        The frames' fast-scan axis, for the S(T)EM/SEM denoisers (see
        :func:`napari_emdenoise.engine.restore`); the shift is always in the
        frames' own axes.

    Returns
    -------
    ShiftEstimate
        ``(dy, dx)`` in pixels, with ``.sigma`` (1-σ per axis, pixels),
        ``.peak`` (correlation) and ``.ambiguous``.

    Raises
    ------
    ValueError
        For frames of different shapes, frames that are not 2-D, smaller than
        16 pixels, constant, or contain NaN/inf; an unknown method; a
        missing model.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> ref = ndimage.gaussian_filter(rng.random((64, 64)), 2)
    >>> mov = ndimage.shift(ref, (2.0, -3.0), order=3, mode="nearest")
    >>> dy, dx = estimate_shift(ref, mov, method="ncc", denoise=False)
    >>> round(dy), round(dx)
    (-2, 3)
    """
    method = _check_choice(method, METHODS, "method")
    sigma = _check_sigma(sigma)
    axis = check_fast_scan_axis(fast_scan_axis)
    ref = _check_frame(reference, "reference")
    mov = _check_frame(moving, "moving")
    if ref.shape != mov.shape:
        raise ValueError(
            f"reference and moving frames must have the same shape, got {ref.shape} and "
            f"{mov.shape}; crop or pad them first"
        )
    denoiser, _name = _resolve_denoiser(denoise, device)
    regressor = _resolve_regressor(method, model, None if device is None else str(device))
    if denoiser is None:
        a, b = Prepared(ref), Prepared(mov)
    else:
        a = Prepared(ref, _denoise(ref, denoiser, fast_scan_axis=axis))
        b = Prepared(mov, _denoise(mov, denoiser, fast_scan_axis=axis))
    return _estimate_prepared(a, b, method, sigma, max_shift, regressor)


# --------------------------------------------------------------------------- applying


# --------------------------------------------------------------------------- stacks


@dataclass
class AlignmentInfo:
    """Everything :func:`align_stack` measured besides the shifts.

    Attributes
    ----------
    shifts : numpy.ndarray
        ``(n, 2)`` registration shift of every frame, pixels.
    sigma : numpy.ndarray
        ``(n, 2)`` 1-σ uncertainty, pixels (chained shifts accumulate it).
    peak : numpy.ndarray
        ``(n,)`` correlation at the peak of each frame's estimate.
    outlier : numpy.ndarray
        ``(n,)`` bool: the frame's own estimate was not used. With
        ``reference="previous"`` it failed the transitivity check; with
        ``reference="mean"`` it was too uncertain and its shift is
        interpolated from its neighbours in time; always False with
        ``"first"``.
    ambiguous : numpy.ndarray
        ``(n,)`` bool: another correlation peak was almost as significant
        (:attr:`ShiftEstimate.ambiguous`; expected for crystals, whose
        lattice translations all correlate).
    closure : numpy.ndarray
        ``(n,)`` transitivity error in pixels, ``|s(i-2→i) − s(i-2→i-1) − s(i-1→i)|``
        (NaN where not measured).
    pairwise : numpy.ndarray
        ``(n, 2)`` frame-to-frame shifts of ``reference="previous"`` (else NaN).
    reference, method, denoiser : str
        The settings used.
    """

    shifts: np.ndarray
    sigma: np.ndarray
    peak: np.ndarray
    outlier: np.ndarray
    ambiguous: np.ndarray
    closure: np.ndarray
    pairwise: np.ndarray
    reference: str
    method: str
    denoiser: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def advice(self) -> str:
        """What the user should know about this alignment, else "".

        With ``reference="mean"``: how many frames could not be registered on
        their own (their shifts are interpolated), or that too few could (no
        correction). With ``"first"`` or ``"previous"``, frame by frame: a
        median 1-σ uncertainty above :data:`UNCERTAIN_SIGMA_PX`, what movies
        of about 2 counts/pixel and less give, suggests ``reference="mean"``,
        the only reference that beat no correction on such movies
        (``benchmarks/drift_movies.py``).
        """
        notes = []
        flagged, n = int(np.count_nonzero(self.outlier)), len(self.outlier)
        if self.reference == "mean" and flagged == n:
            notes.append(
                f"fewer than half of the frames could be registered (shift uncertainty above "
                f"{UNRELIABLE_SIGMA_PX:g} px): all shifts are 0, the movie is not corrected; "
                "frame grouping (frames per group, --group) may register the groups' means"
            )
        elif self.reference == "mean" and flagged:
            notes.append(
                f"{flagged} of {n} frames could not be registered on their own (uncertainty "
                f"above {UNRELIABLE_SIGMA_PX:g} px): their shifts are interpolated from their "
                "neighbours"
            )
        moving = self.sigma[1:] if len(self.sigma) > 1 else self.sigma
        median = float(np.median(np.max(moving, axis=1)))
        if self.reference != "mean" and median > UNCERTAIN_SIGMA_PX:
            notes.append(
                f"median shift uncertainty {median:.2f} px: the frames may be too noisy to "
                "register against single frames; try the mean reference (every frame "
                "against the mean of the others: reference mean, --reference mean)"
            )
        return "; ".join(notes)


def chain_shifts(
    pairwise: np.ndarray,
    pair_sigma: np.ndarray,
    skip: np.ndarray,
    skip_sigma: np.ndarray,
    pair_peak: np.ndarray | None = None,
    skip_peak: np.ndarray | None = None,
    outlier_px: float = 1.0,
    weak_peak: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chain frame-to-frame shifts to the first frame and check them for transitivity.

    Frame ``i`` can be reached from frame ``i − 1`` (``pairwise[i]``) or, skipping
    a frame, from ``i − 2`` (``skip[i]``). When both paths agree the two are
    averaged with inverse-variance weights; when they differ by more than
    ``max(outlier_px, 3σ)`` the frame is flagged and the path whose own pair
    correlation peak is higher is kept (a failed estimate usually has the
    lower peak).

    A path whose pair correlates much worse than the stack's pairs do (peak
    below ``weak_peak`` × the median peak) is not used when the other path is
    sound, even if the two agree: a frame that correlates with nothing (a
    blanked or corrupted frame) gives spurious shifts against both of its
    neighbours whose sum still closes the loop, so the loop alone cannot
    catch it.

    Parameters
    ----------
    pairwise : numpy.ndarray
        ``(n, 2)``; row ``i`` registers frame ``i`` onto frame ``i − 1`` (row 0 ignored).
    pair_sigma : numpy.ndarray
        ``(n, 2)`` uncertainties of ``pairwise``.
    skip : numpy.ndarray
        ``(n, 2)``; row ``i`` registers frame ``i`` onto frame ``i − 2`` (rows 0–1 ignored).
    skip_sigma : numpy.ndarray
        ``(n, 2)`` uncertainties of ``skip``.
    pair_peak, skip_peak : numpy.ndarray, optional
        ``(n,)`` correlation peaks used to pick a path after a failed check.
    outlier_px : float
        Smallest closure error that flags a frame, pixels.
    weak_peak : float
        Fraction of the median correlation peak below which a pair is weak.

    Returns
    -------
    shifts, sigma : numpy.ndarray
        ``(n, 2)`` shifts onto frame 0 and their uncertainties, pixels.
    outlier : numpy.ndarray
        ``(n,)`` bool.
    closure : numpy.ndarray
        ``(n,)`` closure error, pixels (NaN for frames 0 and 1).
    """
    p = np.asarray(pairwise, np.float64)
    n = p.shape[0]
    ps = np.nan_to_num(np.asarray(pair_sigma, np.float64), nan=1.0)
    q = np.asarray(skip, np.float64)
    qs = np.nan_to_num(np.asarray(skip_sigma, np.float64), nan=1.0)
    pp = np.ones(n) if pair_peak is None else np.asarray(pair_peak, np.float64)
    qp = np.ones(n) if skip_peak is None else np.asarray(skip_peak, np.float64)
    shifts = np.zeros((n, 2))
    var = np.zeros((n, 2))
    outlier = np.zeros(n, bool)
    closure = np.full(n, np.nan)
    peaks = np.concatenate([pp[1:], qp[2:]])
    peaks = peaks[np.isfinite(peaks)]
    threshold = weak_peak * float(np.median(peaks)) if peaks.size else -np.inf
    if n > 1:
        shifts[1] = p[1]
        var[1] = ps[1] ** 2
    for i in range(2, n):
        a, va = shifts[i - 1] + p[i], var[i - 1] + ps[i] ** 2
        b, vb = shifts[i - 2] + q[i], var[i - 2] + qs[i] ** 2
        # the loop i-2 → i-1 → i against i-2 → i: independent of the chained history
        err = float(np.hypot(*(p[i - 1] + p[i] - q[i])))
        closure[i] = err
        tol = max(
            outlier_px, 3.0 * float(np.sqrt(np.sum(ps[i - 1] ** 2 + ps[i] ** 2 + qs[i] ** 2)))
        )
        weak_a, weak_b = bool(pp[i] < threshold), bool(qp[i] < threshold)
        if err > tol:
            outlier[i] = True
        if err <= tol and weak_a == weak_b:
            w = (1.0 / va) / (1.0 / va + 1.0 / vb)
            shifts[i] = w * a + (1.0 - w) * b
            var[i] = 1.0 / (1.0 / va + 1.0 / vb)
        elif weak_a != weak_b:
            shifts[i], var[i] = (a, va) if weak_b else (b, vb)
        elif qp[i] > pp[i]:
            shifts[i], var[i] = b, vb
        else:
            shifts[i], var[i] = a, va
    return shifts, np.sqrt(var), outlier, closure


def _is_lazy(frames: object) -> bool:
    return not isinstance(frames, (np.ndarray, list, tuple)) and hasattr(frames, "shape")


class _Frames:
    """Frames read one at a time, denoised on demand, optionally cached."""

    def __init__(
        self,
        frames: object,
        denoiser: Any,
        cancel: CancelCallback | None,
        cache: bool,
        fast_scan_axis: str = "x",
        label: Callable[[int], str] = "frame {}".format,
    ) -> None:
        self.frames = frames
        self.denoiser = denoiser
        self.cancel = cancel
        self.fast_scan_axis = fast_scan_axis
        self.label = label
        self.cache: dict[int, Prepared] | None = {} if cache else None

    def raw(self, i: int) -> np.ndarray:
        frame = self.frames[i]  # type: ignore[index]
        if hasattr(frame, "compute"):
            frame = frame.compute()
        name = self.label(i)
        hint = (
            f" (a blanked beam or an empty frame?); remove {name} from the stack before aligning it"
        )
        return _check_frame(frame, name, constant_hint=hint)

    def prepared(self, i: int) -> Prepared:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        frame = self.raw(i)
        den = (
            None
            if self.denoiser is None
            else _denoise(frame, self.denoiser, self.cancel, self.fast_scan_axis)
        )
        item = Prepared(frame, den)
        if self.cache is not None:
            self.cache[i] = item
        return item


class _GroupMeans:
    """The means of ``size`` consecutive frames (the last group may hold fewer), read lazily.

    Frame grouping as in MotionCor2 (S. Q. Zheng et al., "MotionCor2: anisotropic
    correction of beam-induced motion for improved cryo-electron microscopy",
    Nature Methods 14, 331, 2017): a group of g frames carries g times the counts
    of one frame, so its shift can be measured where a single frame's cannot.
    """

    def __init__(self, frames: object, size: int, n_frames: int) -> None:
        self.frames = frames
        self.size = size
        self.starts = list(range(0, n_frames, size))
        self.stops = [min(start + size, n_frames) for start in self.starts]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> np.ndarray:
        block = self.frames[self.starts[j] : self.stops[j]]  # type: ignore[index]
        if hasattr(block, "compute"):
            block = block.compute()
        block = as_float_image(np.asarray(block), ndim=3, min_size=1, name=self.label(j))
        return block.mean(axis=0, dtype=np.float64)

    def label(self, j: int) -> str:
        first, last = self.starts[j], self.stops[j] - 1
        return f"frame {first}" if first == last else f"frames {first}–{last}"

    def centres(self) -> np.ndarray:
        """Mean frame index of every group."""
        return np.array([(a + b - 1) / 2 for a, b in zip(self.starts, self.stops)], dtype=float)

    def members(self) -> np.ndarray:
        """The group of every frame."""
        return np.concatenate(
            [np.full(b - a, j) for j, (a, b) in enumerate(zip(self.starts, self.stops))]
        )


def _check_group(group: object, n_frames: int) -> int:
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"group must be a whole number of frames >= 1, got {group!r}")
    if group >= n_frames:
        raise ValueError(
            f"group={group} leaves a single group of the {n_frames} frames: nothing to align "
            f"it to (use at most {n_frames - 1})"
        )
    return int(group)


def _interpolate(t: np.ndarray, centres: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Piecewise-linear through ``(centres, values)``, extended linearly beyond both ends."""
    out = np.interp(t, centres, values)
    low, high = t < centres[0], t > centres[-1]
    slope_low = (values[1] - values[0]) / (centres[1] - centres[0])
    slope_high = (values[-1] - values[-2]) / (centres[-1] - centres[-2])
    out[low] = values[0] + slope_low * (t[low] - centres[0])
    out[high] = values[-1] + slope_high * (t[high] - centres[-1])
    return out


def _per_frame(
    groups: _GroupMeans, values: dict[str, np.ndarray], reference: str
) -> dict[str, np.ndarray]:
    """Spread per-group results over the frames.

    Shifts follow the groups' centres piecewise linearly (extended linearly at
    both ends) and, except for ``reference="mean"``, are taken relative to frame
    0 so that it keeps the shift (0, 0); uncertainties are interpolated between
    the centres; everything else is the frame's own group's.
    """
    members = groups.members()
    t = np.arange(len(members), dtype=float)
    centres = groups.centres()
    out = {key: value[members] for key, value in values.items()}
    out["shifts"] = np.stack(
        [_interpolate(t, centres, values["shifts"][:, k]) for k in range(2)], axis=1
    )
    if reference != "mean":
        out["shifts"] = out["shifts"] - out["shifts"][0]
    out["sigma"] = np.stack(
        [np.interp(t, centres, values["sigma"][:, k]) for k in range(2)], axis=1
    )
    return out


def _validate_stack(frames: object) -> tuple[object, tuple[int, int, int]]:
    """Check a stack's shape and dtype (and values, when in memory); return it and its shape."""
    frames = tensor_to_numpy(frames)
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("frames is empty")
        shapes = {np.shape(f) for f in frames}
        if len(shapes) > 1:
            raise ValueError(
                f"all frames must have the same shape, got {sorted(shapes)}; crop or pad them first"
            )
        frames = np.stack([np.asarray(tensor_to_numpy(f)) for f in frames])
    shape = tuple(int(s) for s in getattr(frames, "shape", np.shape(frames)))
    if len(shape) == 2:
        raise ValueError(
            f"align_stack needs a (frames, y, x) stack, got one 2-D frame of shape {shape}; "
            "to register two frames use estimate_shift"
        )
    if len(shape) != 3:
        raise ValueError(f"frames must be a 3-D (frames, y, x) stack, got shape {shape}")
    if shape[0] < 2:
        raise ValueError(f"a stack needs at least 2 frames to align, got {shape[0]}")
    if min(shape[1:]) < MIN_FRAME:
        raise ValueError(
            f"frames of {shape[1]}×{shape[2]} pixels are too small to register: at least "
            f"{MIN_FRAME} pixels per side are needed"
        )
    dtype = np.dtype(getattr(frames, "dtype", np.float64))
    if dtype.kind not in "biuf":
        raise ValueError(f"frames must be real numbers, got dtype {dtype}")
    if isinstance(frames, np.ndarray):
        frames = as_float_image(frames, ndim=3, min_size=1, name="frames")
    return frames, shape  # type: ignore[return-value]


def _fits_cache(shape: tuple[int, int, int]) -> bool:
    from .._validation import available_memory

    need = shape[0] * shape[1] * shape[2] * 4
    free = available_memory()
    return free is None or need < 0.25 * free


def align_stack(
    frames: object,
    reference: str = "first",
    method: str = "cnn",
    denoise: bool | str | Path | Any = True,
    model: str | Path | Any | None = None,
    *,
    max_shift: float | tuple[float, float] | None = None,
    sigma: float | None = None,
    order: int = 3,
    fill_value: float = 0.0,
    outlier_px: float = 1.0,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    return_info: bool = False,
    fast_scan_axis: str = "x",
    group: int = 1,
) -> tuple[Any, np.ndarray] | tuple[Any, np.ndarray, AlignmentInfo]:
    """Register every frame of a movie and apply the shifts to the raw frames.

    Parameters
    ----------
    frames : array_like
        ``(n_frames, y, x)`` stack (numpy, dask, zarr, or a list of equally
        shaped 2-D frames), at least 2 frames of 16 × 16 pixels, finite, any
        integer or float dtype.
    reference : {"first", "previous", "mean"}
        ``"first"``: every frame against frame 0. ``"previous"``: every frame
        against the one before and the one before that; the shifts are
        chained to frame 0 and frames whose loop of three shifts does not
        close are flagged (:func:`chain_shifts`); best for large total drift
        or a changing specimen. ``"mean"``: after a first pass against frame 0,
        every frame is registered to the mean of all the *other* frames
        aligned so far, for up to three passes (a mean that held the frame
        itself would correlate the frame's noise with itself); frames too
        uncertain to use (1-σ above 1.5 px) get a shift interpolated from
        their neighbours and are flagged, and when fewer than half of them
        register every shift is 0 (:mod:`.mean_reference`). The most accurate
        choice for noisy movies: on synthetic movies at 0.5–5 counts/pixel it
        was the only one better than no correction (docs/drift.md).
    method : {"cnn", "ncc", "phase"}
        Pair estimator, see :func:`estimate_shift`.
    denoise : bool, str, path or torch.nn.Module
        Estimate the shifts on denoised copies (the raw frames are shifted);
        see :func:`estimate_shift`.
    model : str, path or torch.nn.Module, optional
        Shift regressor for ``method="cnn"``.
    max_shift : float or tuple of float, optional
        Largest shift searched per pair and axis, pixels (default 3/8 of the frame).
    sigma : float, optional
        Gaussian low-pass before correlating, pixels (see :func:`estimate_shift`).
    order : int
        Spline order used to shift the raw frames.
    fill_value : float
        Value of the pixels shifted in from outside the frame.
    outlier_px : float
        Smallest transitivity error that flags a frame (``reference="previous"``), pixels.
    device : str, optional
        Torch device of the denoiser.
    progress : callable, optional
        ``progress(done, total)``, counted in pair estimates.
    cancel : callable, optional
        Polled between frames (and between denoising tiles); True aborts with
        :class:`napari_emdenoise.engine.Cancelled`.
    return_info : bool
        Also return an :class:`AlignmentInfo`.
    fast_scan_axis : {"x", "y"}
        The frames' fast-scan axis, for the S(T)EM/SEM denoisers (see
        :func:`estimate_shift`).
    group : int
        Frames per group (≥ 1, below the number of frames). With ``group > 1``
        the shifts are measured on the means of consecutive groups of that many
        frames, each carrying ``group`` times one frame's counts, and every
        frame gets the shift interpolated linearly between the groups' centres
        (frame grouping as in MotionCor2, Zheng et al. 2017). For a slow,
        steady drift in movies too noisy to register frame by frame even
        against the mean: drift faster than about a pixel within a group blurs
        the groups. On the random-walk movies of docs/drift.md the mean
        reference frame by frame beat every group size at every dose.

    Returns
    -------
    aligned : numpy.ndarray or dask.array.Array
        ``(n_frames, y, x)`` float32 raw frames shifted onto the reference;
        a lazy dask array when ``frames`` is not in memory (dask, zarr).
    shifts : numpy.ndarray
        ``(n_frames, 2)`` float64 registration shifts ``(dy, dx)`` in pixels
        (the convention of :func:`estimate_shift`; frame 0 is ``(0, 0)``
        except for ``reference="mean"``). With ``group > 1`` the per-frame
        uncertainty is interpolated between the groups' centres; the peak,
        the flags and, for ``reference="previous"``, the pairwise shifts and
        closures are those of the frame's group (group to group).
    info : AlignmentInfo
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        For a single frame, a 2-D or 4-D array, frames of different shapes,
        frames under 16 pixels, NaN/inf values, non-numeric data, an
        unknown reference or method, or a ``group`` that is not a whole
        number from 1 to the number of frames − 1.
    napari_emdenoise.engine.Cancelled
        If ``cancel`` returned True.
    """
    reference = _check_choice(reference, REFERENCES, "reference")
    method = _check_choice(method, METHODS, "method")
    sigma = _check_sigma(sigma)
    axis = check_fast_scan_axis(fast_scan_axis)
    lazy = _is_lazy(frames)
    data, shape = _validate_stack(frames)
    group = _check_group(group, shape[0])
    groups = _GroupMeans(data, group, shape[0]) if group > 1 else None
    # n: the frames, or groups of frames, whose shifts are measured
    n = shape[0] if groups is None else len(groups)
    denoiser, denoiser_name = _resolve_denoiser(denoise, device)
    regressor = _resolve_regressor(method, model, None)
    denoised = denoiser is not None
    need_cache = reference == "mean" and (denoised or lazy or groups is not None)
    cache = need_cache and _fits_cache((n, *shape[1:]))
    if groups is None:
        source = _Frames(data, denoiser, cancel, cache, axis)
    else:
        source = _Frames(groups, denoiser, cancel, cache, axis, label=groups.label)
    total = {"first": n - 1, "previous": max(0, 2 * n - 3), "mean": (MEAN_PASSES + 1) * n - 1}[
        reference
    ]
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def finish() -> None:  # the passes against the mean may stop early
        nonlocal done
        if progress is not None and done < total:
            done = total
            progress(done, total)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            from ..engine.predictor import Cancelled

            raise Cancelled("drift correction cancelled")

    def estimate(ref: Prepared, mov: Prepared) -> ShiftEstimate:
        check_cancel()
        est = _estimate_prepared(ref, mov, method, sigma, max_shift, regressor)
        tick()
        return est

    if progress is not None:
        progress(0, total)
    shifts = np.zeros((n, 2))
    sig = np.zeros((n, 2))
    peak = np.ones(n)
    ambiguous = np.zeros(n, bool)
    closure = np.full(n, np.nan)
    pairwise = np.full((n, 2), np.nan)
    outlier = np.zeros(n, bool)
    extra: dict[str, Any] = {}
    if reference in ("first", "mean"):
        first = source.prepared(0)
        for i in range(1, n):
            est = estimate(first, source.prepared(i))
            shifts[i], sig[i], peak[i], ambiguous[i] = est, est.sigma, est.peak, est.ambiguous
        if reference == "mean":
            extra["first_pass"] = shifts.copy()
            result = register_to_mean(source.prepared, shifts, estimate, check_cancel)
            shifts, sig, peak = result.shifts, result.sigma, result.peak
            ambiguous, outlier = result.ambiguous, result.unreliable
            extra["passes"] = result.passes
            finish()
    else:
        skip = np.full((n, 2), np.nan)
        skip_sig = np.full((n, 2), np.nan)
        pair_sig = np.full((n, 2), np.nan)
        skip_peak = np.full(n, np.nan)
        window = {0: source.prepared(0)}
        for i in range(1, n):
            window[i] = source.prepared(i)
            est = estimate(window[i - 1], window[i])
            pairwise[i], pair_sig[i], peak[i], ambiguous[i] = (
                est,
                est.sigma,
                est.peak,
                est.ambiguous,
            )
            if i >= 2:
                est2 = estimate(window[i - 2], window[i])
                skip[i], skip_sig[i], skip_peak[i] = est2, est2.sigma, est2.peak
                del window[i - 2]
        shifts, sig, outlier, closure = chain_shifts(
            pairwise, pair_sig, skip, skip_sig, peak, skip_peak, outlier_px
        )
        extra["skip"] = skip
    if groups is not None:
        extra.update(group=group, group_shifts=shifts.copy(), group_centres=groups.centres())
        spread = _per_frame(
            groups,
            {"shifts": shifts, "sigma": sig, "peak": peak, "outlier": outlier,
             "ambiguous": ambiguous, "closure": closure, "pairwise": pairwise},
            reference,
        )  # fmt: skip
        shifts, sig, peak = spread["shifts"], spread["sigma"], spread["peak"]
        outlier, ambiguous = spread["outlier"], spread["ambiguous"]
        closure, pairwise = spread["closure"], spread["pairwise"]
    check_cancel()
    frames_source = source if groups is None else _Frames(data, None, cancel, False, axis)
    aligned = _apply_all(data, shifts, order, fill_value, lazy, frames_source, cancel)
    if not return_info:
        return aligned, shifts
    info = AlignmentInfo(
        shifts=shifts.copy(),
        sigma=sig,
        peak=peak,
        outlier=outlier,
        ambiguous=ambiguous,
        closure=closure,
        pairwise=pairwise,
        reference=reference,
        method=method,
        denoiser=denoiser_name,
        extra=extra,
    )
    return aligned, shifts, info


def _apply_all(
    data: object,
    shifts: np.ndarray,
    order: int,
    fill_value: float,
    lazy: bool,
    source: _Frames,
    cancel: CancelCallback | None,
) -> Any:
    """Shift the raw frames: eagerly for numpy input, lazily (one task per chunk) for dask."""
    if not lazy:
        out = np.empty(np.shape(data), dtype=np.float32)
        for i in range(out.shape[0]):
            if cancel is not None and cancel():
                from ..engine.predictor import Cancelled

                raise Cancelled("drift correction cancelled")
            out[i] = apply_shift(source.raw(i), shifts[i], order, fill_value)
        return out
    import dask.array as da

    arr = data if isinstance(data, da.Array) else da.from_array(data, chunks=(1, -1, -1))
    arr = arr.rechunk({1: -1, 2: -1})
    table = np.asarray(shifts, np.float64).copy()

    def shift_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        start = block_info[0]["array-location"][0][0] if block_info else 0
        return np.stack(
            [
                apply_shift(block[j], table[start + j], order, fill_value)
                for j in range(block.shape[0])
            ]
        ).astype(np.float32)

    return arr.map_blocks(shift_block, dtype=np.float32)

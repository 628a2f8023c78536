"""S(T)EM scan jitter (Lobato et al. 2023, eqs 41–42).

A scanning microscope records one pixel at a time along a row (the *fast*
scan direction, image axis -1) and then moves to the next row (the *slow*
direction, axis -2). Instabilities displace each scan line by a random,
line-to-line correlated amount: an AR(1) series per line (eq 41) applied by
bicubic interpolation (eq 42). :mod:`.stem` re-exports every public name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import check_image, check_layer_call
from ._params import OccurringParams, param

__all__ = ["ScanJitterParams", "apply_scan_displacements", "ar1_series", "scan_jitter"]


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
    img = check_image(image)
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
class ScanJitterParams(OccurringParams):
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

    occurrence: ClassVar[float] = 0.9

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ScanJitterParams:
        """Paper's draw: occurs with p = 0.9; modes x/y/xy with p = 0.25/0.25/0.5;
        σ uniform in [0.0025, 0.8] Å, φ uniform in [0, 0.7]; pixel size
        log-uniform in [0.025, 0.9] Å (the clean-image simulator's range)."""
        enabled = cls.draw_enabled(rng)
        mode = ("x", "y", "xy")[int(rng.choice(3, p=[0.25, 0.25, 0.5]))]
        return cls(enabled=enabled, mode=mode, **cls.draw_values(rng, "mode")).validate()


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
    img = check_layer_call(image, params, ScanJitterParams, rng)
    if not params.enabled:
        return img
    h = img.shape[0]
    dx = dy = None
    if "x" in params.mode:
        dx = ar1_series(h, params.sigma_x / params.pixel_size, params.phi_x, rng)
    if "y" in params.mode:
        dy = ar1_series(h, params.sigma_y / params.pixel_size, params.phi_y, rng)
    return apply_scan_displacements(img, dx=dx, dy=dy)

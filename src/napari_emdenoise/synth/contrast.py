"""Contrast post-processing of undistorted images (Lobato et al. 2023, eqs 23–26).

Applied to high- and low-resolution images alike, in this order: contrast
inversion (eq 23, probability 0.5), power law (eq 24, probability 0.5), a
random background (plane or Gaussian), the std/mean constraint (eq 25) and
the normalisation by the maximum (eq 26). Every step is a pure function
returning a new array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_image

__all__ = [
    "CLEAN_STD_MEAN_RANGE",
    "DARK_FIELD_PROBABILITY",
    "STD_MEAN_RANGE",
    "add_random_background",
    "apply_random_contrast",
    "enforce_std_mean_ratio",
    "gaussian_background",
    "invert_contrast",
    "normalize_max",
    "plane_background",
    "power_transform",
    "std_mean_ratio",
]

#: Range of Std{y} / E{y} that Lobato et al. (2023) report for real and
#: simulated EM images (eq 25).
STD_MEAN_RANGE = (0.01, 0.35)

#: Range used by :func:`apply_random_contrast`: wider than the paper's. An
#: HAADF image of a thin crystal (bright columns on a dark background) has
#: r ≈ 0.5–1.5; forced into [0.01, 0.35] it gets a bright pedestal, its shot
#: noise becomes almost signal-independent, and a network trained only on
#: such images smears and darkens the columns of real HAADF images.
CLEAN_STD_MEAN_RANGE = (0.01, 1.5)

#: Probability that :func:`apply_random_contrast` keeps an image's own dark
#: background (no inversion, no added plane or Gaussian background). With the
#: paper's recipe alone, about 90 % of atomic-resolution images carry a bright
#: pedestal, and sparse bright columns on a dark background (HAADF of thin
#: specimens, r ≈ 1) are almost never seen in training.
DARK_FIELD_PROBABILITY = 0.35


def _as_image(y: np.ndarray, name: str = "y") -> np.ndarray:
    """Checked float64 copy of a 2-D image (NaN/inf, ndim and emptiness raise)."""
    as_float_image(y, name=name)
    return np.array(y, dtype=np.float64, copy=True)


def invert_contrast(y: np.ndarray) -> np.ndarray:
    """Contrast inversion ``y ← max(y) − y`` (eq 23).

    Parameters
    ----------
    y : numpy.ndarray
        2-D image.

    Returns
    -------
    numpy.ndarray
        New float64 image with the same range, bright and dark swapped.
    """
    y = _as_image(y)
    return y.max() - y


def power_transform(y: np.ndarray, beta: float) -> np.ndarray:
    """Non-linear intensity transform ``y ← |y|^β`` (eq 24).

    Parameters
    ----------
    y : numpy.ndarray
        2-D image.
    beta : float
        Exponent β > 0 (Lobato et al. 2023 draw it from U[0.5, 1.5]).

    Returns
    -------
    numpy.ndarray
        New float64 image.
    """
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return np.abs(_as_image(y)) ** float(beta)


def plane_background(
    shape: tuple[int, int], height: float, direction_rad: float, low_fraction: float
) -> np.ndarray:
    """Positive tilted plane over the image (the "3-D plane" background of Lobato et al. (2023)).

    The plane rises linearly along ``direction_rad`` from
    ``low_fraction · height`` at one corner of the image to ``height`` at the
    opposite one, so it is everywhere in ``[0, height]``.

    Parameters
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels.
    height : float
        Largest value of the plane (≥ 0), in image intensity units.
    direction_rad : float
        In-plane direction of the gradient (0 = along columns, +x).
    low_fraction : float
        Value at the lowest corner relative to ``height``, in [0, 1].

    Returns
    -------
    numpy.ndarray
        Float64 array of ``shape``.
    """
    if height < 0 or not 0 <= low_fraction <= 1:
        raise ValueError("height must be >= 0 and low_fraction in [0, 1]")
    rows, cols = np.indices(shape, dtype=float)
    s = cols * np.cos(direction_rad) + rows * np.sin(direction_rad)
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros(shape)
    return height * (low_fraction + (1.0 - low_fraction) * s)


def gaussian_background(
    shape: tuple[int, int], centre: tuple[float, float], sigma: float, height: float
) -> np.ndarray:
    """Isotropic Gaussian background ``height · exp(−|r − c|² / 2σ²)``.

    Parameters
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels.
    centre : tuple of float
        ``(row, col)`` of the centre, in pixels.
    sigma : float
        Standard deviation in pixels (Lobato et al. 2023: [0.2, 0.6] · min(n_x, n_y)).
    height : float
        Peak value (≥ 0).

    Returns
    -------
    numpy.ndarray
        Float64 array of ``shape``.
    """
    if sigma <= 0 or height < 0:
        raise ValueError("sigma must be > 0 and height >= 0")
    rows, cols = np.indices(shape, dtype=float)
    r2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    return height * np.exp(-0.5 * r2 / sigma**2)


def add_random_background(
    y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Add a random plane or Gaussian background (probability 0.5 each).

    Its peak height is drawn from U[0, max(y)/2]; the Gaussian centre lies
    in the image and σ ~ U[0.2, 0.6] · min(n_x, n_y) pixels.

    Parameters
    ----------
    y : numpy.ndarray
        2-D image.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    image : numpy.ndarray
        New float64 image ``y + background``.
    info : dict
        Background type and parameters.
    """
    y = _as_image(y)
    height = float(rng.uniform(0.0, max(y.max(), 0.0) / 2.0))
    if rng.random() < 0.5:
        direction = float(rng.uniform(0.0, 2.0 * np.pi))
        low = float(rng.uniform(0.0, 1.0))
        bg = plane_background(y.shape, height, direction, low)
        info = {
            "type": "plane",
            "height": height,
            "direction_deg": float(np.degrees(direction)),
            "low_fraction": low,
        }
    else:
        centre = (float(rng.uniform(0, y.shape[0] - 1)), float(rng.uniform(0, y.shape[1] - 1)))
        sigma = float(rng.uniform(0.2, 0.6) * min(y.shape))
        bg = gaussian_background(y.shape, centre, sigma, height)
        info = {"type": "gaussian", "height": height, "centre_px": list(centre), "sigma_px": sigma}
    return y + bg, info


def std_mean_ratio(y: np.ndarray) -> float:
    """Return r = Std{y} / E{y} (population std); inf when the mean is ≤ 0."""
    y = np.asarray(y, dtype=np.float64)
    mean = y.mean()
    return float(y.std() / mean) if mean > 0 else float("inf")


def enforce_std_mean_ratio(
    y: np.ndarray,
    *,
    low: float = STD_MEAN_RANGE[0],
    high: float = STD_MEAN_RANGE[1],
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bring r = Std{y}/E{y} into ``[low, high]`` with ``y ← c·y + d`` (eq 25).

    Images already inside the range are returned unchanged (as a copy).
    Otherwise c = 1 and the offset d moves r to a target: uniform in the
    reachable part of the range when ``rng`` is given, else the nearest
    bound. A negative offset never takes the image below 0, so when
    r < ``low`` the reachable ratio is at most Std{y} / (E{y} − min y); if
    even that is below ``low`` the best reachable ratio is used and
    ``info["reached"]`` is False.

    Parameters
    ----------
    y : numpy.ndarray
        Non-negative 2-D image with at least one positive value.
    low, high : float
        Allowed range of r (Lobato et al. 2023: [0.01, 0.35]).
    rng : numpy.random.Generator, optional
        Draws the target ratio; ``None`` picks the nearest bound.

    Returns
    -------
    image : numpy.ndarray
        New float64 image.
    info : dict
        ``ratio_before``, ``ratio_after``, ``c``, ``d`` and ``reached``.

    Raises
    ------
    ValueError
        If ``y`` is not a valid image, has negative values, is constant, or
        the range is invalid.
    """
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    y = _as_image(y)
    y_min, mean, std = float(y.min()), float(y.mean()), float(y.std())
    if y_min < 0:
        raise ValueError("enforce_std_mean_ratio expects a non-negative image")
    if std == 0 or mean <= 0:
        raise ValueError("cannot set the std/mean ratio of a constant image")
    ratio = std / mean
    info: dict[str, Any] = {"ratio_before": ratio, "c": 1.0, "d": 0.0, "reached": True}
    if low <= ratio <= high:
        info["ratio_after"] = ratio
        return y.copy(), info
    if ratio > high:
        lo_t, hi_t, nearest = low, high, high
    else:
        best = std / (mean - y_min) if mean > y_min else np.inf
        lo_t, hi_t, nearest = low, min(high, best), low
        if best < low:
            lo_t = hi_t = nearest = best
            info["reached"] = False
    target = float(rng.uniform(lo_t, hi_t)) if rng is not None else nearest
    d = std / target - mean
    d = max(d, -y_min)
    out = y + d
    info["d"] = float(d)
    info["ratio_after"] = std_mean_ratio(out)
    return out, info


def normalize_max(y: np.ndarray) -> np.ndarray:
    """Normalise by the maximum, ``y ← y / max(y)`` (eq 26).

    Parameters
    ----------
    y : numpy.ndarray
        2-D image with a positive maximum.

    Returns
    -------
    numpy.ndarray
        New float64 image whose maximum is exactly 1.
    """
    y = _as_image(y)
    peak = y.max()
    if peak <= 0:
        raise ValueError("cannot normalise an image whose maximum is <= 0")
    return y / peak


def apply_random_contrast(
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    std_mean_range: tuple[float, float] = CLEAN_STD_MEAN_RANGE,
    dark_field_probability: float = DARK_FIELD_PROBABILITY,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply eqs 23–26 with the probabilities of Lobato et al. (2023).

    Parameters
    ----------
    y : numpy.ndarray
        Non-negative, non-constant 2-D image.
    rng : numpy.random.Generator
        Random generator.
    std_mean_range : (float, float)
        Allowed range of r = Std{y}/E{y} (eq 25). The default,
        :data:`CLEAN_STD_MEAN_RANGE`, is wider than the paper's
        :data:`STD_MEAN_RANGE` so that HAADF-like images keep their dark
        background.
    dark_field_probability : float
        Probability of keeping the specimen's own contrast: no inversion and
        no added background (an addition to the paper's recipe, see
        :data:`DARK_FIELD_PROBABILITY`).

    Returns
    -------
    image : numpy.ndarray
        Float32 image in [0, 1] with maximum exactly 1.
    info : dict
        ``inverted``, ``beta`` (None when eq 24 was skipped), ``background``
        and the eq-25 record.
    """
    y = _as_image(y)
    low, high = std_mean_range
    dark_field = bool(rng.random() < dark_field_probability)
    inverted = bool(rng.random() < 0.5) and not dark_field
    if inverted:
        y = invert_contrast(y)
    beta_drawn = float(rng.uniform(0.5, 1.5))
    beta = beta_drawn if rng.random() < 0.5 else None
    if beta is not None:
        y = power_transform(y, beta)
    if dark_field:
        background: dict[str, Any] = {"type": None}
    else:
        y, background = add_random_background(y, rng)
    # Dark field: a ratio outside the range goes to the nearest bound (the
    # smallest pedestal), not to a random target that could bury the contrast.
    y, ratio = enforce_std_mean_ratio(y, low=low, high=high, rng=None if dark_field else rng)
    y = normalize_max(y)
    out = np.clip(y, 0.0, 1.0).astype(np.float32)
    info = {
        "dark_field": dark_field,
        "inverted": inverted,
        "beta": beta,
        "background": background,
        "std_mean": ratio,
    }
    return out, info

"""Virtual detectors for 4D-STEM: masks on the diffraction pattern and the images they give.

A 4D-STEM data set is a stack of diffraction patterns, one per probe position,
laid out ``(scan_y, scan_x, det_y, det_x)`` in detector counts. A *virtual
detector* is a weight mask ``M(k)`` over the detector pixels ``k``; its image is

    I(r) = Σ_k M(k) · D(r, k)                                        (1)

for every scan position ``r`` — what a physical detector of that shape would
have recorded. The usual ones:

* **bright field (BF)** — a disk centred on the transmitted beam, radius up to
  the central-disk (bright-field) radius;
* **annular dark field (ADF)** — an annulus outside the central disk;
* any other **annulus** (inner radius 0 is a disk).

All geometry is in detector pixels: ``center = (y, x)`` measured from the
centre of pixel ``[0, 0]``, radii in pixels. A pixel belongs to an annulus when
the distance ``ρ`` of its centre from ``center`` satisfies
``inner ≤ ρ < outer``, so a BF disk of radius R and an ADF annulus of inner
radius R never share a pixel.

:func:`apply_mask` evaluates eq. (1) on numpy arrays, memory maps, zarr/h5py
arrays (read a block of scan rows at a time) and dask arrays (lazily, chunk by
chunk). :func:`poisson_residual` is the check that a denoiser invented nothing:
``(denoised − raw) / sqrt(max(denoised, 1))`` — in units of the Poisson
standard deviation, so where only noise was removed it scatters around 0 with
a spread of about 1 and shows no structure.

Pure numpy/scipy (dask only when it is given a dask array); no Qt, no napari.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DiskFit",
    "VirtualDetector",
    "annular_dark_field",
    "annulus_mask",
    "apply_mask",
    "bright_field",
    "check_4d",
    "disk_mask",
    "find_central_disk",
    "mean_pattern",
    "poisson_residual",
    "virtual_images",
]

#: Largest number of scan positions :func:`mean_pattern` averages (a strided subset beyond).
MEAN_PATTERN_POSITIONS = 4096
#: Bytes of patterns :func:`apply_mask` reads at once from a non-numpy array.
BLOCK_BYTES = 64 * 2**20


# -- input --------------------------------------------------------------------------------------
def check_4d(data: Any, what: str = "the data") -> tuple[int, int, int, int]:
    """Shape of a ``(scan_y, scan_x, det_y, det_x)`` array, or a ValueError a user understands.

    Parameters
    ----------
    data : array-like
        numpy, memmap, zarr, h5py or dask array.
    what : str
        How the message names the data.
    """
    shape = tuple(int(s) for s in getattr(data, "shape", np.shape(data)))
    if len(shape) != 4:
        raise ValueError(
            f"{what} has {len(shape)} dimension(s) {shape}; a 4D-STEM data set has four: "
            "(scan_y, scan_x, det_y, det_x) — one diffraction pattern per scan position"
        )
    if min(shape) < 1:
        raise ValueError(f"{what} is empty: shape {shape}")
    dtype = np.dtype(getattr(data, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} has data type {dtype}; detector counts must be real numbers")
    return shape  # type: ignore[return-value]


def _check_geometry(shape: tuple[int, int], center: tuple[float, float], *radii: float) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a detector mask needs a 2-D pattern shape, got {shape}")
    if len(center) != 2 or not all(math.isfinite(float(c)) for c in center):
        raise ValueError(f"detector centre must be two finite pixel coordinates, got {center}")
    for r in radii:
        if not (float(r) >= 0.0):  # also catches NaN
            raise ValueError(f"detector radii must be ≥ 0 pixels, got {radii}")


# -- masks --------------------------------------------------------------------------------------
def annulus_mask(
    shape: tuple[int, int],
    center: tuple[float, float],
    inner: float,
    outer: float = math.inf,
) -> np.ndarray:
    """Annular detector: 1 where ``inner ≤ ρ < outer``, else 0 (float32, ``shape``).

    Parameters
    ----------
    shape : tuple of int
        Pattern shape ``(det_y, det_x)`` in pixels.
    center : tuple of float
        ``(y, x)`` of the annulus centre in detector pixels.
    inner, outer : float
        Radii in detector pixels (``outer = inf``: up to the detector's edge).
    """
    _check_geometry(shape, center, inner, outer)
    if outer <= inner:
        raise ValueError(
            f"annulus outer radius ({outer:g} px) must be larger than its inner radius "
            f"({inner:g} px)"
        )
    yy, xx = np.indices(shape, dtype=np.float64)
    rho = np.hypot(yy - float(center[0]), xx - float(center[1]))
    return ((rho >= inner) & (rho < outer)).astype(np.float32)


def disk_mask(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """Disk detector: 1 where ``ρ < radius`` (an annulus of inner radius 0), float32."""
    return annulus_mask(shape, center, 0.0, radius)


def bright_field(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """Virtual bright-field mask: a disk of ``radius`` pixels on the transmitted beam."""
    return disk_mask(shape, center, radius)


def annular_dark_field(
    shape: tuple[int, int],
    center: tuple[float, float],
    inner: float,
    outer: float = math.inf,
) -> np.ndarray:
    """Virtual ADF mask: an annulus outside the central disk (``inner`` ≥ its radius)."""
    return annulus_mask(shape, center, inner, outer)


@dataclass(frozen=True)
class VirtualDetector:
    """An annular virtual detector (a disk when ``inner`` is 0).

    Attributes
    ----------
    center : tuple of float
        ``(y, x)`` in detector pixels.
    inner : float
        Inner radius in detector pixels, ≥ 0.
    outer : float
        Outer radius in detector pixels, > ``inner`` (``inf``: to the edge).
    """

    center: tuple[float, float]
    inner: float = 0.0
    outer: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", (float(self.center[0]), float(self.center[1])))
        object.__setattr__(self, "inner", float(self.inner))
        object.__setattr__(self, "outer", float(self.outer))
        _check_geometry((1, 1), self.center, self.inner, self.outer)
        if self.outer <= self.inner:
            raise ValueError(
                f"detector outer radius ({self.outer:g} px) must exceed its inner radius "
                f"({self.inner:g} px)"
            )

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The float32 mask of this detector on a ``(det_y, det_x)`` pattern."""
        return annulus_mask(shape, self.center, self.inner, self.outer)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record (``outer`` ``None`` for an open annulus)."""
        return {
            "center_px": list(self.center),
            "inner_px": self.inner,
            "outer_px": None if math.isinf(self.outer) else self.outer,
        }


# -- applying masks -----------------------------------------------------------------------------
def _is_dask(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "dask"


def apply_mask(
    data: Any,
    mask: np.ndarray,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Any:
    """Virtual image(s) of a 4D-STEM array through detector mask(s), eq. (1).

    Parameters
    ----------
    data : array-like
        ``(scan_y, scan_x, det_y, det_x)`` counts: a numpy array, memmap or
        zarr/h5py-like array (read a block of scan rows at a time, never the
        whole stack at once) or a dask array (lazy: the result is a dask array,
        computed chunk by chunk when asked for).
    mask : numpy.ndarray
        ``(det_y, det_x)`` weights, or ``(n, det_y, det_x)`` for ``n`` detectors
        in one pass over the data.
    progress : callable, optional
        ``progress(rows_done, rows_total)`` (not called for dask input).
    cancel : callable, optional
        Returning True stops a block-wise read with
        :class:`napari_emdenoise.engine.Cancelled` (not used for dask input).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32 ``(scan_y, scan_x)``, or ``(n, scan_y, scan_x)`` for a mask stack,
        in counts (summed over the mask).
    """
    sy, sx, dy, dx = check_4d(data)
    weights = np.asarray(mask, dtype=np.float64)
    single = weights.ndim == 2
    if single:
        weights = weights[None]
    if weights.ndim != 3 or weights.shape[1:] != (dy, dx):
        raise ValueError(
            f"detector mask of shape {np.shape(mask)} does not fit patterns of {dy}×{dx} pixels"
        )
    if _is_dask(data):
        import dask.array as da

        out = da.tensordot(data, weights, axes=((2, 3), (1, 2)))  # (sy, sx, n)
        out = da.moveaxis(out, -1, 0).astype(np.float32)
        return out[0] if single else out
    # numpy, memmap, zarr, h5py: a block of scan rows at a time (bounded float64 temporaries)
    itemsize = 8
    rows = max(1, int(BLOCK_BYTES // max(sx * dy * dx * itemsize, 1)))
    result = np.empty((weights.shape[0], sy, sx), np.float32)
    for y0 in range(0, sy, rows):
        if cancel is not None and cancel():
            from .predictor import Cancelled

            raise Cancelled("virtual image cancelled")
        block = np.asarray(data[y0 : y0 + rows], dtype=np.float64)
        part = np.tensordot(block, weights, axes=((2, 3), (1, 2)))
        result[:, y0 : y0 + block.shape[0]] = np.moveaxis(part, -1, 0)
        if progress is not None:
            progress(min(y0 + rows, sy), sy)
    return result[0] if single else result


def virtual_images(
    data: Any, detectors: Mapping[str, VirtualDetector], **kwargs: Any
) -> dict[str, np.ndarray]:
    """``{name: virtual image}`` of every detector, computed in one pass over ``data``.

    Dask input is computed here (chunk by chunk); ``kwargs`` go to :func:`apply_mask`.
    """
    shape = check_4d(data)
    names = list(detectors)
    if not names:
        return {}
    masks = np.stack([detectors[n].mask(shape[2:]) for n in names])
    stack = apply_mask(data, masks, **kwargs)
    if _is_dask(stack):
        stack = stack.compute()
    return {n: np.asarray(stack[i]) for i, n in enumerate(names)}


def poisson_residual(raw: np.ndarray, denoised: np.ndarray) -> np.ndarray:
    """``(denoised − raw) / sqrt(max(denoised, 1))``: the change in Poisson standard deviations.

    For counts ``raw ~ Poisson(λ)`` and a denoiser that recovers ``λ``, the
    residual has mean 0 and standard deviation ≈ 1 everywhere (the floor of 1
    count keeps empty pixels from dividing by ~0). Structure in it — edges,
    spots — is signal the denoiser moved or invented.

    Parameters
    ----------
    raw, denoised : numpy.ndarray
        Same shape, counts.

    Returns
    -------
    numpy.ndarray
        float32, dimensionless (Poisson σ).
    """
    raw = np.asarray(raw, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    if raw.shape != denoised.shape:
        raise ValueError(f"raw {raw.shape} and denoised {denoised.shape} differ in shape")
    return ((denoised - raw) / np.sqrt(np.maximum(denoised, 1.0))).astype(np.float32)


# -- central disk -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskFit:
    """The central (bright-field) disk found on a pattern, in detector pixels."""

    center: tuple[float, float]
    radius: float

    def bright_field(self, scale: float = 1.0) -> VirtualDetector:
        """A BF detector on the disk, its radius times ``scale``."""
        return VirtualDetector(self.center, 0.0, scale * self.radius)

    def annular_dark_field(
        self, inner_scale: float = 1.2, outer: float = math.inf
    ) -> VirtualDetector:
        """An ADF detector from ``inner_scale`` × the disk radius to ``outer`` pixels."""
        return VirtualDetector(self.center, inner_scale * self.radius, outer)


def mean_pattern(data: Any, max_positions: int = MEAN_PATTERN_POSITIONS) -> np.ndarray:
    """Mean diffraction pattern over (at most ``max_positions``, evenly strided) scan positions.

    Parameters
    ----------
    data : array-like
        ``(scan_y, scan_x, det_y, det_x)`` counts (dask: only the strided subset is read).
    max_positions : int
        Cap on the averaged positions, so a large stack is not read in full.

    Returns
    -------
    numpy.ndarray
        float64 ``(det_y, det_x)`` counts.
    """
    sy, sx, _, _ = check_4d(data)
    step = max(1, math.ceil(math.sqrt(sy * sx / max(int(max_positions), 1))))
    subset = data[::step, ::step]
    if _is_dask(subset):
        return np.asarray(subset.astype(np.float64).mean(axis=(0, 1)).compute())
    total = None
    count = 0
    for row in range(subset.shape[0]):  # row by row: never the whole subset at once
        block = np.asarray(subset[row], dtype=np.float64)
        total = block.sum(axis=0) if total is None else total + block.sum(axis=0)
        count += block.shape[0]
    return total / max(count, 1)


def find_central_disk(pattern: np.ndarray, threshold: float = 0.5) -> DiskFit:
    """Centre and radius of the central (transmitted-beam) disk of a pattern.

    The pattern is smoothed (Gaussian, σ = 1 px) and thresholded at
    ``background + threshold · (peak − background)`` (background: the median);
    the connected bright region holding the peak is the disk. Its centre is the
    intensity-weighted centre of mass of that region; its radius
    ``sqrt(area / π)`` (the radius of a disk of the same area).

    Parameters
    ----------
    pattern : numpy.ndarray
        2-D pattern, counts — the mean pattern (:func:`mean_pattern`) of a stack
        is the usual input: the central disk is the brightest feature there.
    threshold : float
        Fraction between background and peak, in (0, 1).

    Returns
    -------
    DiskFit
        Centre ``(y, x)`` and radius, detector pixels.
    """
    from scipy import ndimage

    image = np.asarray(pattern, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 3:
        raise ValueError(
            f"need a 2-D diffraction pattern of at least 3×3 pixels, got {image.shape}"
        )
    if not np.isfinite(image).all():
        raise ValueError("the pattern contains NaN or infinite values")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    smooth = ndimage.gaussian_filter(image, 1.0)
    background = float(np.median(smooth))
    peak = float(smooth.max())
    if peak <= background:
        raise ValueError("the pattern is flat: no central disk to find")
    bright = smooth >= background + threshold * (peak - background)
    labels, _ = ndimage.label(bright)
    disk = labels == labels[np.unravel_index(int(np.argmax(smooth)), smooth.shape)]
    weights = np.where(disk, np.maximum(image - background, 0.0), 0.0)
    if weights.sum() <= 0:
        weights = disk.astype(np.float64)
    cy, cx = ndimage.center_of_mass(weights)
    radius = math.sqrt(float(disk.sum()) / math.pi)
    return DiskFit((float(cy), float(cx)), radius)

"""A step of the refinement: no 2-pixel pattern that the raw frame does not show.

A network with stride-2 stages (pooling and upsampling) can leave a faint
pattern locked to its pixel grid, with a period of 2 pixels along rows, columns
or both: power at and around the three Nyquist frequencies ``(½, 0)``,
``(0, ½)`` and ``(½, ½)`` cycles/pixel of the output's spectrum. The bundled
networks leave at most a few 10⁻⁵ of the image range there, but a good
denoiser empties the neighbouring frequencies, so the pattern stands out
against them (up to 17× the input's own contrast there on smooth noisy
images, the network alone; ``docs/restoration_fidelity.md``, section 17).

This step replaces the restoration's content in three narrow bands around
those frequencies (Gaussian band-passes of standard deviation
``1 / (2π·width)`` cycles/pixel; in space a ``width``-pixel Gaussian times the
±1 pattern) by the raw frame's content in the same bands, treated the way the
restoration treats the frequencies just outside them:

* The restoration's transfer next to each band, ``g_b``, is the least-squares
  gain from the raw frame's spectrum to the restoration's over a ring of 3 to
  6 band widths around the Nyquist point, clipped to [0, 1]. A denoiser has
  ``g_b`` near 0 there; an identity restoration has 1 and is left as it is.
* The bands become ``Σ_b g_b · (raw band b)``; where the raw frame's bands
  exceed ``threshold`` times their noise, the raw content is kept whole, so a
  real 2-pixel structure (an undersampled lattice) stays.

The noise of the raw bands at a pixel is ``√(Σ_b (h_b² ∗ Var)) = √(3 ·
(G_{w/√2} ∗ Var) / (4π·w²))``, with ``h_b`` the band-pass's point response
(``h_b²`` is a squared Gaussian for all three bands) and ``Var = a·restored +
c`` the frame's Poisson–Gaussian noise line.

Spectra are taken of each image's periodic component (Moisan, "Periodic plus
smooth image decomposition", J. Math. Imaging Vis. 39, 161–179, 2011), so the
discontinuities at the frame's borders, which put power along both frequency
axes, are not mistaken for a 2-pixel pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise.variance import noise_variance_line
from ._frame_pair import frame_pair

__all__ = ["GRID_PATTERN_THRESHOLD", "GRID_PATTERN_WIDTH", "nyquist_bands", "remove_grid_pattern"]

#: Smallest frame side, pixels, the step works on (the Wiener refinement's).
MIN_SIDE = 16
#: Width of the bands' point response, pixels (band-pass σ = 1/(2π·16) ≈ 0.01 cycles/pixel).
GRID_PATTERN_WIDTH = 16.0
#: The raw frame's band content is kept where it exceeds this many noise deviations.
GRID_PATTERN_THRESHOLD = 5.0


#: The bands are cut off at this many band widths from their Nyquist point (the
#: Gaussian is 1.5·10⁻⁸ there); the neighbourhood ring spans 3 to 6 band widths.
_REACH = 6.0
_RING = (3.0, 6.0)


@dataclass(frozen=True)
class _Block:
    """The bins of the :func:`numpy.fft.rfft2` grid near one Nyquist point."""

    index: tuple[np.ndarray, np.ndarray]  # np.ix_ rows, columns
    distance: np.ndarray  # cycles/pixel from the point


def _blocks(shape: tuple[int, int], width: float) -> list[_Block]:
    """The bins within ``_REACH`` band widths of ``(½, 0)``, ``(0, ½)`` and ``(½, ½)``.

    Only these bins are touched, so the cost beyond the FFTs does not grow with
    the frame's area.
    """
    reach = _REACH / (2.0 * np.pi * width)
    m, n = shape
    fy = np.abs(np.fft.fftfreq(m))
    fx = np.fft.rfftfreq(n)
    near = {
        ("y", 0.5): 0.5 - fy,
        ("y", 0.0): fy,
        ("x", 0.5): 0.5 - fx,
        ("x", 0.0): fx,
    }
    out = []
    for at_y, at_x in ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
        dy, dx = near[("y", at_y)], near[("x", at_x)]
        rows, cols = np.flatnonzero(dy <= reach), np.flatnonzero(dx <= reach)
        distance = np.hypot(dy[rows][:, None], dx[cols][None, :])
        out.append(_Block(np.ix_(rows, cols), distance))
    return out


def _band_gain(distance: np.ndarray, width: float) -> np.ndarray:
    """Gaussian band-pass of standard deviation ``1/(2π·width)`` cycles/pixel."""
    return np.exp(-0.5 * (distance * (2.0 * np.pi * width)) ** 2)


def _neighbour_transfer(
    restored: np.ndarray, raw: np.ndarray, block: _Block, width: float
) -> float:
    """Least-squares gain raw → restored on the ring of 3–6 band widths around the
    block's Nyquist point, clipped to [0, 1] (1 where the ring is empty: a tiny frame).

    ``restored`` and ``raw``: the two periodic spectra on the block's bins.
    """
    sigma = 1.0 / (2.0 * np.pi * width)
    ring = (block.distance >= _RING[0] * sigma) & (block.distance <= _RING[1] * sigma)
    y, x = restored[ring], raw[ring]
    power = float(np.sum(x.real**2 + x.imag**2))
    if power <= 0.0:
        return 1.0
    cross = float(np.sum(y.real * x.real + y.imag * x.imag))
    return min(max(cross / power, 0.0), 1.0)


def _periodic_blocks(
    u: np.ndarray, width: float
) -> tuple[np.ndarray, list[tuple[_Block, np.ndarray]]]:
    """``rfft2(u)`` and, for each Nyquist block, the DFT of ``u``'s periodic component
    (Moisan 2011) on the block's bins.

    The smooth component's border image is a row part (rows 0 and M−1) plus a
    column part (columns 0 and N−1), so its DFT is two outer products of 1-D
    DFTs; only the blocks' bins are formed.
    """
    from scipy import fft

    m, n = u.shape
    spectrum = fft.rfft2(u, workers=-1)
    jump_rows = np.fft.rfft(u[-1, :] - u[0, :])  # v[0] = −v[M−1]
    jump_cols = np.fft.fft(u[:, -1] - u[:, 0])
    out = []
    for block in _blocks(u.shape, width):
        rows, cols = block.index[0][:, 0], block.index[1][0, :]
        q, r = rows[:, None], cols[None, :]
        phase_q = 1.0 - np.exp(2j * np.pi * q / m)
        phase_r = 1.0 - np.exp(2j * np.pi * r / n)
        denom = 2.0 * np.cos(2 * np.pi * q / m) + 2.0 * np.cos(2 * np.pi * r / n) - 4.0
        smooth = jump_rows[cols][None, :] * phase_q + jump_cols[rows][:, None] * phase_r
        zero = denom == 0.0  # the (0, 0) bin, in a frame so small that a block reaches it
        smooth = np.where(zero, 0.0, smooth / np.where(zero, 1.0, denom))
        out.append((block, spectrum[block.index] - smooth))
    return spectrum, out


def _band_noise(
    restored: np.ndarray, level: float, line: tuple[float, float], width: float
) -> np.ndarray:
    """Standard deviation of the three bands' noise at each pixel (see the module text).

    ``restored`` minus its mean ``level``; the variance map ``a·restored + c``
    is blurred by ``G_{width/√2}`` on a grid of ``width/2``-pixel blocks (a
    threshold needs no finer map).
    """
    from scipy import ndimage

    a, c = line
    step = max(1, int(width // 2))
    m, n = restored.shape
    pad = ((0, (-m) % step), (0, (-n) % step))
    blocks = np.pad(restored, pad, mode="edge").reshape(
        (m + pad[0][1]) // step, step, (n + pad[1][1]) // step, step
    )
    local = ndimage.gaussian_filter(blocks.mean(axis=(1, 3)), width / np.sqrt(2.0) / step)
    local = np.repeat(np.repeat(local, step, axis=0), step, axis=1)[:m, :n] + level
    variance = np.maximum(a * local + c, 0.0)
    return np.sqrt(3.0 * variance / (4.0 * np.pi * width**2))


def nyquist_bands(image: np.ndarray, width: float = GRID_PATTERN_WIDTH) -> np.ndarray:
    """The content of ``image`` in the three bands around the Nyquist frequencies.

    The sum of the three Gaussian band-passes (standard deviation
    ``1/(2π·width)`` cycles/pixel) of the image's periodic component, in the
    image's unit: what :func:`remove_grid_pattern` takes out of a restoration.
    """
    from scipy import fft

    u = np.asarray(image, dtype=np.float64)
    if u.ndim != 2 or min(u.shape) < 2:
        raise ValueError(f"image must be 2-D with at least 2 pixels a side, got {u.shape}")
    spectrum, blocks = _periodic_blocks(u - float(np.mean(u)), width)
    bands = np.zeros_like(spectrum)
    for block, periodic in blocks:
        bands[block.index] += _band_gain(block.distance, width) * periodic
    return fft.irfft2(bands, s=u.shape, workers=-1)


def remove_grid_pattern(
    image: np.ndarray,
    restored: np.ndarray,
    noise_line: tuple[float, float] | None = None,
    width: float = GRID_PATTERN_WIDTH,
    threshold: float = GRID_PATTERN_THRESHOLD,
) -> np.ndarray:
    """Replace the restoration's 2-pixel bands by the raw frame's, treated like their
    neighbourhood (see the module text).

    Parameters
    ----------
    image : numpy.ndarray
        The raw 2-D frame, any intensity unit (counts, e⁻, grey levels).
    restored : numpy.ndarray
        Its restoration, same shape and unit.
    noise_line : (a, c), optional
        The frame's noise variance line ``Var = a·mean + c`` in the image's unit
        (:func:`~napari_emdenoise.noise.variance.noise_variance_line`);
        measured against ``restored`` when not given.
    width : float
        Width of the bands' point response, pixels (> 0).
    threshold : float
        The raw frame's band content is kept whole where it exceeds this many
        of its noise standard deviations (> 0).

    Returns
    -------
    numpy.ndarray
        Float32 frame, same shape. Frames under 16 pixels on a side and
        non-finite inputs come back as ``restored``.

    Raises
    ------
    ValueError
        If the arrays are not 2-D or differ in shape, or ``width`` or
        ``threshold`` is not positive.
    """
    from scipy import fft

    if not (width > 0 and threshold > 0):
        raise ValueError(f"width and threshold must be > 0, got {width} and {threshold}")
    x, y, usable = frame_pair(image, restored, "restored", MIN_SIDE)
    if not usable:
        return np.asarray(restored, dtype=np.float32)
    if noise_line is None:
        noise_line = noise_variance_line(x, pilot=y)
    shape = y.shape
    # Around each frame's own mean: a large detector offset costs no precision.
    level = float(np.mean(y))
    y = y - level
    x = x - float(np.mean(x))
    y_spectrum, y_blocks = _periodic_blocks(y, width)
    _, x_blocks = _periodic_blocks(x, width)
    restored_bands, raw_bands, raw_treated = (np.zeros_like(y_spectrum) for _ in range(3))
    for (block, y_periodic), (_, x_periodic) in zip(y_blocks, x_blocks, strict=True):
        gain = _band_gain(block.distance, width)
        transfer = _neighbour_transfer(y_periodic, x_periodic, block, width)
        restored_bands[block.index] += gain * y_periodic
        raw_bands[block.index] += gain * x_periodic
        raw_treated[block.index] += (transfer * gain) * x_periodic
    restored_bands, raw_bands, raw_treated = (
        fft.irfft2(u, s=shape, workers=-1) for u in (restored_bands, raw_bands, raw_treated)
    )
    noise = _band_noise(y, level, noise_line, width)
    bands = np.where(np.abs(raw_bands) > threshold * noise, raw_bands, raw_treated)
    return (y - restored_bands + bands + level).astype(np.float32)

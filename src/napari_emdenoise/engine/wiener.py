"""Wiener refinement: an empirical Wiener filter of the raw frame, steered by the network.

A network trained on synthetic pairs gets the *shape* of an image right more
often than its exact amplitudes: on multislice simulations and real lattices
it attenuates fine lattice fringes and smooths column peaks more than the noise
requires. The raw frame still holds those details under the noise. The
refinement returns to the raw frame and keeps, coefficient by coefficient, the
share of it that the network's output says is signal.

This is the second step of BM3D (Dabov, Foi, Katkovnik & Egiazarian, "Image
denoising by sparse 3-D transform-domain collaborative filtering", IEEE Trans.
Image Process. 16, 2080, 2007), without the block matching, and with the
network's output as the pilot estimate (the empirical Wiener filter of Ghael,
Sayeed & Baraniuk, "Improved wavelet denoising via empirical Wiener
filtering", Proc. SPIE 3169, 1997). For every ``block``² window of the frame,
taken every ``step`` pixels, with ``X`` and ``P`` the orthonormal 2-D DCTs of
the raw frame and of the pilot in that window,

    Y_k = G_k · X_k,    G_k = P_k² / (P_k² + N_k),

where ``N_k`` is the noise power of coefficient ``k`` in that window. The
windows are put back with the weights ``w / Σ_k N_k G_k²`` (the inverse
variance of each window's estimate, as in BM3D; ``w`` a Kaiser window).

**Noise power.** ``N_k = V · S_k + m_k · P_k²``.

* ``V`` is the window's mean noise variance from the frame's own
  Poisson–Gaussian line, ``Var = a·mean + c`` evaluated on the pilot
  (:func:`~napari_emdenoise.noise.variance.noise_variance_line`, fitted on
  the high-pass of what the network removed, so that sharp columns and
  fringes the pilot explains are not taken for noise).
* ``S_k ≥ 1`` is the spectral shape of the noise the network removed,
  ``S_k = max(1, mean of (X_k − P_k)² / V)`` over the windows where the pilot
  sees no signal at ``k`` (``P_k² < V``). For white noise ``S_k ≈ 1``; where
  the network removed correlated noise (row lines, scan noise) ``S_k > 1`` and
  less of it comes back. Signal the network attenuated keeps a pilot above the
  noise and does not enter this estimate, so it is not mistaken for noise.
* ``m_k`` is noise proportional to the signal. Over the windows where the
  pilot sees signal, the removed part ``R_k = X_k − P_k`` is regressed on
  ``P_k``: the share in step with the pilot is the network's attenuation, which
  the filter gives back; what is left beyond the noise, relative to the pilot's
  power, is ``m_k`` (scan jitter and drift move lattice fringes, so the raw
  frame disagrees with the pilot at its own strongest coefficients). The
  window mean (``k = 0``) has ``m_0 = 0``.

Pixels further than eight noise deviations from the pilot (zingers, dead and
hot pixels) are replaced by the pilot before filtering, so impulses the network
removed stay removed.

What it cannot do: give back a detail that the network erased completely
(``P_k ≈ 0`` keeps ``G_k ≈ 0``), or undo a distortion that is not additive
(scan jitter, drift, blur) where the pilot says there is signal. On such
images it follows the raw frame at the frequencies of the lattice.

Measured (``python benchmarks/restore_quality.py``; ``docs/restoration_quality.md``
and ``docs/restoration_fidelity.md`` have the tables): on multislice HAADF-STEM
and HRTEM simulations at 2–200 counts/pixel it adds 0.2–2.3 dB (HAADF) and
0.7–1.3 dB (HRTEM) to the bundled models and takes them past BM3D with a
variance-stabilising transform at every dose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise.variance import noise_variance_line
from ._frame_pair import frame_pair

__all__ = ["WienerSettings", "wiener_refine"]


@dataclass(frozen=True)
class WienerSettings:
    """Window geometry of the refinement.

    Attributes
    ----------
    block : int
        Window side, pixels (a multiple of ``step``; 16–128). Frames smaller
        than a window use the largest multiple of 8 that fits, down to 8.
    step : int
        Distance between windows, pixels (each pixel lies in
        ``(block / step)²`` windows).
    kaiser_beta : float
        Shape of the Kaiser window that weights the pixels of each window
        when the windows are put back. 5 hides the window seams: with 2, the
        error of the refined physics images jumped 60 % more across a
        window boundary than elsewhere (5: 3 %; PSNR 0.01–0.06 dB lower).
    """

    block: int = 64
    step: int = 32
    kaiser_beta: float = 5.0

    def __post_init__(self) -> None:
        if not (isinstance(self.block, int) and 8 <= self.block <= 128):
            raise ValueError(f"block must be an integer in [8, 128], got {self.block!r}")
        if not (isinstance(self.step, int) and 1 <= self.step <= self.block):
            raise ValueError(f"step must be an integer in [1, block], got {self.step!r}")
        if self.block % self.step:
            raise ValueError(f"block ({self.block}) must be a multiple of step ({self.step})")
        if not (0.0 <= self.kaiser_beta <= 20.0):
            raise ValueError(f"kaiser_beta must be in [0, 20], got {self.kaiser_beta!r}")


#: Smallest frame side (pixels) that is refined; smaller frames keep the pilot.
MIN_SIDE = 16

#: Distance from the pilot, in noise standard deviations, beyond which a raw
#: pixel counts as an impulse (zinger, dead pixel) and is replaced by the pilot.
#: For Poisson counts at 0.5 counts/pixel, 2·10⁻⁴ of the pixels exceed it.
OUTLIER_SIGMAS = 8.0

#: Largest share of such pixels for which they are replaced (impulses are rare).
MAX_OUTLIER_FRACTION = 0.01

#: Fewest windows in which a coefficient must be noise-dominated for its noise
#: power to be measured (else the white-noise model, ``S_k = 1``, is used).
MIN_QUIET_WINDOWS = 16

#: Working memory of :func:`wiener_refine` per frame pixel, bytes (float32 frame,
#: pilot and variance, their padded copies and the two accumulators).
WORKING_BYTES_PER_PIXEL = 48

#: Windows per strip of the two passes (bounds memory on large frames).
_STRIP_WINDOWS = 1024


@dataclass(frozen=True)
class _Grid:
    """Where the windows of one frame lie: ``block``² windows every ``step`` pixels."""

    block: int
    step: int
    widths: tuple[tuple[int, int], tuple[int, int]]  # reflect padding of the frame
    n_rows: int
    n_cols: int

    @property
    def pad(self) -> int:
        return self.block - self.step

    @property
    def cells(self) -> int:
        return self.block // self.step

    def strips(self) -> list[slice]:
        """Rows of windows filtered together (bounds memory on large frames)."""
        per = max(1, _STRIP_WINDOWS // self.n_cols)
        return [slice(r, min(r + per, self.n_rows)) for r in range(0, self.n_rows, per)]

    def windows(self, padded: np.ndarray, rows: slice) -> np.ndarray:
        """The windows whose top-left corners are on rows ``rows`` of the step grid."""
        from numpy.lib.stride_tricks import sliding_window_view

        view = sliding_window_view(padded, (self.block, self.block))[:: self.step, :: self.step]
        return view[rows]


def _grid(shape: tuple[int, int], settings: WienerSettings) -> _Grid:
    """The window grid of a frame of ``shape`` (smaller windows on small frames).

    Every pixel lies in ``(block / step)²`` windows: the frame is padded by
    ``block − step`` on each side, and at the end up to a whole step.
    """
    block, step = settings.block, settings.step
    side = min(shape)
    if side < block:
        block = max(8, side - side % 8)
        step = max(1, block * settings.step // settings.block)
        while block % step:
            step -= 1
    pad = block - step
    extra = [(-(n + 2 * pad - block)) % step for n in shape]
    widths = ((pad, pad + extra[0]), (pad, pad + extra[1]))
    n_rows, n_cols = ((n + sum(w) - block) // step + 1 for n, w in zip(shape, widths))
    return _Grid(block, step, widths, n_rows, n_cols)


def _dct(windows: np.ndarray) -> np.ndarray:
    from scipy import fft

    return fft.dctn(windows, axes=(-2, -1), norm="ortho", workers=-1)


def _idct(coefficients: np.ndarray) -> np.ndarray:
    from scipy import fft

    return fft.idctn(coefficients, axes=(-2, -1), norm="ortho", workers=-1)


def _window_variance(variance: np.ndarray, grid: _Grid, floor: float) -> np.ndarray:
    """Mean noise variance of every window, ``(n_rows, n_cols)`` float32."""
    from scipy import ndimage

    vp = np.pad(variance, grid.widths, mode="reflect")
    mean = ndimage.uniform_filter(vp, grid.block, mode="nearest")
    c, s = grid.block // 2, grid.step
    v = mean[c : c + s * grid.n_rows : s, c : c + s * grid.n_cols : s]
    return np.maximum(v[: grid.n_rows, : grid.n_cols], floor).astype(np.float32)


def _noise_model(
    xp: np.ndarray, pp: np.ndarray, v_grid: np.ndarray, grid: _Grid
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: the noise spectrum ``S_k`` and the signal-proportional ``m_k``.

    ``S_k`` comes from the coefficients where the pilot sees no signal (its
    power under the noise variance): there, what the network removed is noise,
    white or not. Signal the network attenuated keeps a pilot above the noise
    and stays out of that estimate. Where the pilot sees signal, the removed
    part ``R = X − P`` is the network's attenuation (in step with ``P``:
    ``R ≈ β P``) plus noise plus errors that are not in step with ``P`` (scan
    jitter moves lattice fringes); the power of the last, relative to the
    pilot's, is ``m_k``.
    """
    shape = (grid.block, grid.block)
    quiet_sum, quiet_count = np.zeros(shape), np.zeros(shape)
    s_rp, s_pp, s_rr, s_v = (np.zeros(shape) for _ in range(4))
    for rows in grid.strips():
        xw = _dct(grid.windows(xp, rows))
        pw = _dct(grid.windows(pp, rows))
        v = v_grid[rows, :, None, None]
        power = pw * pw
        quiet = power < v
        strong = ~quiet
        removed = xw - pw
        r2 = removed * removed
        quiet_sum += np.sum(r2 / v * quiet, axis=(0, 1), dtype=np.float64)
        quiet_count += np.sum(quiet, axis=(0, 1))
        s_rp += np.sum(removed * pw * strong, axis=(0, 1), dtype=np.float64)
        s_pp += np.sum(power * strong, axis=(0, 1), dtype=np.float64)
        s_rr += np.sum(r2 * strong, axis=(0, 1), dtype=np.float64)
        s_v += np.sum(v * strong, axis=(0, 1), dtype=np.float64)
    enough = quiet_count >= max(MIN_QUIET_WINDOWS, 0.05 * grid.n_rows * grid.n_cols)
    enough[0, 0] = False  # the window mean is signal (its absolute level, see pass 2)
    spectrum = np.ones(shape)
    spectrum[enough] = np.maximum(quiet_sum[enough] / quiet_count[enough], 1.0)
    spp = np.maximum(s_pp, 1e-300)
    unexplained = s_rr - s_rp * s_rp / spp - s_v * spectrum
    mult = np.where(s_pp > 0, np.maximum(unexplained, 0.0) / spp, 0.0)
    mult[0, 0] = 0.0  # the window mean: an offset of the image would change its m
    return spectrum, mult


def _without_impulses(
    x: np.ndarray, p: np.ndarray, variance: np.ndarray, spectrum: np.ndarray
) -> np.ndarray | None:
    """``x`` with its impulses replaced by the pilot, or None if there are none to replace.

    Impulses (zingers, dead or hot pixels) are not Poisson–Gaussian noise: where
    the raw frame is further than :data:`OUTLIER_SIGMAS` noise deviations from
    the pilot (the pixel variance of noise with spectrum ``S`` is ``V·mean(S)``,
    which counts the correlated noise of a camera), the pilot stands in for it,
    so the filter cannot give them back. Impulses are rare: when more than
    :data:`MAX_OUTLIER_FRACTION` of the pixels are that far off, the noise
    model does not describe the frame and nothing is replaced.
    """
    deviation = np.sqrt(variance * float(spectrum.mean()))
    outliers = np.abs(x - p) > OUTLIER_SIGMAS * deviation
    if 0 < np.mean(outliers) <= MAX_OUTLIER_FRACTION:
        return np.where(outliers, p, x)
    return None


def _filter_windows(
    xp: np.ndarray,
    pp: np.ndarray,
    v_grid: np.ndarray,
    spectrum: np.ndarray,
    mult: np.ndarray,
    level: float,
    grid: _Grid,
    kaiser_beta: float,
) -> np.ndarray:
    """Pass 2: Wiener-filter every window and put the windows back (padded frame)."""
    spectrum32, mult32 = spectrum.astype(np.float32), mult.astype(np.float32)
    taper = np.kaiser(grid.block, kaiser_beta)
    taper = np.outer(taper, taper)
    num = np.zeros_like(xp)
    den = np.zeros_like(xp)
    dc_level = level * grid.block  # DCT coefficient 0 of a window of constant `level`
    for rows in grid.strips():
        # The transforms of pass 1 are recomputed, not kept: keeping every window's
        # coefficients would cost (block / step)² × 8 bytes per pixel more memory.
        xw = _dct(grid.windows(xp, rows))
        pw = _dct(grid.windows(pp, rows))
        power = pw * pw
        noise = v_grid[rows, :, None, None] * spectrum32 + mult32 * power
        gain = power / (power + noise)
        # the window mean with the absolute level (offset) back, in float64
        dc_pilot = pw[:, :, 0, 0].astype(np.float64) + dc_level
        dc_noise = noise[:, :, 0, 0].astype(np.float64)
        dc_gain = dc_pilot**2 / (dc_pilot**2 + dc_noise)
        gain[:, :, 0, 0] = dc_gain
        filtered = gain * xw
        filtered[:, :, 0, 0] = dc_gain * xw[:, :, 0, 0] - (1.0 - dc_gain) * dc_level
        weight = 1.0 / np.maximum(
            np.sum(noise * gain * gain, axis=(-2, -1), dtype=np.float64), 1e-300
        )
        weights = weight[:, :, None, None] * taper
        _put_back(num, _idct(filtered) * weights, rows, grid)
        _put_back(den, weights, rows, grid)
    return num / den


def _put_back(target: np.ndarray, windows: np.ndarray, rows: slice, grid: _Grid) -> None:
    """Add ``windows`` (of the strip ``rows``) into the padded frame ``target``.

    Window ``(r, c)`` covers the step² cells ``(r + i, c + j)``, ``i, j <
    block / step``: one cell offset ``(i, j)`` of every window is added at a time.
    """
    step, cells = grid.step, grid.cells
    n_r, n_c = rows.stop - rows.start, grid.n_cols
    r0 = rows.start * step
    blocks = windows.reshape(n_r, n_c, cells, step, cells, step)
    for i in range(cells):
        rs = slice(r0 + i * step, r0 + (i + n_r) * step)
        for j in range(cells):
            cs = slice(j * step, (j + n_c) * step)
            cell = blocks[:, :, i, :, j, :].transpose(0, 2, 1, 3)
            target[rs, cs] += cell.reshape(n_r * step, n_c * step)


def wiener_refine(
    image: np.ndarray,
    pilot: np.ndarray,
    settings: WienerSettings | None = None,
    noise_line: tuple[float, float] | None = None,
) -> np.ndarray:
    """Refine a restoration by an empirical Wiener filter of the raw frame.

    Parameters
    ----------
    image : numpy.ndarray
        The raw 2-D frame, in any intensity unit (counts, e⁻, grey levels).
    pilot : numpy.ndarray
        The network's restoration of ``image``, same shape and unit.
    settings : WienerSettings, optional
        Window geometry (default: 64² windows every 32 pixels).
    noise_line : (a, c), optional
        The frame's noise variance line ``Var = a·mean + c`` in the image's
        unit. Measured when not given, on the high-pass of ``image − pilot``
        against the pilot's local mean.

    Returns
    -------
    numpy.ndarray
        Float32 refined frame, same shape. Frames under 16 pixels on a side
        and non-finite pilots are returned as the pilot.

    Raises
    ------
    ValueError
        If the arrays are not 2-D or differ in shape.
    """
    settings = settings or WienerSettings()
    x64, p64, usable = frame_pair(image, pilot, "pilot", MIN_SIDE)
    if not usable:
        return p64.astype(np.float32)
    if noise_line is None:
        # Measured on what the network removed: structure it explains is not noise.
        noise_line = noise_variance_line(x64, pilot=p64)
    a, c = noise_line
    grid = _grid(x64.shape, settings)
    # float32 from here (about 40 bytes of working memory per pixel), around the
    # pilot's mean so that a large detector offset costs no precision; the window
    # means (DCT coefficient 0) are filtered with the absolute level, in float64.
    level = float(np.mean(p64))
    variance = np.maximum(a * p64 + c, 0.0).astype(np.float32)
    x = (x64 - level).astype(np.float32)
    p = (p64 - level).astype(np.float32)
    del x64, p64
    # Smallest variance: a millionth of the frame's contrast power (offset-free, so
    # the result is affine-equivariant), so a noise-free frame keeps the raw frame
    # (G = 1) without dividing by zero.
    floor = 1e-6 * float(np.mean(np.square(x, dtype=np.float64))) + 1e-12 * level**2 + 1e-30
    np.maximum(variance, np.float32(floor), out=variance)

    xp, pp = (np.pad(arr, grid.widths, mode="reflect") for arr in (x, p))
    v_grid = _window_variance(variance, grid, floor)
    spectrum, mult = _noise_model(xp, pp, v_grid, grid)
    cleaned = _without_impulses(x, p, variance, spectrum)
    if cleaned is not None:
        xp = np.pad(cleaned, grid.widths, mode="reflect")
    out = _filter_windows(xp, pp, v_grid, spectrum, mult, level, grid, settings.kaiser_beta)
    out = out[grid.pad : grid.pad + x.shape[0], grid.pad : grid.pad + x.shape[1]]
    return (out.astype(np.float64) + level).astype(np.float32)

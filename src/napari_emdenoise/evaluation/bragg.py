"""What a restoration keeps of a real micrograph's lattice, without a ground truth.

On a real atomic-resolution micrograph nobody knows the clean image, but its
crystal shows as sharp peaks in the power spectrum (the "Bragg" or lattice
peaks of the image's Fourier transform) standing far above the flat noise
floor. At such a peak the input's Fourier coefficient is almost all signal,
so the share of it that the restoration keeps,

    T(k) = Re[ F_out(k) · conj(F_in(k)) ] / |F_in(k)|²,

is a measure of signal kept at that spatial frequency: 1 for a restoration
that keeps the lattice, 0 for one that erases it, the transfer function's
value for a linear filter. Noise biases it by about ``floor / power``, at
most 1/``min_snr`` (2 % by default). This is the real-image counterpart of
:func:`.transfer.lattice_gain`: fine lattices that a network erases show a
transfer near 0 at their peaks, and the residual ``input − output`` then
shows the lattice.

Both images are reduced to their periodic component (Moisan 2011, see
:func:`.spectra.periodic_component`) first, so the frame edges add no cross
of spurious peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spectra import periodic_component

__all__ = ["BraggPeaks", "bragg_peaks", "bragg_transfer"]


@dataclass(frozen=True)
class BraggPeaks:
    """Lattice peaks of an image's power spectrum.

    Attributes
    ----------
    index : numpy.ndarray
        ``(n, 2)`` integer FFT indices ``(ky, kx)`` of the peaks (numpy's
        unshifted layout), one per Friedel pair.
    frequency : numpy.ndarray
        ``(n,)`` spatial frequency in cycles/pixel (1 / period in pixels).
    snr : numpy.ndarray
        ``(n,)`` peak power over the median power at the same frequency.
    """

    index: np.ndarray
    frequency: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return int(len(self.frequency))


def _spectrum(image: np.ndarray) -> np.ndarray:
    u = np.asarray(image, dtype=np.float64)
    if u.ndim != 2 or min(u.shape) < 8:
        raise ValueError(f"image must be 2-D and at least 8 × 8 pixels, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("image contains NaN or infinite values")
    return np.fft.fft2(periodic_component(u - u.mean()))


def _frequencies(shape: tuple[int, int]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.hypot(fy, fx)


def bragg_peaks(
    image: np.ndarray,
    *,
    min_snr: float = 50.0,
    min_frequency: float = 1.0 / 64.0,
    max_peaks: int = 64,
) -> BraggPeaks:
    """Find the lattice peaks of an image's power spectrum.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, any units (the raw micrograph).
    min_snr : float
        A peak's power must exceed this multiple of the median power of all
        frequencies of the same magnitude (the noise floor, or the diffuse
        background where that dominates).
    min_frequency : float
        Lowest frequency considered, cycles/pixel (default: periods up to
        64 pixels; slower variations are thickness and background, not the
        lattice).
    max_peaks : int
        At most this many peaks, the strongest first.

    Returns
    -------
    BraggPeaks
        Empty when the image shows no lattice.
    """
    from scipy import ndimage

    spectrum = _spectrum(image)
    power = np.abs(spectrum) ** 2
    f = _frequencies(power.shape)
    ring = np.rint(f * min(power.shape)).astype(np.int64)
    floor_by_ring = ndimage.median(power, labels=ring, index=np.arange(ring.max() + 1))
    floor = np.asarray(floor_by_ring, dtype=np.float64)[ring]
    snr = power / np.maximum(floor, np.finfo(np.float64).tiny)
    local_max = power >= ndimage.maximum_filter(power, size=5, mode="wrap")
    ky, kx = np.nonzero(local_max & (snr >= min_snr) & (f >= min_frequency))
    # one of each Friedel pair F(k) = conj(F(−k)): the upper half-plane
    fy = np.fft.fftfreq(power.shape[0])[ky]
    fx = np.fft.fftfreq(power.shape[1])[kx]
    keep = (fy > 0) | ((fy == 0) & (fx > 0))
    ky, kx = ky[keep], kx[keep]
    order = np.argsort(-snr[ky, kx])[: int(max_peaks)]
    ky, kx = ky[order], kx[order]
    return BraggPeaks(np.stack([ky, kx], axis=1), f[ky, kx], snr[ky, kx])


def bragg_transfer(
    image: np.ndarray, restored: np.ndarray, peaks: BraggPeaks | None = None
) -> np.ndarray:
    """Share of each lattice peak of ``image`` that ``restored`` keeps.

    Parameters
    ----------
    image : numpy.ndarray
        The raw 2-D micrograph.
    restored : numpy.ndarray
        Its restoration, same shape and units.
    peaks : BraggPeaks, optional
        Peaks to measure (default: :func:`bragg_peaks` of ``image``).

    Returns
    -------
    numpy.ndarray
        ``T(k)`` per peak, see the module notes (1: kept, 0: erased).
    """
    image = np.asarray(image)
    restored = np.asarray(restored)
    if image.shape != restored.shape:
        raise ValueError(f"shapes differ: {image.shape} and {restored.shape}")
    if peaks is None:
        peaks = bragg_peaks(image)
    if len(peaks) == 0:
        return np.zeros(0)
    f_in = _spectrum(image)[peaks.index[:, 0], peaks.index[:, 1]]
    f_out = _spectrum(restored)[peaks.index[:, 0], peaks.index[:, 1]]
    return np.real(f_out * np.conj(f_in)) / np.abs(f_in) ** 2

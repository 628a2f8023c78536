"""The Nyquist-spike measure: does an image carry a 2-px checkerboard?

A stride-2 transposed convolution (or any 2-px periodic artefact) puts power
at the Nyquist frequencies ``(N/2, 0)``, ``(0, N/2)`` and ``(N/2, N/2)`` of the
discrete Fourier transform, far above the surrounding frequencies. The measure
here is, for each of the three points, the mean power of the 3 × 3 bins
around it divided by the power expected from the ring of bins at Chebyshev
distance 2 to 8 around it (its median over ln 2, the median of an exponential
variable being ln 2 times its mean; a median so that a lattice reflection in
the ring does not hide a spike). White or smooth noise gives about 1 (the
spread of a mean of a few χ² variables); a pure 2-px pattern of amplitude
``a`` on noise of standard deviation ``s`` in an N × N image gives about
``1 + a² N² / (9 s²)``: 70 for a = s / 10 and N = 256. Compare an output with
its input with :func:`nyquist_excess`.

The image's periodic component (Moisan, "Periodic plus smooth image
decomposition", Journal of Mathematical Imaging and Vision 39, 161–179, 2011)
is used, so the discontinuities at the image borders do not leak power along
the frequency axes, where two of the three Nyquist points lie.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "nyquist_amplitude",
    "nyquist_excess",
    "nyquist_ratio",
    "nyquist_spikes",
    "periodic_component",
    "periodic_spectrum",
]


def _as_image(image: np.ndarray) -> np.ndarray:
    u = np.asarray(image, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {u.shape}")
    return u


def _smooth_spectrum(u: np.ndarray) -> np.ndarray:
    """DFT of the smooth component of ``u`` (Moisan 2011), complex128.

    ``DFT(v) / (2 cos(2πq/M) + 2 cos(2πr/N) − 4)``, with ``v`` the jumps between
    opposite borders; its mean is 0.
    """
    from scipy import fft

    m, n = u.shape
    v = np.zeros_like(u)
    v[0, :] += u[-1, :] - u[0, :]
    v[-1, :] += u[0, :] - u[-1, :]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] += u[:, 0] - u[:, -1]
    q = np.arange(m)[:, None]
    r = np.arange(n)[None, :]
    denom = 2 * np.cos(2 * np.pi * q / m) + 2 * np.cos(2 * np.pi * r / n) - 4
    denom[0, 0] = 1.0
    s_hat = fft.fft2(v, workers=-1)
    s_hat /= denom
    s_hat[0, 0] = 0.0
    return s_hat


def periodic_spectrum(image: np.ndarray) -> np.ndarray:
    """2-D DFT of the periodic component of ``image`` (Moisan 2011), complex128."""
    from scipy import fft

    u = _as_image(image)
    spectrum = fft.fft2(u, workers=-1)
    spectrum -= _smooth_spectrum(u)
    return spectrum


def periodic_component(image: np.ndarray) -> np.ndarray:
    """Periodic component of ``image`` (Moisan 2011): no border discontinuity."""
    from scipy import fft

    u = _as_image(image)
    return u - np.real(fft.ifft2(_smooth_spectrum(u), workers=-1))


def _nyquist_neighbourhoods(
    image: np.ndarray, inner: int, outer: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
    """Power spectrum around the three Nyquist points of ``image``.

    Returns the ``(2·outer + 1)²`` power blocks around ``(N/2,0)``,
    ``(0,N/2)`` and ``(N/2,N/2)`` (wrapping around; the point itself at
    ``[outer, outer]``), each block bin's Chebyshev distance from the centre,
    the ``inner``–``outer`` ring mask, and ``M·N`` of the image (cropped to
    even sides) whose periodic component was transformed.
    """
    u = np.asarray(image, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {u.shape}")
    u = u[: u.shape[0] - u.shape[0] % 2, : u.shape[1] - u.shape[1] % 2]
    m, n = u.shape
    if min(m, n) < 2 * outer + 2 or not 1 <= inner <= outer:
        raise ValueError(f"image {u.shape} too small for a neighbourhood of {outer} bins")
    p = periodic_component(u)
    power = np.abs(np.fft.fft2(p - p.mean())) ** 2
    d = np.arange(-outer, outer + 1)
    dr, dc = np.meshgrid(d, d, indexing="ij")
    cheb = np.maximum(np.abs(dr), np.abs(dc))
    ring = (cheb >= inner) & (cheb <= outer)
    points = {"(N/2,0)": (m // 2, 0), "(0,N/2)": (0, n // 2), "(N/2,N/2)": (m // 2, n // 2)}
    blocks = {name: power[np.ix_((kr + d) % m, (kc + d) % n)] for name, (kr, kc) in points.items()}
    return blocks, cheb, ring, m * n


def nyquist_spikes(image: np.ndarray, inner: int = 2, outer: int = 8) -> dict[str, float]:
    """Power at the three Nyquist points relative to their neighbourhoods.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, at least ``2 * outer + 2`` pixels per side. An odd side is
        cropped by one pixel so that the Nyquist frequency is a DFT bin.
    inner, outer : int
        The neighbourhood is the ring of bins at Chebyshev distance ``inner``
        to ``outer`` (inclusive) from the Nyquist point, wrapping around.

    Returns
    -------
    dict
        ``"(N/2,0)"`` (row frequency at Nyquist: horizontal stripes),
        ``"(0,N/2)"`` (vertical stripes), ``"(N/2,N/2)"`` (checkerboard), and
        ``"max"``: ratios of the mean power of the 3 × 3 core to the
        neighbourhood's expected power.
    """
    blocks, cheb, ring, _ = _nyquist_neighbourhoods(image, inner, outer)
    core = cheb <= 1
    out: dict[str, float] = {}
    for name, block in blocks.items():
        ref = np.median(block[ring]) / np.log(2)
        out[name] = float(block[core].mean() / max(ref, 1e-300))
    out["max"] = max(out.values())
    return out


def nyquist_ratio(image: np.ndarray) -> float:
    """Largest of the three Nyquist spike ratios of :func:`nyquist_spikes`."""
    return nyquist_spikes(image)["max"]


def nyquist_excess(output: np.ndarray, reference: np.ndarray, floor: float = 1.0) -> float:
    """How much stronger the output's Nyquist spike is than the reference's (input's).

    ``nyquist_ratio(output) / max(nyquist_ratio(reference), floor)``. The floor
    (the ratio's expectation for noise) keeps a reference whose Nyquist bins
    happen to be quiet from making the comparison flaky: on 256² white noise
    :func:`nyquist_ratio` has a median of about 1.3 and 1st–99th percentiles
    of about 0.6–2.9. A restoration should stay at or below 3.
    """
    return nyquist_ratio(output) / max(nyquist_ratio(reference), float(floor))


def nyquist_amplitude(image: np.ndarray, inner: int = 2, outer: int = 8) -> float:
    """Amplitude of the strongest 2-px pattern, in image units, above the local spectrum.

    A ratio (:func:`nyquist_spikes`) says how much a pattern stands out from its
    neighbourhood, which is very little power for a clean-looking output; the
    amplitude says how large the pattern is. For ``a · (−1)^(row + col)`` (or
    stripes) of amplitude ``a`` on an M × N image the Nyquist DFT bin is
    ``a · M · N``; the neighbourhood's expected power is subtracted first.
    """
    blocks, _, ring, size = _nyquist_neighbourhoods(image, inner, outer)
    best = 0.0
    for block in blocks.values():
        excess = block[outer, outer] - np.median(block[ring]) / np.log(2)
        best = max(best, float(np.sqrt(max(excess, 0.0))) / size)
    return best

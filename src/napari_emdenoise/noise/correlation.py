"""Correlation of an image's noise between neighbouring pixels, from its power spectrum.

Scanned images (S(T)EM, SEM) often have noise that is correlated along the
fast-scan axis: detector lag and the fast-scan blur spread each pixel's noise
into the next ones on the same line, while lines recorded at different times
stay independent. The self-supervised blind-spot masks
(:mod:`napari_emdenoise.training._masks`) and the fast-scan-axis check of the
restoration (:mod:`napari_emdenoise.engine.scan_axis`) use it. Pure numpy: no
torch, no Qt.
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_autocorrelation"]


def noise_autocorrelation(
    image: np.ndarray, axis: int = 1, max_lag: int = 8, band: float = 0.5
) -> np.ndarray:
    """Correlation of the noise between pixels ``1 … max_lag`` apart along ``axis``.

    Measured on the power spectrum, where noise and specimen separate: for
    ``axis=1`` (rows, the fast-scan axis) the spectrum is taken at the
    highest frequencies *across* the rows (``|k_y|`` above ``band`` of the
    Nyquist frequency), where a micrograph's signal is weak, and for every
    ``k_x`` the *median* over those ``k_y`` is kept, so the few Bragg peaks of
    a lattice that reach that band do not count. For noise that is
    independent between rows (a scanned image's rows are recorded at
    different times) this median spectrum is, up to a factor, the noise power
    spectrum along the rows; its inverse Fourier transform is the noise
    autocovariance along the rows (Wiener–Khinchin). The image is
    mean-subtracted and Hann-windowed first. Pixel-independent noise gives
    correlations near 0; detector lag or a fast-scan blur gives positive
    correlations over the length of the blur.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, any intensity unit.
    axis : {0, 1}
        Axis along which the correlation is measured (1: rows).
    max_lag : int
        Largest lag, in pixels.
    band : float
        Lower edge of the frequency band used across ``axis``, as a fraction
        of the Nyquist frequency (0–1).

    Returns
    -------
    numpy.ndarray
        ``(max_lag,)`` correlations at lags 1 … ``max_lag``.
    """
    x = np.asarray(image, dtype=np.float64)
    if axis == 0:
        x = x.T
    h, w = x.shape
    if h < 8 or w < 2 * max_lag + 2:
        return np.zeros(max_lag)
    x = (x - x.mean()) * np.hanning(h)[:, None] * np.hanning(w)[None, :]
    power = np.abs(np.fft.fft2(x)) ** 2
    ky = np.abs(np.fft.fftfreq(h)) * 2.0  # in units of the Nyquist frequency
    rows = power[ky >= band]
    if rows.shape[0] == 0:
        return np.zeros(max_lag)
    spectrum = np.median(rows, axis=0)  # (w,) along k_x
    acov = np.fft.ifft(spectrum).real
    if acov[0] <= 0:
        return np.zeros(max_lag)
    return acov[1 : max_lag + 1] / acov[0]

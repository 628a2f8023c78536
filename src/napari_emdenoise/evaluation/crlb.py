"""The Cramér–Rao lower bound of an atom-column position measured on noisy counts.

A restoration cannot add information to an image: every column position read
off a restored image is, in the end, a function of the noisy counts. Its error
therefore has the same lower bound as any other estimate made from those
counts. For an unbiased estimate of the column's position from the pixels of
its fitting window, the covariance is at least the inverse of the Fisher
information (Cramér 1946; Rao 1945; for atom columns: van Aert, den Dekker,
van den Bos & van Dyck, "High-resolution electron microscopy: from imaging
toward measuring", IEEE Trans. Instrum. Meas. 51, 611, 2002).

Here the model is the clean image translated rigidly inside the window, with
its shape, amplitude and background *known*: the most favourable case, so the
bound is the lowest any unbiased method can reach. Pixels carry Poisson
counts; read noise is left out, which can only lower the bound further (adding
independent noise never adds information). The Fisher matrix of column i is

    F_i = Σ_p ∇λ_p ∇λ_pᵀ / λ_p      (p in the fitting disk of column i),

with λ_p the expected counts of pixel p and ∇λ_p the derivative of the expected
image with respect to a shift (a spectral derivative). The RMS displacement
length is bounded by sqrt(mean_i trace(F_i⁻¹)).

Only an estimate that is *biased* towards where columns are expected — e.g. one
that borrows from neighbouring columns on the assumption of a perfect lattice
— can go below it, and such an estimate would hide the strain or the
displacements a measurement is made to find.
"""

from __future__ import annotations

import numpy as np

from .columns import ColumnReference, _windows

__all__ = ["position_crlb", "shift_gradient"]


def shift_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Derivatives of an image along rows and columns, per pixel of shift.

    Spectral derivative of the image mirrored at its edges (so the periodic
    extension has no jump); exact for a band-limited image away from the
    borders, where central differences underestimate the slope of a column
    only 1–3 px wide.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any units).

    Returns
    -------
    (d_row, d_col) : tuple of numpy.ndarray
        Same shape as ``image``, in image units per pixel.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    ext = np.concatenate([img, img[::-1]], axis=0)
    ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
    spec = np.fft.fft2(ext)
    ky = 2j * np.pi * np.fft.fftfreq(2 * h)[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(2 * w)[None, :]
    # The Nyquist bin of an even-length derivative has no defined sign: drop it.
    ky[h, 0] = 0.0
    kx[0, w] = 0.0
    d_row = np.fft.ifft2(spec * ky).real[:h, :w]
    d_col = np.fft.ifft2(spec * kx).real[:h, :w]
    return d_row, d_col


def position_crlb(expected_counts: np.ndarray, reference: ColumnReference) -> np.ndarray:
    """Per-column Cramér–Rao bound of the position error on Poisson counts.

    Parameters
    ----------
    expected_counts : numpy.ndarray
        The noise-free image in counts per pixel (the expectation of the
        recorded image), positive.
    reference : ColumnReference
        The scored columns and their fitting radius, from
        :func:`napari_emdenoise.evaluation.column_reference` on the same image.

    Returns
    -------
    numpy.ndarray
        (K,) lower bound of the root-mean-square displacement length of each
        scored column, in pixels: sqrt(trace(F⁻¹)). Multiply by
        ``100 × pixel size [Å]`` for picometres. The RMS over columns, as
        reported by :func:`~napari_emdenoise.evaluation.column_errors`, is
        bounded by ``sqrt(mean(bound**2))``.
    """
    lam = np.asarray(expected_counts, dtype=np.float64)
    if lam.shape != tuple(reference.shape):
        raise ValueError(f"shape mismatch: {lam.shape} vs {tuple(reference.shape)}")
    if not np.all(np.isfinite(lam)) or lam.min() <= 0:
        raise ValueError("expected counts must be finite and positive everywhere")
    if len(reference.fitted) == 0:
        return np.zeros(0)
    d_row, d_col = shift_gradient(lam)
    rows, cols, mask, inside, _ = _windows(lam.shape, reference.fitted, reference.radius)
    if not inside.all():
        raise ValueError("a scored column's window leaves the image")
    weight = mask / lam[rows, cols]
    gr, gc = d_row[rows, cols], d_col[rows, cols]
    f_rr = (weight * gr * gr).sum(1)
    f_cc = (weight * gc * gc).sum(1)
    f_rc = (weight * gr * gc).sum(1)
    det = f_rr * f_cc - f_rc**2
    with np.errstate(divide="ignore", invalid="ignore"):
        trace_inv = np.where(det > 0, (f_rr + f_cc) / det, np.inf)
    return np.sqrt(trace_inv)

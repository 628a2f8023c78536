"""Render projected atoms into an image by FFT convolution (eq 16 of Lobato et al. (2023)).

y(r) = Σ_Z Σ_i w_i f_Z(|r - r_i|) is computed per species as a point-density
image (sub-pixel bilinear deposit of the weights w_i) convolved once with that
species' eq-17 profile sampled on the pixel grid. All species share one
inverse FFT, so the cost is O(S · L² log L) for S species on an L × L padded
grid, independent of the number of atoms.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.fft

from ._profiles import AtomProfile

__all__ = ["render_margin", "render_sites"]

#: Relative level at which a profile is cut off (f < 1e-3 f(0)).
CUTOFF_REL = 1e-3


def render_margin(profiles: Mapping[int, AtomProfile], pixel_size: float) -> int:
    """Margin in pixels that atoms outside the field of view can reach into it.

    Parameters
    ----------
    profiles : mapping of int to AtomProfile
        Profile of each species, keyed by atomic number.
    pixel_size : float
        Pixel size in Å.

    Returns
    -------
    int
        ``ceil(max cut-off radius / pixel_size) + 1`` pixels.
    """
    reach = max(p.cutoff_radius(CUTOFF_REL) for p in profiles.values())
    return int(np.ceil(reach / pixel_size)) + 1


def _kernel_window(profile: AtomProfile, pixel_size: float) -> np.ndarray:
    """The profile sampled at integer pixel offsets, cut off at CUTOFF_REL."""
    radius_px = int(np.ceil(profile.cutoff_radius(CUTOFF_REL) / pixel_size))
    offsets = np.arange(-radius_px, radius_px + 1) * pixel_size
    r = np.hypot(offsets[:, None], offsets[None, :])
    window = profile(r)
    window[r > profile.cutoff_radius(CUTOFF_REL)] = 0.0
    return window


def render_sites(
    x: np.ndarray,
    y: np.ndarray,
    z_numbers: np.ndarray,
    weights: np.ndarray,
    profiles: Mapping[int, AtomProfile],
    shape: tuple[int, int],
    pixel_size: float,
    *,
    smooth_weights: np.ndarray | None = None,
    smooth_sigma: float = 0.0,
) -> np.ndarray:
    """Render weighted atoms, y = Σ_i w_i f_{Z_i}(|r - r_i|) (eq 16).

    Pixel ``(row, col)`` has its centre at ``(y, x) = (row, col) · pixel_size``.
    An atom exactly on a pixel centre is rendered exactly; an atom between
    centres is bilinearly shared between its four neighbouring pixel
    positions (a sub-pixel error of second order in the offset).

    Parameters
    ----------
    x, y : numpy.ndarray
        Atom positions along columns and rows, in Å.
    z_numbers : numpy.ndarray
        Atomic number of each atom (keys of ``profiles``).
    weights : numpy.ndarray
        Intensity weight of each atom (number of atoms it stands for).
    profiles : mapping of int to AtomProfile
        Eq-17 profile per atomic number.
    shape : tuple of int
        Output shape ``(n_rows, n_cols)`` in pixels.
    pixel_size : float
        Pixel size in Å.
    smooth_weights : numpy.ndarray, optional
        Extra weight of each atom rendered with an additional Gaussian blur
        of standard deviation ``smooth_sigma`` (the local mean of thick
        layers, see :func:`~._sites.split_slab_weight`).
    smooth_sigma : float
        Standard deviation of that blur, in Å.

    Returns
    -------
    numpy.ndarray
        Non-negative float64 image of ``shape``.
    """
    ny, nx = shape
    margin = render_margin(profiles, pixel_size)
    ly = scipy.fft.next_fast_len(ny + 2 * margin + 2, real=True)
    lx = scipy.fft.next_fast_len(nx + 2 * margin + 2, real=True)

    species = sorted(int(z) for z in np.unique(z_numbers) if int(z) in profiles)
    if not species or x.size == 0:
        return np.zeros(shape)
    slot = np.full(max(species) + 1, -1, dtype=np.int64)
    slot[species] = np.arange(len(species))

    n_species = len(species)
    weights = np.asarray(weights, dtype=float)
    smooth = np.zeros_like(weights) if smooth_weights is None else np.asarray(smooth_weights, float)
    use_smooth = bool(smooth_sigma > 0 and np.any(smooth != 0))
    if not use_smooth:
        weights = weights + smooth  # no blur requested: render everything sharply
    py = np.asarray(y, dtype=float) / pixel_size + margin
    px = np.asarray(x, dtype=float) / pixel_size + margin
    iy = np.floor(py).astype(np.int64)
    ix = np.floor(px).astype(np.int64)
    fy, fx = py - iy, px - ix
    inside = (iy >= 0) & (iy <= ly - 2) & (ix >= 0) & (ix <= lx - 2)
    iy, ix, fy, fx = iy[inside], ix[inside], fy[inside], fx[inside]
    flat = slot[np.asarray(z_numbers)[inside]] * (ly * lx) + iy * lx + ix
    index = np.concatenate([flat, flat + 1, flat + lx, flat + lx + 1])
    corner = np.concatenate([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    n_channels = 2 * n_species if use_smooth else n_species
    channels = [weights[inside]] + ([smooth[inside]] if use_smooth else [])
    density = (
        np.concatenate(
            [
                np.bincount(index, corner * np.tile(w, 4), minlength=n_species * ly * lx)
                for w in channels
            ]
        )
        .reshape(n_channels, ly, lx)
        .astype(np.float32)
    )

    kernels = np.zeros((n_species, ly, lx), dtype=np.float32)
    for k, z in enumerate(species):
        window = _kernel_window(profiles[z], pixel_size)
        half = window.shape[0] // 2
        rows = np.arange(-half, half + 1) % ly
        cols = np.arange(-half, half + 1) % lx
        kernels[k][np.ix_(rows, cols)] = window

    kernel_spectrum = scipy.fft.rfft2(kernels, axes=(-2, -1))
    spectrum = scipy.fft.rfft2(density, axes=(-2, -1))
    total = (spectrum[:n_species] * kernel_spectrum).sum(axis=0)
    if use_smooth:
        sigma_px = smooth_sigma / pixel_size
        qy = scipy.fft.fftfreq(ly)[:, None]
        qx = scipy.fft.rfftfreq(lx)[None, :]
        blur = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (qy**2 + qx**2)).astype(np.float32)
        total += (spectrum[n_species:] * kernel_spectrum).sum(axis=0) * blur
    image = scipy.fft.irfft2(total, s=(ly, lx))
    out = image[margin : margin + ny, margin : margin + nx].astype(np.float64)
    np.maximum(out, 0.0, out=out)
    return out

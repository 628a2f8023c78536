"""Fine texture of low-magnification scenes: an amorphous film's speckle and lattice fringes.

The low-resolution scenes of Lobato et al. (2023, "Data generation") are
particles, grains, bands, boxes and cracks with smooth interiors. Real
low-magnification TEM and STEM images also carry fine, real detail: the
phase-contrast speckle of an amorphous support film (a band-limited random
texture, a few pixels across) and lattice fringes inside crystalline
particles. A network trained without them learns that any fine random texture
is noise, and erases both even at a dose where they stand far above it
(measured on abTEM scenes of gold particles on amorphous carbon:
``docs/restoration_fidelity.md``, section 18). :func:`add_lowmag_texture`
puts them onto a finished clean image.

Lengths are in pixels; frequencies in cycles/pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FILM_AMPLITUDE_RANGE", "FRINGE_PERIOD_RANGE", "add_lowmag_texture"]

#: Relative amplitude (standard deviation) of the film speckle, uniform.
FILM_AMPLITUDE_RANGE = (0.03, 0.3)
#: Centre frequency of the speckle's band, cycles/pixel, uniform (periods of
#: 2.9–20 pixels: the first CTF passband of an underfocused low-magnification image).
FILM_FREQUENCY_RANGE = (0.05, 0.35)
#: Fringe period, pixels, log-uniform (2.5 px: close to Nyquist).
FRINGE_PERIOD_RANGE = (2.5, 10.0)
#: Relative fringe contrast, uniform.
FRINGE_CONTRAST_RANGE = (0.05, 0.5)


def _film_speckle(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Unit-variance random field with its power in a ring around a random frequency."""
    k0 = float(rng.uniform(*FILM_FREQUENCY_RANGE))
    width = float(rng.uniform(0.15, 0.5)) * k0
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    ring = np.exp(-0.5 * ((np.hypot(fy, fx) - k0) / width) ** 2)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * ring, s=shape)
    field /= max(float(field.std()), 1e-12)
    return field, {"frequency": k0, "band_width": width}


def _fringe_patches(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, list[dict]]:
    """1–8 soft-edged elliptical patches, each carrying straight fringes."""
    rows, cols = np.indices(shape, dtype=np.float64)
    modulation = np.zeros(shape)
    patches = []
    for _ in range(int(rng.integers(1, 9))):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius = float(rng.uniform(4.0, 0.25 * min(shape) + 4.0))
        aspect = float(rng.uniform(0.7, 1.3))
        period = float(np.exp(rng.uniform(*np.log(FRINGE_PERIOD_RANGE))))
        contrast = float(rng.uniform(*FRINGE_CONTRAST_RANGE))
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        r = np.hypot((rows - cy) / aspect, cols - cx)
        mask = 0.5 * (1.0 - np.tanh((r - radius) / 1.5))
        wave = np.cos(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period + phase)
        modulation += contrast * mask * wave
        patches.append({"radius": radius, "period": period, "contrast": contrast})
    return modulation, patches


def add_lowmag_texture(
    image: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Put an amorphous film's speckle and/or fringed patches onto a clean image.

    Each is added with probability 1/2 (at least one). Both modulate the image
    multiplicatively, ``image · (1 + a·speckle + fringes)`` clipped at 0, so
    they scale with the local signal as phase contrast does; the result is
    normalised to a maximum of 1, like every clean image (Lobato et al. 2023,
    eq 26).

    Parameters
    ----------
    image : numpy.ndarray
        Clean 2-D image, values in [0, 1].
    rng : numpy.random.Generator
        Random generator (advanced in place).

    Returns
    -------
    image : numpy.ndarray
        float32 image of the same shape, maximum 1.
    info : dict
        JSON-serialisable record of the draws.
    """
    base = np.asarray(image, dtype=np.float64)
    if base.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {base.shape}")
    film, fringes = rng.random(2) < 0.5
    if not (film or fringes):
        film = True
    modulation = np.zeros(base.shape)
    info: dict[str, Any] = {}
    if film:
        speckle, speckle_info = _film_speckle(rng, base.shape)
        amplitude = float(rng.uniform(*FILM_AMPLITUDE_RANGE))
        modulation += amplitude * speckle
        info["film"] = {"amplitude": amplitude, **speckle_info}
    if fringes:
        patches, info["fringes"] = _fringe_patches(rng, base.shape)
        modulation += patches
    out = np.clip(base * (1.0 + modulation), 0.0, None)
    peak = float(out.max())
    if peak > 0:
        out /= peak
    return out.astype(np.float32), info

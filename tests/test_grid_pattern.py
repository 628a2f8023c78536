"""The 2-pixel pattern step (engine/grid_pattern.py): what it removes, what it keeps, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.engine.grid_pattern import _band_noise, nyquist_bands, remove_grid_pattern
from napari_emdenoise.evaluation.spectra import (
    nyquist_amplitude,
    nyquist_ratio,
    periodic_spectrum,
)


def _smooth(rng: np.random.Generator, shape=(192, 160), level=50.0) -> np.ndarray:
    u = ndimage.gaussian_filter(rng.random(shape), 10.0)
    return level * (0.5 + (u - u.min()) / np.ptp(u))


def _patterns(shape) -> np.ndarray:
    """Horizontal stripes + vertical stripes + checkerboard, each ±1."""
    yy, xx = np.indices(shape)
    return (-1.0) ** yy + 0.5 * (-1.0) ** xx + 0.25 * (-1.0) ** (yy + xx)


def test_a_grid_locked_pattern_in_the_restoration_goes():
    """A restoration = truth + a 2-px pattern modulated by the content: the pattern goes,
    the rest of the restoration stays within a small fraction of the pattern."""
    rng = np.random.default_rng(0)
    clean = _smooth(rng)
    noisy = rng.poisson(clean).astype(np.float64)
    # an amplitude that varies over ~25 px; the bands are ~16 px wide in space
    amplitude = 1.0 + 0.5 * _smooth(rng, clean.shape, 1.0)
    pattern = 0.05 * amplitude * _patterns(clean.shape)
    out = remove_grid_pattern(noisy, clean + pattern)
    assert nyquist_amplitude(out) < 0.02 * nyquist_amplitude(clean + pattern)
    assert np.sqrt(np.mean((out - clean) ** 2)) < 0.1 * np.sqrt(np.mean(pattern**2))


def test_the_output_does_not_stand_out_at_nyquist_from_its_neighbourhood():
    """The issue's measure: the output's Nyquist spike relative to its neighbourhood is
    at most the input's (the bands hold only what the raw frame proves)."""
    rng = np.random.default_rng(1)
    clean = _smooth(rng, (256, 256), 200.0)
    noisy = rng.poisson(clean).astype(np.float64)
    restored = ndimage.gaussian_filter(noisy, 2.0) + 1e-3 * _patterns(clean.shape)
    assert nyquist_ratio(restored) > 10 * nyquist_ratio(noisy)
    assert nyquist_ratio(remove_grid_pattern(noisy, restored)) <= nyquist_ratio(noisy)


def test_a_real_two_pixel_structure_in_the_raw_frame_is_kept():
    """Stripes well above the noise in the raw frame come back where the restoration lost them."""
    rng = np.random.default_rng(2)
    yy, xx = np.indices((128, 128))
    stripes = 15.0 * (-1.0) ** yy * np.exp(-(((xx - 64) / 40.0) ** 2))
    clean = 100.0 + stripes
    noisy = rng.poisson(clean).astype(np.float64)
    out = remove_grid_pattern(noisy, np.full(clean.shape, 100.0))
    kept = np.sum((out - 100.0) * stripes) / np.sum(stripes**2)
    assert 0.8 < kept < 1.2


def test_noise_alone_is_not_put_back():
    """Raw frame = flat + Poisson noise, restoration = flat: the output stays flat."""
    rng = np.random.default_rng(3)
    noisy = rng.poisson(30.0, (160, 176)).astype(np.float64)
    out = remove_grid_pattern(noisy, np.full(noisy.shape, 30.0))
    assert np.count_nonzero(np.abs(out - 30.0) > 1e-4) < 0.005 * out.size


def test_the_band_noise_matches_the_measured_spread_of_white_noise():
    """The threshold's standard deviation (module formula) is the noise's, within 5 %
    (four 512² frames: a narrow band has few independent samples)."""
    rng = np.random.default_rng(4)
    shape = (512, 512)
    variances = [nyquist_bands(rng.poisson(40.0, shape)).var() for _ in range(4)]
    predicted = _band_noise(np.zeros(shape), 40.0, (1.0, 0.0), 16.0)
    assert np.ptp(predicted) < 1e-12
    assert np.sqrt(np.mean(variances)) == pytest.approx(predicted.mean(), rel=0.05)


def test_the_bands_are_the_band_pass_of_the_periodic_component():
    """nyquist_bands (bins near the three points, border part by 1-D DFTs) equals the
    full-grid band-pass of the periodic component (Moisan 2011)."""
    for shape in ((96, 80), (65, 47), (16, 16)):
        u = np.random.default_rng(11).random(shape) + np.linspace(0, 5, shape[1])[None, :]
        fy = np.abs(np.fft.fftfreq(shape[0]))[:, None]
        fx = np.fft.rfftfreq(shape[1])[None, :]
        sigma = 1 / (2 * np.pi * 16.0)
        gains = sum(
            np.exp(-0.5 * (np.hypot(dy, dx) / sigma) ** 2)
            for dy, dx in ((0.5 - fy, fx), (fy, 0.5 - fx), (0.5 - fy, 0.5 - fx))
        )
        half = periodic_spectrum(u - u.mean())[:, : shape[1] // 2 + 1]
        full = np.fft.irfft2(half * gains, s=shape)
        np.testing.assert_allclose(nyquist_bands(u), full, atol=1e-9 * np.ptp(u))


def test_an_identity_restoration_comes_back_unchanged():
    """A restoration that keeps the raw frame's noise next to the bands keeps it in them."""
    rng = np.random.default_rng(9)
    noisy = rng.poisson(_smooth(rng, (128, 144))).astype(np.float64)
    out = remove_grid_pattern(noisy, noisy)
    np.testing.assert_allclose(out, noisy, rtol=0, atol=1e-4 * np.ptp(noisy))


def test_the_bands_get_the_transfer_of_their_neighbourhood():
    """A restoration that halves the raw frame's high frequencies (no pattern): its
    bands are halved too, not emptied and not restored to the raw frame's."""
    rng = np.random.default_rng(10)
    shape = (256, 256)
    noisy = rng.poisson(30.0, shape).astype(np.float64)
    restored = 30.0 + 0.5 * (noisy - noisy.mean())

    def band_power(u):
        return np.sum(nyquist_bands(u) ** 2)

    # the Poisson noise line (the engine measures it against the network's output;
    # measured against this half-noisy "restoration" it would come out 4× too low)
    out = remove_grid_pattern(noisy, restored, noise_line=(1.0, 0.0))
    assert band_power(out) / band_power(noisy) == pytest.approx(0.25, rel=0.05)


def test_units_do_not_matter():
    """remove_grid_pattern(a·x + b, a·y + b) = a·remove_grid_pattern(x, y) + b (to float32
    rounding of the output: an offset of 3·10⁴ leaves 2·10⁻³ counts)."""
    rng = np.random.default_rng(5)
    clean = _smooth(rng, (96, 128))
    noisy = rng.poisson(clean).astype(np.float64)
    restored = clean + 0.1 * _patterns(clean.shape)
    ref = remove_grid_pattern(noisy, restored).astype(np.float64)
    for a, b in ((1e-3, 0.0), (37.0, -5.0), (1.0, 3.0e4)):
        out = remove_grid_pattern(a * noisy + b, a * restored + b).astype(np.float64)
        assert np.abs((out - b) / a - ref).max() < 1e-3 * np.ptp(ref), (a, b)


@pytest.mark.parametrize("shape", [(64, 65), (65, 64), (33, 47), (16, 16)])
def test_odd_and_small_shapes(shape):
    rng = np.random.default_rng(6)
    clean = _smooth(rng, shape)
    noisy = rng.poisson(clean).astype(np.float64)
    out = remove_grid_pattern(noisy, clean + 0.05 * _patterns(shape))
    assert out.shape == shape and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_frames_it_cannot_use_come_back_unchanged():
    rng = np.random.default_rng(7)
    tiny = rng.random((8, 40)).astype(np.float32)
    assert np.array_equal(remove_grid_pattern(tiny, tiny + 1), tiny + 1)
    frame = rng.random((32, 32))
    bad = frame.copy()
    bad[3, 4] = np.nan
    assert np.array_equal(remove_grid_pattern(bad, frame), frame.astype(np.float32))


def test_bad_arguments():
    x = np.zeros((32, 32))
    with pytest.raises(ValueError, match="one shape"):
        remove_grid_pattern(x, np.zeros((32, 31)))
    with pytest.raises(ValueError, match="2-D"):
        remove_grid_pattern(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="> 0"):
        remove_grid_pattern(x, x, width=0.0)
    with pytest.raises(ValueError, match="> 0"):
        remove_grid_pattern(x, x, threshold=-1.0)

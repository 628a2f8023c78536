"""Lattice-peak transfer of a restoration on an image without ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.evaluation import bragg_peaks, bragg_transfer, lattice_pattern


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    """Two lattices (peaks at periods 16/√2 and 6/√2 px) at 40 counts/pixel, Poisson."""
    clean = 20 * (2 + 0.5 * lattice_pattern(256, 6.0, 10.0) + 0.5 * lattice_pattern(256, 16.0, 33))
    return np.random.default_rng(0).poisson(clean).astype(np.float64)


def test_peaks_are_the_lattice_and_one_per_friedel_pair(noisy):
    peaks = bragg_peaks(noisy)
    # cos(k1·r)·cos(k2·r) has its peaks at ±k1 ± k2: two Friedel pairs per lattice
    assert len(peaks) == 4
    np.testing.assert_allclose(np.sort(1 / peaks.frequency), [6, 6, 16, 16] / np.sqrt(2), rtol=0.02)
    assert (peaks.snr >= 50).all()


def test_noise_alone_has_no_peaks():
    flat = np.random.default_rng(1).poisson(30.0, (256, 256)).astype(np.float64)
    assert len(bragg_peaks(flat)) == 0
    assert bragg_transfer(flat, flat).size == 0


def test_transfer_is_one_when_kept_zero_when_erased_and_the_filter_response_between(noisy):
    peaks = bragg_peaks(noisy)
    np.testing.assert_allclose(bragg_transfer(noisy, noisy, peaks), 1.0)
    np.testing.assert_allclose(bragg_transfer(noisy, np.full_like(noisy, noisy.mean())), 0.0)
    blurred = ndimage.gaussian_filter(noisy, 1.0, mode="wrap")
    expected = np.exp(-2 * np.pi**2 * peaks.frequency**2)  # a Gaussian's transfer function
    np.testing.assert_allclose(bragg_transfer(noisy, blurred, peaks), expected, atol=0.01)
    # the 4-px peaks are erased by a 2-px blur while the 11-px ones are mostly kept
    t = bragg_transfer(noisy, ndimage.gaussian_filter(noisy, 2.0, mode="wrap"), peaks)
    assert (t[peaks.frequency > 0.2] < 0.05).all() and (t[peaks.frequency < 0.1] > 0.5).all()


def test_bad_input_is_refused(noisy):
    with pytest.raises(ValueError, match="shapes differ"):
        bragg_transfer(noisy, noisy[:-1])
    bad = noisy.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bragg_peaks(bad)
    with pytest.raises(ValueError, match="2-D"):
        bragg_peaks(noisy[0])

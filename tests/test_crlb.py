"""The Cramér–Rao bound of column positions: analytic values and a Monte-Carlo check."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.evaluation import (
    column_errors,
    column_reference,
    lattice_probe,
    position_crlb,
    shift_gradient,
)


def _gaussian_spot(size: int, centre: tuple[float, float], sigma: float, total: float, bg: float):
    y, x = np.mgrid[:size, :size].astype(np.float64)
    g = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2))
    return bg + total * g / (2 * np.pi * sigma**2)


def test_shift_gradient_matches_the_analytic_derivative():
    sigma = 1.5
    img = _gaussian_spot(64, (31.3, 30.8), sigma, 1.0, 0.0)
    d_row, d_col = shift_gradient(img)
    y, x = np.mgrid[:64, :64].astype(np.float64)
    exact_row = -(y - 31.3) / sigma**2 * img
    exact_col = -(x - 30.8) / sigma**2 * img
    scale = np.abs(exact_row).max()
    assert np.abs(d_row - exact_row).max() < 1e-4 * scale
    assert np.abs(d_col - exact_col).max() < 1e-4 * scale


def test_bound_of_one_spot_is_sigma_squared_over_counts():
    # Fisher information of a Gaussian spot of N counts: N / σ² per axis, so
    # E|d|² ≥ 2 σ² / N (a weak background changes this by < 1 %).
    sigma, total = 2.0, 400.0
    size = 48
    img = _gaussian_spot(size, (24.2, 23.7), sigma, total, 1e-4)
    ref = column_reference(img, np.array([[24.2, 23.7]]), radius=5 * sigma)
    bound = position_crlb(img, ref)
    assert bound.shape == (1,)
    assert bound[0] == pytest.approx(np.sqrt(2 * sigma**2 / total), rel=0.01)
    # Four times the counts halve the bound.
    ref4 = column_reference(4 * img, np.array([[24.2, 23.7]]), radius=5 * sigma)
    assert position_crlb(4 * img, ref4)[0] == pytest.approx(bound[0] / 2, rel=1e-6)


def test_a_gaussian_fit_on_poisson_counts_comes_close_to_the_bound_but_not_below():
    # The bound is a floor, and a least-squares Gaussian fit at a moderate dose
    # nearly attains it; both would fail if the Fisher information were wrong
    # by a factor of two either way.
    ratios = []
    for seed in range(3):
        p = lattice_probe(np.random.default_rng(seed), dose=20.0, spacing=16.0, width=2.0)
        ref = column_reference(p.clean, p.positions)
        bound = float(np.sqrt(np.mean(position_crlb(p.clean, ref) ** 2)))
        ratios.append(column_errors(p.noisy, ref)["rms_px"] / bound)
    ratio = float(np.mean(ratios))
    assert 0.9 <= ratio <= 1.5, ratios


def test_bad_input_gives_clear_errors():
    img = _gaussian_spot(32, (16, 16), 2.0, 100.0, 0.1)
    ref = column_reference(img, np.array([[16.0, 16.0]]))
    with pytest.raises(ValueError, match="shape mismatch"):
        position_crlb(img[:30], ref)
    with pytest.raises(ValueError, match="positive"):
        position_crlb(img - 1.0, ref)
    with pytest.raises(ValueError, match="2-D"):
        shift_gradient(np.zeros(5))

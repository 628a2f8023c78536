"""The lattice gain: a known linear filter's transfer function, identity, erasure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_emdenoise.evaluation import lattice_gain, lattice_pattern


@pytest.mark.parametrize("period", [4.0, 8.0, 16.0])
def test_gain_of_a_gaussian_filter_is_its_transfer_function(period):
    sigma = 1.0
    gain = lattice_gain(
        lambda x: gaussian_filter(x, sigma, mode="wrap"),
        period,
        float("inf"),
        np.random.default_rng(0),
    )
    # Each factor of cos(k·u) cos(k·v) is damped by exp(−σ²k²/2).
    k = 2 * np.pi / period
    assert gain == pytest.approx(np.exp(-(sigma**2) * k**2), abs=2e-3)


def test_identity_keeps_the_lattice_and_a_flat_output_erases_it():
    rng = np.random.default_rng(1)
    assert lattice_gain(lambda x: x, 6.0, 20.0, rng) == pytest.approx(1.0, abs=0.05)
    flat = lattice_gain(lambda x: np.full_like(x, x.mean()), 6.0, 20.0, rng)
    assert flat == pytest.approx(0.0, abs=1e-9)


def test_rows_and_columns_alone_carry_no_lattice():
    # A network that removes scan-line offsets is not charged for it: the pattern
    # is orthogonal to anything constant along a row or along a column.
    p = lattice_pattern(128, 8.0, angle=0.0)
    assert abs(p.mean(axis=1)).max() < 1e-12 and abs(p.mean(axis=0)).max() < 1e-12


def test_bad_arguments_give_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Nyquist"):
        lattice_pattern(64, 1.5)
    with pytest.raises(ValueError, match="size"):
        lattice_pattern(4, 4.0)
    with pytest.raises(ValueError, match="modulation"):
        lattice_gain(lambda x: x, 6.0, 20.0, rng, modulation=0.0)
    with pytest.raises(ValueError, match="shape"):
        lattice_gain(lambda x: x[1:], 6.0, 20.0, rng)
    with pytest.raises(TypeError, match="Generator"):
        lattice_gain(lambda x: x, 6.0, 20.0, 0)

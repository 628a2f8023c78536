"""The SURE safeguard: never worse than the input on Poisson data, affine-equivariant."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_emdenoise.engine.safeguard import noise_variance_line, sure_blend
from napari_emdenoise.evaluation import lattice_probe, psnr


def test_variance_line_recovers_poisson_gaussian_parameters():
    rng = np.random.default_rng(0)
    clean = 20.0 + 200.0 * gaussian_filter(rng.random((256, 256)), 20.0)
    clean = 20.0 + 200.0 * (clean - clean.min()) / np.ptp(clean)
    gain, sigma, offset = 2.0, 3.0, 1000.0
    noisy = gain * rng.poisson(clean) + rng.normal(0.0, sigma, clean.shape) + offset
    slope, intercept = noise_variance_line(noisy)
    assert slope == pytest.approx(gain, rel=0.1)
    # Var = gain·(mean − offset) + σ²: the intercept goes negative with the offset.
    assert intercept == pytest.approx(sigma**2 - gain * offset, rel=0.1)


def _oversmooth(x: np.ndarray) -> np.ndarray:
    return gaussian_filter(x, 3.0)  # removes signal along with the noise


def _good(x: np.ndarray) -> np.ndarray:
    return gaussian_filter(x, 0.8)


@pytest.mark.parametrize("dose", [2.0, 50.0, 500.0])
def test_blend_is_never_below_the_input_and_keeps_a_good_restoration(dose):
    probe = lattice_probe(np.random.default_rng(1), size=256, width=2.5, dose=dose)
    x = probe.noisy
    bad = sure_blend(x, _oversmooth(x), _oversmooth, np.random.default_rng(0))
    assert psnr(bad.image, probe.clean) >= psnr(x, probe.clean) - 0.1
    assert psnr(bad.image, probe.clean) >= psnr(_oversmooth(x), probe.clean) - 0.1
    good = sure_blend(x, _good(x), _good, np.random.default_rng(0))
    assert psnr(good.image, probe.clean) >= psnr(_good(x), probe.clean) - 0.3
    if dose >= 50:  # an over-smoothing "model" at high dose is mostly undone
        assert bad.weight < 0.5


def test_blend_is_affine_equivariant():
    probe = lattice_probe(np.random.default_rng(2), size=128, dose=20.0)
    x = probe.noisy.astype(np.float64)
    ref = sure_blend(x, _oversmooth(x), _oversmooth, np.random.default_rng(0))
    a, b = 37.0, -500.0
    y = a * x + b
    out = sure_blend(y, _oversmooth(y), _oversmooth, np.random.default_rng(0))
    assert out.weight == pytest.approx(ref.weight, abs=1e-3)
    np.testing.assert_allclose((out.image - b) / a, ref.image, atol=1e-3 * np.ptp(ref.image))


def test_tiny_or_flat_frames_keep_the_output():
    x = np.ones((20, 20), np.float32)
    res = sure_blend(x, x * 0.5, lambda c: c * 0.5, np.random.default_rng(0))
    assert not res.estimated and res.weight == 1.0
    np.testing.assert_array_equal(res.image, x * 0.5)


def test_restore_with_safeguard_is_not_worse_than_the_input(tiny_user_model):
    from napari_emdenoise.engine import restore

    probe = lattice_probe(np.random.default_rng(3), size=128, dose=100.0)
    out = restore(probe.noisy, model=tiny_user_model, device="cpu", safeguard=True)
    assert out.shape == probe.noisy.shape and out.dtype == np.float32
    assert psnr(out, probe.clean) >= psnr(probe.noisy, probe.clean) - 0.1

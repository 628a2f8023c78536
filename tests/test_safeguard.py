"""The SURE safeguard: never worse than the input on Poisson data, affine-equivariant."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_emdenoise.engine.safeguard import noise_variance_line, sure_blend
from napari_emdenoise.evaluation import lattice_probe, psnr


@pytest.mark.parametrize("kernel", ["laplacian", "corner"])
def test_variance_line_recovers_poisson_gaussian_parameters(kernel):
    rng = np.random.default_rng(0)
    clean = 20.0 + 200.0 * gaussian_filter(rng.random((256, 256)), 20.0)
    clean = 20.0 + 200.0 * (clean - clean.min()) / np.ptp(clean)
    gain, sigma, offset = 2.0, 3.0, 1000.0
    noisy = gain * rng.poisson(clean) + rng.normal(0.0, sigma, clean.shape) + offset
    slope, intercept = noise_variance_line(noisy, kernel=kernel)
    assert slope == pytest.approx(gain, rel=0.1)
    # Var = gain·(mean − offset) + σ²: the intercept goes negative with the offset.
    assert intercept == pytest.approx(sigma**2 - gain * offset, rel=0.1)


@pytest.mark.parametrize("kernel", ["laplacian", "corner"])
def test_variance_line_with_a_pilot_ignores_sharp_structure_and_zingers(kernel):
    """A sharp lattice (period = fit block) and zingers fool the line of the image alone; the
    residual against a good pilot gives the Poisson–Gaussian parameters back."""
    rng = np.random.default_rng(3)
    probe = lattice_probe(rng, size=192, spacing=8.0, width=1.2, dose=50.0)
    gain, sigma, offset = 2.0, 3.0, 1000.0
    clean = gain * probe.clean + offset
    noisy = gain * probe.noisy + rng.normal(0.0, sigma, clean.shape) + offset
    noisy.flat[rng.choice(noisy.size, 40, replace=False)] += 5000.0
    alone = noise_variance_line(noisy, kernel=kernel)
    assert abs(alone[0] - gain) > 0.5 * gain  # the failure this option exists for
    slope, intercept = noise_variance_line(noisy, kernel=kernel, pilot=clean)
    assert slope == pytest.approx(gain, rel=0.15)
    # at the image's mean level, the variance is right within 15 %
    level = float(clean.mean())
    truth = gain * (level - offset) + sigma**2
    assert slope * level + intercept == pytest.approx(truth, rel=0.15)
    with pytest.raises(ValueError, match="pilot"):
        noise_variance_line(noisy, pilot=clean[:-1])


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


@pytest.mark.parametrize("shape", [(64, 64), (63, 65), (40, 97)])
def test_band_responses_are_a_partition_of_unity(shape):
    from napari_emdenoise.engine.safeguard import band_responses

    r = band_responses(shape)
    assert r.shape == (5, shape[0], shape[1] // 2 + 1)
    assert r.min() >= 0.0
    np.testing.assert_allclose(r.sum(0), 1.0, atol=1e-12)
    assert r[0, 0, 0] == 1.0  # zero frequency: lowest band only
    assert r[-1, shape[0] // 2, -1] == pytest.approx(1.0)  # Nyquist corner: highest band only


def test_one_band_is_one_global_weight():
    probe = lattice_probe(np.random.default_rng(4), size=256, dose=20.0)
    x = probe.noisy.astype(np.float64)
    res = sure_blend(x, _oversmooth(x), _oversmooth, np.random.default_rng(0), edges=())
    assert len(res.band_weights) == 1 and res.band_weights[0] == pytest.approx(res.weight)
    expected = x + res.weight * (_oversmooth(x) - x)
    np.testing.assert_allclose(res.image, expected, rtol=1e-5, atol=1e-4)


def _erase_fine_lattice(x: np.ndarray) -> np.ndarray:
    return gaussian_filter(x, 2.0)  # keeps the background, removes a 5-px lattice


@pytest.mark.parametrize("dose", [50.0, 200.0])
def test_bands_give_back_a_fine_lattice_the_model_removed(dose):
    # A 5-px lattice (0.2 cycles/pixel), as a multislice image at 0.3 Å/pixel
    # shows it: a model that blurs it away must not be trusted in that band.
    probe = lattice_probe(np.random.default_rng(5), size=256, spacing=5.0, width=0.9, dose=dose)
    x = probe.noisy
    res = sure_blend(x, _erase_fine_lattice(x), _erase_fine_lattice, np.random.default_rng(0))
    assert psnr(_erase_fine_lattice(x), probe.clean) < psnr(x, probe.clean) - 10
    assert psnr(res.image, probe.clean) >= psnr(x, probe.clean) - 2.0
    assert res.band_weights[3] < 0.1  # 1/8–1/4 cycles/pixel: the lattice's band


def test_bands_beat_one_weight_when_the_model_is_right_at_some_scales_only():
    # Over-smoothing at high dose: wrong for the columns, right for the noise
    # at the highest frequencies. One weight must trade both; bands need not.
    probe = lattice_probe(np.random.default_rng(6), size=256, dose=200.0)
    x = probe.noisy
    one = sure_blend(x, _oversmooth(x), _oversmooth, np.random.default_rng(0), edges=())
    bands = sure_blend(x, _oversmooth(x), _oversmooth, np.random.default_rng(0))
    assert psnr(bands.image, probe.clean) > psnr(one.image, probe.clean) + 3.0
    assert psnr(bands.image, probe.clean) > psnr(x, probe.clean) + 3.0
    assert bands.band_weights[-1] > 0.9 and bands.band_weights[0] < 0.1


def test_corner_variance_kernel_ignores_a_dense_lattice():
    # A 5-px lattice of sharp columns leaks into both high-pass residuals and
    # inflates the noise variance they report; far less into the corner kernel.
    dose = 200.0
    probe = lattice_probe(np.random.default_rng(7), size=256, spacing=5.0, width=0.9, dose=dose)
    slope_c, icpt_c = noise_variance_line(probe.noisy, kernel="corner")
    slope_l, icpt_l = noise_variance_line(probe.noisy, kernel="laplacian")
    mean = float(probe.clean.mean())
    true = mean  # Poisson: variance = mean
    error_corner = abs(slope_c * mean + icpt_c - true)
    error_laplacian = abs(slope_l * mean + icpt_l - true)
    assert error_laplacian > 5 * true
    assert error_corner < 0.25 * error_laplacian
    with pytest.raises(ValueError, match="kernel"):
        noise_variance_line(probe.noisy, kernel="sobel")


def test_band_weights_are_reported_per_frame_and_described(tiny_user_model):
    from napari_emdenoise.engine import restore
    from napari_emdenoise.engine.lattice import restore_lattice
    from napari_emdenoise.engine.safeguard import describe_band_weights

    probe = lattice_probe(np.random.default_rng(8), size=256, dose=20.0)
    stack = np.stack([probe.noisy, probe.noisy[::-1]])
    reports = []
    out = restore(
        stack, model=tiny_user_model, device="cpu", safeguard=True,
        safeguard_report=lambda i, r: reports.append((i, r)),
    )  # fmt: skip
    assert [i for i, _ in reports] == [0, 1]
    for i, result in reports:
        assert len(result.band_weights) == 5 and result.estimated
        assert all(0.0 <= w <= 1.0 for w in result.band_weights)
        # the lattice pass runs last, on the blend
        expected = restore_lattice(stack[i], result.image)
        np.testing.assert_allclose(out[i], expected, atol=1e-5 * float(np.ptp(expected)))
    text = describe_band_weights([r.band_weights for _, r in reports])
    assert text.startswith("safeguard kept ") and "(median of 2 frames)" in text
    assert describe_band_weights([(0.0, 0.25, 0.5, 0.75, 1.0)]).startswith(
        "safeguard kept 0 / 25 / 50 / 75 / 100 % of the change at < 1/32 / 1/32–1/16"
    )
    with pytest.raises(ValueError, match="5 bands"):
        describe_band_weights([(1.0, 1.0)])


def _despike_and_oversmooth(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return gaussian_filter(median_filter(x, 3), 3.0)


@pytest.mark.parametrize("dose", [2.0, 50.0])
def test_zingers_and_dead_pixels_the_model_removed_stay_removed(dose):
    """A blend weight below 1 must not put back a share of each zinger or dead pixel."""
    rng = np.random.default_rng(7)
    probe = lattice_probe(rng, size=256, width=2.5, dose=dose)
    x = probe.noisy.astype(np.float64)
    spikes = rng.choice(x.size, 120, replace=False)
    x.flat[spikes[:80]] += 300.0 * dose  # zingers
    x.flat[spikes[80:]] = 0.0  # dead pixels
    fx = _despike_and_oversmooth(x)
    res = sure_blend(x, fx, _despike_and_oversmooth, np.random.default_rng(0))
    assert res.weight < 0.9  # the blend does pull towards the input elsewhere
    zingers = spikes[:80]
    leak = (res.image.flat[zingers] - fx.flat[zingers]) / (300.0 * dose)
    assert np.max(np.abs(leak)) < 0.02  # before: (1 − λ) of each zinger came back
    clean_x = probe.noisy.astype(np.float64)
    assert psnr(res.image, probe.clean) >= psnr(clean_x, probe.clean) - 0.1


def test_impulse_mask_finds_spikes_and_their_edges_but_not_noise():
    from napari_emdenoise.engine.safeguard import impulse_mask

    rng = np.random.default_rng(8)
    level = np.full((128, 128), 4.0)
    x = rng.poisson(level).astype(np.float64)
    assert impulse_mask(x, level, 1.0, 0.0).mean() < 1e-3  # noise alone: (almost) nothing
    x[40, 40] += 400.0
    x[40, 41] += 12.0  # a zinger's weaker edge: 6σ, above the 3σ growth threshold
    mask = impulse_mask(x, level, 1.0, 0.0)
    assert mask[40, 40] and mask[40, 41]
    assert not impulse_mask(x, level, 0.0, 0.0).any()  # no noise line: no impulses

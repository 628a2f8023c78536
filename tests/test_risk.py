"""The unbiased risk estimate (engine/risk.py) against the true error of known restorations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.engine.risk import (
    NoiseLine,
    choose_restoration,
    estimate_risk,
)
from napari_emdenoise.evaluation import lattice_probe


def _smooth_scene(rng: np.random.Generator, n: int = 192) -> np.ndarray:
    """A positive image with structure on several scales (counts per pixel at dose 1)."""
    img = ndimage.gaussian_filter(rng.random((n, n)), 3.0)
    img = (img - img.min()) / np.ptp(img)
    yy, xx = np.mgrid[:n, :n]
    return 0.3 + img + 0.5 * (np.sin(xx / 2.5) * np.sin(yy / 3.0)) ** 2


def _gauss(sigma: float):
    return lambda z: ndimage.gaussian_filter(np.asarray(z, dtype=np.float64), sigma)


@pytest.mark.parametrize("dose", [3.0, 30.0])
@pytest.mark.parametrize("sigma", [0.7, 1.5, 3.0])
def test_estimate_is_unbiased_for_gaussian_filters_on_poisson_gaussian_noise(dose, sigma):
    """Over 8 noise draws the estimate's mean error is zero within its standard error."""
    rng = np.random.default_rng(1)
    clean = dose * _smooth_scene(rng, 128)
    read = 0.5
    fn = _gauss(sigma)
    diffs, trues = [], []
    for _ in range(8):
        noisy = rng.poisson(clean) + rng.normal(0.0, read, clean.shape)
        est = estimate_risk(noisy, fn, NoiseLine(1.0, read**2), rng=rng)
        trues.append(float(np.mean((fn(noisy) - clean) ** 2)))
        diffs.append(est.mse - trues[-1])
        # a linear low-pass passes part of the noise: 0 < divergence < noise variance
        assert 0.0 < est.noise_passed < 1.0
    bias, se = np.mean(diffs), np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    assert abs(bias) < 3.5 * se + 0.01 * np.mean(trues)
    # and a single draw is within a few per cent of the noise variance
    assert np.max(np.abs(diffs)) < 0.05 * (clean.mean() + read**2)


def test_identity_and_constant_are_estimated_at_the_noise_and_at_the_signal_spread():
    rng = np.random.default_rng(3)
    clean = 10.0 * _smooth_scene(rng)
    noisy = rng.poisson(clean).astype(np.float64)
    line = NoiseLine(1.0)
    ident = estimate_risk(noisy, lambda z: np.asarray(z, float), line, rng=rng, probes=8)
    # the true error of the raw image is its noise: Poisson, variance = mean
    assert ident.mse == pytest.approx(np.mean((noisy - clean) ** 2), rel=0.03)
    assert ident.noise_passed == pytest.approx(1.0, abs=0.02)
    flat = estimate_risk(noisy, lambda z: np.full(z.shape, np.mean(z)), line, rng=rng)
    assert flat.mse == pytest.approx(np.mean((clean - noisy.mean()) ** 2), rel=0.05)
    assert abs(flat.noise_passed) < 0.01


def test_choice_follows_the_true_error_on_a_lattice():
    probe = lattice_probe(np.random.default_rng(4), size=128, spacing=10.0, width=1.8, dose=5.0)
    candidates = {f"gauss {s}": _gauss(s) for s in (0.4, 1.0, 2.0, 5.0)}
    true = {k: float(np.mean((fn(probe.noisy) - probe.clean) ** 2)) for k, fn in candidates.items()}
    choice = choose_restoration(
        probe.noisy, candidates, NoiseLine(1.0), rng=np.random.default_rng(5)
    )
    assert choice.name == min(true, key=true.get)
    assert list(choice.risks) == list(candidates)
    np.testing.assert_array_equal(choice.output, choice.outputs[choice.name])
    assert "(chosen)" in choice.describe() and choice.name in choice.describe()


def test_fast_scan_correlated_noise_needs_its_correlation():
    rng = np.random.default_rng(6)
    clean = 20.0 * _smooth_scene(rng)
    t = 0.6  # two-tap fast-scan blur: neighbour correlation t / (1 + t²) ≈ 0.44
    white = rng.normal(size=clean.shape)
    colored = (white + t * np.roll(white, 1, axis=-1)) / np.sqrt(1 + t * t)
    noisy = clean + np.sqrt(clean) * colored
    fn = _gauss(1.2)
    true = float(np.mean((fn(noisy) - clean) ** 2))
    rho = t / (1 + t * t)
    right = estimate_risk(noisy, fn, NoiseLine(1.0, correlation=rho), rng=rng, probes=2)
    white_assumed = estimate_risk(noisy, fn, NoiseLine(1.0), rng=rng, probes=2)
    assert right.mse == pytest.approx(true, rel=0.08)
    assert abs(white_assumed.mse - true) > 3 * abs(right.mse - true)


def test_estimate_is_in_image_units():
    """Gain, dark level and read noise in image units: an affine copy scales the error by a²."""
    rng = np.random.default_rng(7)
    counts = rng.poisson(8.0 * _smooth_scene(rng)) + rng.normal(0, 0.5, (192, 192))
    a, o = 3.0, 100.0
    fn = _gauss(1.0)
    est = estimate_risk(counts, fn, NoiseLine(1.0, 0.25), rng=np.random.default_rng(8))
    scaled = estimate_risk(
        a * counts + o, fn, NoiseLine(a, 0.25 * a * a, offset=o), rng=np.random.default_rng(8)
    )
    assert scaled.mse == pytest.approx(a * a * est.mse, rel=1e-6)


def test_noise_line_from_a_fit():
    from napari_emdenoise.noise.fit import fit_noise

    rng = np.random.default_rng(9)
    noisy = rng.poisson(20.0 * _smooth_scene(rng, 256)).astype(np.float64)
    line = NoiseLine.from_fit(fit_noise(noisy, modality="stem"))
    assert line.gain == pytest.approx(1.0, rel=0.1) and line.read_variance >= 0
    assert abs(line.correlation) <= 0.45


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise=NoiseLine(1.0), probes=0), "probes"),
        (dict(noise=NoiseLine(1.0), step=0.0), "step"),
        (dict(noise=NoiseLine(1.0), restored=np.zeros((4, 4))), "shape"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    noise = kwargs.pop("noise")
    with pytest.raises(ValueError, match=match):
        estimate_risk(np.ones((8, 8)), _gauss(1.0), noise, rng=np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    "line",
    [
        dict(gain=0.0),
        dict(gain=np.nan),
        dict(gain=1.0, read_variance=-1.0),
        dict(gain=1.0, correlation=0.6),
    ],
)
def test_bad_noise_lines_are_refused(line):
    with pytest.raises(ValueError):
        NoiseLine(**line)


def test_bad_images_and_no_candidates_are_refused():
    rng = np.random.default_rng(0)
    bad = np.ones((8, 8))
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        estimate_risk(bad, _gauss(1.0), NoiseLine(1.0), rng=rng)
    with pytest.raises(ValueError, match="no candidate"):
        choose_restoration(np.ones((8, 8)), {}, NoiseLine(1.0), rng=rng)


def test_a_central_crop_stands_for_a_large_image():
    probe = lattice_probe(np.random.default_rng(12), size=160, spacing=10.0, width=1.8, dose=5.0)
    candidates = {f"gauss {s}": _gauss(s) for s in (0.4, 1.0, 5.0)}
    calls = []

    def counted(fn, name):
        def run(z):
            calls.append((name, np.shape(z)))
            return fn(z)

        return run

    whole = choose_restoration(
        probe.noisy, candidates, NoiseLine(1.0), rng=np.random.default_rng(5)
    )
    crop = choose_restoration(
        probe.noisy,
        {k: counted(fn, k) for k, fn in candidates.items()},
        NoiseLine(1.0),
        rng=np.random.default_rng(5),
        max_pixels=80 * 80,
    )
    assert whole.region is None and crop.region == (slice(40, 120), slice(40, 120))
    assert crop.name == whole.name
    np.testing.assert_allclose(crop.output, candidates[crop.name](probe.noisy))
    assert all(o.shape == (80, 80) for o in crop.outputs.values())
    # two runs of the crop per candidate, one of the whole image for the chosen one
    assert sorted(shape for _, shape in calls).count((80, 80)) == 6
    assert calls[-1] == (crop.name, (160, 160))


@pytest.mark.parametrize(
    "shape, max_pixels, region",
    [
        ((64, 64), 4096, None),
        ((100, 100), 4900, (slice(15, 85), slice(15, 85))),
        ((5, 64, 64), 4096, (slice(2, 3), slice(0, 64), slice(0, 64))),
        ((4, 200, 50), 5000, (slice(2, 3), slice(50, 150), slice(0, 50))),
        ((64, 10000), 8192, (slice(0, 64), slice(4936, 5064))),
        ((10000, 100), 8192, (slice(4936, 5064), slice(18, 82))),
    ],
)
def test_central_region_shapes(shape, max_pixels, region):
    from napari_emdenoise.engine.risk import central_region

    got = central_region(shape, max_pixels)
    assert got == region
    if got is not None:
        assert np.empty(shape)[got].size <= max_pixels
    with pytest.raises(ValueError, match="at least 4096"):
        central_region(shape, 100)

"""Statistics and contracts of the TEM distortion layers (seed 001, eqs 27–40)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_emdenoise.noise import tem
from napari_emdenoise.noise._masks import random_walk_mask
from napari_emdenoise.noise._params import param_specs
from napari_emdenoise.noise.tem import (
    TEM_LAYERS,
    BlackPixelsParams,
    CameraMTFParams,
    DarkCurrentParams,
    FixedPatternNoiseParams,
    FlickerNoiseParams,
    QuantisationParams,
    ResetNoiseParams,
    ShotNoiseParams,
    ThermalNoiseParams,
    UpperClipParams,
    ZingersParams,
)

LAYERS = {layer.name: layer for layer in TEM_LAYERS}
RANDOM_LAYERS = [
    "shot_noise",
    "fixed_pattern_noise",
    "dark_current",
    "thermal_noise",
    "flicker_noise",
    "reset_noise",
    "black_pixels",
    "zingers",
]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def smooth_image(shape: tuple[int, int] = (96, 80), seed: int = 1) -> np.ndarray:
    """A positive, max-normalised test image with structure at several scales."""
    g = rng(seed)
    x = ndimage.gaussian_filter(g.random(shape), 2.0) + 0.3 * g.random(shape)
    return (x / x.max()).astype(np.float32)


def flat(value: float, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


# -- layer records -------------------------------------------------------------
def test_layers_in_pipeline_order():
    assert [layer.name for layer in TEM_LAYERS] == [
        "camera_mtf",
        "shot_noise",
        "fixed_pattern_noise",
        "dark_current",
        "thermal_noise",
        "flicker_noise",
        "reset_noise",
        "black_pixels",
        "zingers",
        "upper_clip",
        "quantisation",
    ]
    assert [layer.name for layer in TEM_LAYERS if layer.applies_to_target] == ["camera_mtf"]
    for layer in TEM_LAYERS:
        assert layer.equation and layer.title
        for spec in param_specs(layer.params_type):
            assert spec.doc, f"{layer.name}.{spec.name} has no doc"
            assert spec.low is not None and spec.high is not None
            assert spec.low <= spec.default <= spec.high, (layer.name, spec.name)
        layer.params_type().validate()  # defaults are valid


# -- camera MTF (eqs 27–29) --------------------------------------------------------
def _mtf_by_fft_of_mirrored(image: np.ndarray, p: CameraMTFParams) -> np.ndarray:
    """Independent reference: FFT product on the mirror-extended image, radial g."""
    h, w = image.shape
    ext = np.pad(image.astype(np.float64), ((0, h), (0, w)), mode="symmetric")
    v = 2.0 * np.fft.fftfreq(2 * h)[:, None]  # units of Nyquist
    u = 2.0 * np.fft.fftfreq(2 * w)[None, :]
    mtf = tem.radial_mtf(np.hypot(u, v), p.a, p.b, p.c) * np.sinc(u / 2) * np.sinc(v / 2)
    return np.fft.ifft2(np.fft.fft2(ext) * mtf).real[:h, :w]


@pytest.mark.parametrize(
    "p", [CameraMTFParams(), CameraMTFParams(a=1.2, b=0.5, c=0.4), CameraMTFParams(a=0.3)]
)
def test_mtf_is_eq28_applied_with_mirror_boundaries(p):
    image = smooth_image((48, 40))
    out = tem.camera_mtf(image, p, rng())
    np.testing.assert_allclose(out, _mtf_by_fft_of_mirrored(image, p), atol=2e-6)


def test_mtf_cosine_is_scaled_by_mtf_at_its_frequency():
    n, k = 64, 16  # DCT basis cosine of k/(2n) cycles/pixel: u = k/n = 0.25 Nyquist
    cols = np.cos(np.pi * k * (2 * np.arange(n) + 1) / (2 * n))
    image = np.tile(cols, (32, 1)).astype(np.float32)
    p = CameraMTFParams(a=0.6, b=0.7, c=0.1)
    out = tem.camera_mtf(image, p, rng())
    expected = tem.radial_mtf(k / n, p.a, p.b, p.c) * math.sin(math.pi * 0.125) / (math.pi * 0.125)
    np.testing.assert_allclose(out, expected * image, atol=1e-5)
    assert 0.05 < expected < 0.95  # the test image is actually attenuated


def test_mtf_keeps_flat_flat_and_total_intensity():
    p = CameraMTFParams(a=0.5, b=0.3, c=0.08)  # a wide PSF
    np.testing.assert_allclose(tem.camera_mtf(flat(0.7, (50, 64)), p, rng()), 0.7, rtol=1e-5)
    image = smooth_image((64, 50))
    out = tem.camera_mtf(image, p, rng())
    assert out.sum(dtype=np.float64) == pytest.approx(image.sum(dtype=np.float64), rel=1e-5)
    assert np.abs(out - image).max() > 0.01  # and it does blur


def test_mtf_psf_is_isotropic_and_normalised():
    n = 65  # odd: the delta sits exactly at the centre of the mirror symmetry
    delta = np.zeros((n, n), np.float32)
    delta[n // 2, n // 2] = 1.0
    psf = tem.camera_mtf(delta, CameraMTFParams(a=0.6, b=0.6, c=0.15), rng()).astype(np.float64)
    assert psf.sum() == pytest.approx(1.0, rel=1e-5)
    assert psf.max() < 0.5  # spread over several pixels
    np.testing.assert_allclose(psf, psf.T, atol=1e-7)
    np.testing.assert_allclose(psf, psf[::-1, :], atol=1e-7)
    np.testing.assert_allclose(psf, psf[:, ::-1], atol=1e-7)
    r = np.arange(n) - n // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    m_yy, m_xx, m_xy = (psf * yy**2).sum(), (psf * xx**2).sum(), (psf * xx * yy).sum()
    assert m_yy == pytest.approx(m_xx, rel=1e-4)
    assert abs(m_xy) < 1e-4 * m_xx
    # Rotating the PSF by 45° leaves it nearly unchanged (isotropic spread).
    rotated = ndimage.rotate(psf, 45, reshape=False, order=3)
    assert np.abs(rotated - psf).max() < 0.1 * psf.max()


def test_mtf_stack_gets_the_identical_transform_per_slice():
    stack = np.stack([smooth_image((40, 56), seed=s) for s in range(3)])
    p = CameraMTFParams(a=0.4, b=0.9, c=0.2)
    out = tem.camera_mtf(stack, p, rng(0))
    assert out.shape == stack.shape and out.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(out[i], tem.camera_mtf(stack[i], p, rng(i + 7)))
    single = tem.camera_mtf(stack[:1], p, rng())
    assert single.shape == (1, 40, 56)
    np.testing.assert_array_equal(single[0], out[0])


def test_sampled_mtf_is_positive_and_monotone():
    g = np.linspace(0.0, 10.0, 1000)
    flat_topped = 0
    for seed in range(200):
        p = CameraMTFParams.sample(rng(seed))
        mtf = tem.radial_mtf(g, p.a, p.b, p.c)
        assert mtf[0] == pytest.approx(1.0)
        assert np.all(mtf >= 0) and np.all(np.diff(mtf) <= 0)
        flat_topped += p.a > 1
    assert flat_topped > 10  # the range beyond a = 1 is really explored


def test_mtf_rejects_non_monotone_shape():
    assert not tem.mtf_is_monotone(1.5, 0.2, 1.0)
    with pytest.raises(ValueError, match="increasing"):
        CameraMTFParams(a=1.5, b=0.2, c=1.0).validate()
    with pytest.raises(ValueError, match="increasing"):
        tem.camera_mtf(flat(1.0, (8, 8)), CameraMTFParams(a=1.5, b=0.2, c=1.0), rng())


# -- shot noise (eq 30) ----------------------------------------------------------------
@pytest.mark.parametrize("dose", [0.7, 20.0, 500.0])
def test_shot_noise_variance_is_mean_over_alpha(dose):
    mu = 0.5
    out = tem.shot_noise(flat(mu), ShotNoiseParams(dose=dose), rng(3)).astype(np.float64)
    alpha, n = dose / mu, out.size
    lam = alpha * mu
    np.testing.assert_allclose(out * alpha, np.round(out * alpha), atol=1e-3)  # counts / α
    assert abs(out.mean() - mu) < 5 * math.sqrt(mu / alpha / n)
    rel_err = 5 * math.sqrt((1 / lam + 2) / n)  # sampling error of a Poisson variance
    assert out.var() == pytest.approx(mu / alpha, rel=rel_err)


def test_shot_noise_variance_follows_local_intensity():
    image = flat(0.2)
    image[:, 128:] = 0.6  # mean 0.4
    dose = 8.0
    alpha = dose / 0.4
    out = tem.shot_noise(image, ShotNoiseParams(dose=dose), rng(5)).astype(np.float64)
    for x, half in ((0.2, out[:, :128]), (0.6, out[:, 128:])):
        assert half.var() == pytest.approx(
            x / alpha, rel=5 * math.sqrt((1 / (alpha * x) + 2) / half.size)
        )


def test_shot_noise_negative_and_dark_images():
    image = flat(0.5, (32, 32))
    image[:, :8] = -0.3
    out = tem.shot_noise(image, ShotNoiseParams(dose=50.0), rng())
    assert np.all(out[:, :8] == 0) and np.all(out >= 0)
    assert np.all(tem.shot_noise(flat(0.0, (16, 16)), ShotNoiseParams(), rng()) == 0)


@pytest.mark.parametrize("dose", [0.0, -1.0, float("nan"), float("inf")])
def test_shot_noise_rejects_bad_dose(dose):
    with pytest.raises(ValueError, match="dose"):
        tem.shot_noise(flat(0.5, (16, 16)), ShotNoiseParams(dose=dose), rng())
    with pytest.raises(ValueError, match="dose"):
        tem.dark_current(flat(0.5, (16, 16)), DarkCurrentParams(dose=dose), rng())


def test_sample_dose_is_exponential_on_log_scale_and_in_range():
    doses = np.array([tem.sample_dose(rng(s)) for s in range(3000)])
    assert doses.min() >= 0.5 and doses.max() <= 750.0
    # P(t < 1/2) for t ~ Exp(0.5) truncated to [0, 1]; t = 1/2 is the geometric middle.
    expected = (1 - math.exp(-1)) / (1 - math.exp(-2))
    frac = np.mean(doses < math.sqrt(0.5 * 750.0))
    assert frac == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / 3000))
    assert np.mean(doses > 375) > 0.01  # high doses still occur
    with pytest.raises(ValueError):
        tem.sample_dose(rng(), low=-1.0)


# -- fixed-pattern noise (eq 31) -------------------------------------------------------
def test_fixed_pattern_noise_variance_scales_with_x_squared():
    image = flat(0.25)
    image[:, 128:] = 1.0
    sigma = 0.03
    diff = tem.fixed_pattern_noise(image, FixedPatternNoiseParams(sigma=sigma), rng(2)) - image
    lo, hi = diff[:, :128].astype(np.float64), diff[:, 128:].astype(np.float64)
    tol = 5 * math.sqrt(2 / lo.size)
    assert abs(hi.mean()) < 5 * sigma / math.sqrt(hi.size)  # zero-mean gain error
    assert lo.std() == pytest.approx(sigma * 0.25, rel=tol)
    assert hi.std() == pytest.approx(sigma * 1.0, rel=tol)
    assert hi.var() / lo.var() == pytest.approx(16.0, rel=3 * tol)


# -- dark current (eqs 32–33) ----------------------------------------------------------
def test_dark_count_map_lognormal_body_and_hot_pixels():
    mu, sigma = 10.0, 1.0
    body = tem.dark_count_map(
        (256, 256), DarkCurrentParams(dark_mean=mu, dark_std=sigma, hot_fraction=0.0), rng(1)
    ).astype(np.float64)
    n = body.size
    assert body.min() > 0
    assert body.mean() == pytest.approx(mu, abs=5 * sigma / math.sqrt(n))
    assert body.std() == pytest.approx(sigma, rel=0.03)
    s = math.sqrt(math.log1p((sigma / mu) ** 2))  # std of log(body) for a log-normal
    assert np.log(body).std() == pytest.approx(s, rel=5 * math.sqrt(0.5 / n))
    assert ((body - mu) ** 3).mean() > 0  # right-skewed like a log-normal
    frac = 0.01
    dcnu = tem.dark_count_map(
        (256, 256), DarkCurrentParams(dark_mean=mu, dark_std=sigma, hot_fraction=frac), rng(1)
    )
    hot = dcnu >= mu + 5 * sigma
    assert hot.sum() == pytest.approx(frac * n, abs=5 * math.sqrt(frac * n))
    assert dcnu.max() <= mu + 8 * sigma + 1e-4


def test_dark_current_adds_poisson_of_dcnu_in_intensity_units():
    mu_x, dose, dark_mean, dark_std = 0.5, 10.0, 2.0, 1.0
    alpha = dose / mu_x
    p = DarkCurrentParams(dose=dose, dark_mean=dark_mean, dark_std=dark_std, hot_fraction=0.0)
    added = (tem.dark_current(flat(mu_x), p, rng(4)) - mu_x).astype(np.float64)
    n = added.size
    np.testing.assert_allclose(added * alpha, np.round(added * alpha), atol=1e-3)
    var_counts = dark_mean + dark_std**2  # Var P(Λ) = E Λ + Var Λ (law of total variance)
    assert added.mean() == pytest.approx(
        dark_mean / alpha, rel=5 * math.sqrt(var_counts / n) / dark_mean
    )
    kurtosis = ((added - added.mean()) ** 4).mean() / added.var() ** 2
    assert added.var() == pytest.approx(
        var_counts / alpha**2, rel=5 * math.sqrt((kurtosis - 1) / n)
    )


def test_dark_current_needs_positive_signal():
    with pytest.raises(ValueError, match="positive intensity"):
        tem.dark_current(flat(0.0, (16, 16)), DarkCurrentParams(), rng())


# -- readout noise (eqs 34–36) --------------------------------------------------------
def test_thermal_noise_is_white_gaussian_with_sigma():
    sigma = 0.02
    d = (tem.thermal_noise(flat(0.5), ThermalNoiseParams(sigma=sigma), rng()) - 0.5).astype(float)
    assert abs(d.mean()) < 5 * sigma / math.sqrt(d.size)
    assert d.std() == pytest.approx(sigma, rel=5 * math.sqrt(0.5 / d.size))
    lag1 = np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1]
    assert abs(lag1) < 5 / math.sqrt(d.size)


def _radial_power_slope(field: np.ndarray, fmin: float = 0.02, fmax: float = 0.3) -> float:
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(field.shape[0]), np.fft.fftfreq(field.shape[1]),
                              indexing="ij"))  # fmt: skip
    bins = np.geomspace(fmin, fmax, 16)
    idx = np.digitize(f.ravel(), bins)
    centres, means = [], []
    for i in range(1, len(bins)):
        sel = idx == i
        centres.append(f.ravel()[sel].mean())
        means.append(power.ravel()[sel].mean())
    return float(np.polyfit(np.log(centres), np.log(means), 1)[0])


def test_flicker_noise_has_1_over_f_amplitude_and_requested_std():
    sigma = 0.03
    image = smooth_image((256, 256))
    d = (tem.flicker_noise(image, FlickerNoiseParams(sigma=sigma), rng(8)) - image).astype(float)
    assert d.std() == pytest.approx(sigma, rel=1e-3)
    assert abs(d.mean()) < 1e-3 * sigma  # the f = 0 term is removed
    assert _radial_power_slope(d) == pytest.approx(-2.0, abs=0.15)  # power ∝ 1/f²
    white = tem.thermal_noise(flat(0.0), ThermalNoiseParams(sigma=sigma), rng(8))
    assert _radial_power_slope(white) == pytest.approx(0.0, abs=0.15)  # the check discriminates


def test_reset_noise_is_constant_along_rows():
    sigma = 0.02
    image = smooth_image((256, 64))
    d = (tem.reset_noise(image, ResetNoiseParams(sigma=sigma), rng(6)) - image).astype(float)
    assert np.ptp(d, axis=1).max() < 1e-6
    offsets = d[:, 0]
    assert offsets.std() == pytest.approx(sigma, rel=5 * math.sqrt(0.5 / offsets.size))
    assert np.ptp(offsets) > 0


# -- defect masks (eqs 37–38) ----------------------------------------------------------
def test_black_pixels_change_only_masked_pixels():
    image = smooth_image((128, 128)) + 0.1
    p = BlackPixelsParams(n_points=15, max_steps=8, sensitivity=0.05)
    out = tem.black_pixels(image, p, rng(11))
    mask = random_walk_mask(image.shape, p.n_points, p.max_steps, rng(11))
    assert mask.sum() > p.n_points  # regions, not only points
    np.testing.assert_array_equal(out[~mask], image[~mask])
    np.testing.assert_allclose(out[mask], image[mask] * 0.05, rtol=1e-6)
    assert np.array_equal(out != image, mask)


def test_zingers_change_only_masked_pixels():
    image = smooth_image((128, 128))
    p = ZingersParams(n_points=10, max_steps=6, level=2.0)
    out = tem.zingers(image, p, rng(12))
    mask = random_walk_mask(image.shape, p.n_points, p.max_steps, rng(12))
    np.testing.assert_array_equal(out[~mask], image[~mask])
    np.testing.assert_allclose(out[mask], 2.0 * image.max(), rtol=1e-6)
    assert np.array_equal(out != image, mask)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    n_points=st.integers(0, 30),
    max_steps=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_walk_mask_regions(h, w, n_points, max_steps, seed):
    mask = random_walk_mask((h, w), n_points, max_steps, rng(seed))
    assert mask.shape == (h, w) and mask.dtype == bool
    assert (n_points > 0) <= mask.sum() <= n_points * (max_steps + 1)
    _, n_regions = ndimage.label(mask)  # 4-connected walks, clipped at the border:
    assert n_regions <= n_points  # at most one region per point
    np.testing.assert_array_equal(mask, random_walk_mask((h, w), n_points, max_steps, rng(seed)))


@pytest.mark.parametrize(
    "args", [((0, 5), 1, 1), ((5,), 1, 1), ((5, 5), -1, 1), ((5, 5), 1, 2.5), ((5, 5), True, 1)]
)
def test_random_walk_mask_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        random_walk_mask(*args, rng())


# -- upper clip and quantisation (eqs 39–40) ------------------------------------------
@pytest.mark.parametrize("q", [0.9, 0.99])
def test_upper_clip_never_exceeds_threshold(q):
    image = smooth_image((128, 128))
    out = tem.upper_clip(image, UpperClipParams(quantile=q), rng())
    threshold = np.quantile(image, q)
    assert out.max() <= np.float32(threshold)
    below = image < threshold
    np.testing.assert_array_equal(out[below], image[below])
    assert np.mean(~below) == pytest.approx(1 - q, abs=2 / image.size)
    np.testing.assert_array_equal(
        tem.upper_clip(image, UpperClipParams(quantile=1.0), rng()), image
    )


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(1.0, 2000.0), seed=st.integers(0, 1000), scale=st.floats(0.1, 5.0))
def test_quantisation_gives_integer_levels(gain, seed, scale):
    image = (smooth_image((24, 24), seed=seed) * scale - 0.2).astype(np.float32)
    out = tem.quantisation(image, QuantisationParams(gain=gain), rng())
    levels = out.astype(np.float64) * np.float32(gain)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-6 * max(1.0, np.abs(levels).max()))
    assert np.abs(out - image).max() <= 0.5 / gain * (1 + 1e-4) + 1e-6


# -- generic contracts ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_is_deterministic_pure_and_float32(name):
    layer = LAYERS[name]
    image = smooth_image()
    before = image.copy()
    p = layer.params_type()
    a = layer.func(image, p, rng(42))
    b = layer.func(image, p, rng(42))
    np.testing.assert_array_equal(image, before)  # input never modified
    assert a.dtype == np.float32 and a.shape == image.shape and np.all(np.isfinite(a))
    assert a is not image and not np.shares_memory(a, image)
    np.testing.assert_array_equal(a, b)
    if name in RANDOM_LAYERS:
        assert not np.array_equal(a, layer.func(image, p, rng(43)))
    assert not np.array_equal(a, image)  # the default parameters do something


@pytest.mark.parametrize("name", list(LAYERS))
def test_disabled_layer_returns_an_unchanged_copy(name):
    image = smooth_image()
    layer = LAYERS[name]
    out = layer.func(image, layer.params_type(enabled=False), rng())
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[0.1, np.nan], [0.2, 0.3]], np.float32), "NaN"),
        (np.array([[0.1, np.inf], [0.2, 0.3]], np.float32), "NaN or infinite"),
        (np.ones(16, np.float32), "1-D"),
        (np.ones((0, 4), np.float32), "empty"),
        (np.ones((1, 16), np.float32), "too small"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
def test_bad_images_raise_value_error(name, bad, match):
    layer = LAYERS[name]
    with pytest.raises(ValueError, match=match):
        layer.func(bad, layer.params_type(), rng())


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "camera_mtf"])
def test_stacks_are_rejected_by_detector_layers(name):
    layer = LAYERS[name]
    with pytest.raises(ValueError, match="2-D"):
        layer.func(np.ones((2, 8, 8), np.float32), layer.params_type(), rng())


def test_wrong_argument_types_raise_type_error():
    with pytest.raises(TypeError, match="ShotNoiseParams"):
        tem.shot_noise(flat(0.5, (8, 8)), ThermalNoiseParams(), rng())
    with pytest.raises(TypeError, match="Generator"):
        tem.thermal_noise(flat(0.5, (8, 8)), ThermalNoiseParams(), 0)


def test_integer_images_are_accepted_as_float():
    image = (smooth_image() * 200).astype(np.uint16)
    out = tem.shot_noise(image, ShotNoiseParams(dose=5.0), rng())
    assert out.dtype == np.float32 and abs(out.mean() - image.mean()) < 0.05 * image.mean()


@pytest.mark.parametrize(
    "params",
    [
        BlackPixelsParams(n_points=2.5),
        BlackPixelsParams(n_points=-1),
        ZingersParams(max_steps=True),
        ThermalNoiseParams(sigma=-0.1),
        ThermalNoiseParams(sigma="large"),
        UpperClipParams(quantile=1.5),
        QuantisationParams(gain=0.0),
        FixedPatternNoiseParams(enabled="yes"),
    ],
)
def test_invalid_params_raise_value_error(params):
    with pytest.raises(ValueError, match=type(params).__name__):
        params.validate()


@pytest.mark.parametrize("layer", TEM_LAYERS, ids=lambda layer: layer.name)
def test_sample_returns_valid_params_with_occurrence(layer):
    cls = layer.params_type
    draws = [cls.sample(rng(seed)) for seed in range(300)]
    specs = param_specs(cls)
    for p in draws:
        assert isinstance(p, cls)
        p.validate()
        for spec in specs:
            value = getattr(p, spec.name)
            assert spec.low <= value <= spec.high, (spec.name, value)
            if spec.type is int:
                assert isinstance(value, int)
        assert cls.from_dict(p.to_dict()) == p
    occ = cls.occurrence
    frac = np.mean([p.enabled for p in draws])
    assert frac == pytest.approx(occ, abs=5 * math.sqrt(occ * (1 - occ) / 300) + 1e-9)
    assert cls.sample(rng(9)) == cls.sample(rng(9))
    # Sampled parameters run on an image.
    image = smooth_image((32, 32))
    out = layer.func(image, draws[0].replace(enabled=True), rng())
    assert np.all(np.isfinite(out))

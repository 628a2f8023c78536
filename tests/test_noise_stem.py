"""S(T)EM distortion layers (seed 001, eqs 41–55): statistics and behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from napari_emdenoise.noise import stem, tem
from napari_emdenoise.noise.stem import (
    STEM_LAYERS,
    BlackPixelsParams,
    DetectorNoiseParams,
    FastScanBlurParams,
    RowLinesParams,
    ScanJitterParams,
    ZingersParams,
    apply_scan_displacements,
    ar1_series,
    black_pixels,
    detector_noise,
    fast_scan_blur,
    fast_scan_psf,
    pmt_sigma,
    readout_psf_norm,
    row_lines,
    scan_jitter,
    zingers,
)

# S(T)EM-specific layers (scan jitter lives in noise/scan_jitter.py, re-exported by stem).
OWN_LAYERS = [layer for layer in STEM_LAYERS if layer.func.__module__ != tem.__name__]


def _textured(shape=(64, 80), seed=0) -> np.ndarray:
    """A positive, non-trivial test image in [0.1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = 0.55 + 0.3 * np.sin(xx / 3.1) * np.cos(yy / 4.3) + 0.1 * rng.random(shape)
    return (img / img.max()).astype(np.float32)


def _row_phase_shift(img: np.ndarray, period: float, cols: slice) -> np.ndarray:
    """Per-row shift d of rows that read sin(2π(c + d)/period), in pixels."""
    c = np.arange(img.shape[1])[cols]
    z = (img[:, cols] * np.exp(-2j * np.pi * c / period)).sum(axis=1)
    phase = np.angle(z) + np.pi / 2
    return (phase * period / (2 * np.pi) + period / 2) % period - period / 2


# ---------------------------------------------------------------------------
# layer table
# ---------------------------------------------------------------------------
def test_layers_are_in_paper_order_and_reuse_the_tem_clip_and_quantisation():
    assert [layer.name for layer in STEM_LAYERS] == [
        "scan_jitter",
        "detector_noise",
        "fast_scan_blur",
        "row_lines",
        "black_pixels",
        "zingers",
        "upper_clip",
        "quantisation",
    ]
    assert [layer.equation for layer in STEM_LAYERS] == [
        "41-42",
        "43-46",
        "47-50",
        "51",
        "52",
        "53",
        "54",
        "55",
    ]
    by_name = {layer.name: layer for layer in STEM_LAYERS}
    assert by_name["upper_clip"].func is tem.upper_clip
    assert by_name["upper_clip"].params_type is tem.UpperClipParams
    assert by_name["quantisation"].func is tem.quantisation
    assert by_name["quantisation"].params_type is tem.QuantisationParams
    assert not any(layer.applies_to_target for layer in STEM_LAYERS)


@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_params_defaults_validate_and_round_trip(layer):
    p = layer.params_type().validate()
    assert layer.params_type.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_sampled_params_are_valid_and_the_layer_runs_on_them(layer):
    img = _textured()
    for seed in range(15):
        p = layer.params_type.sample(np.random.default_rng(seed))
        assert p.validate() is p
        out = layer.func(img, p, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == img.shape
        assert np.isfinite(out).all()


@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_deterministic_new_array_and_input_untouched(layer):
    img = _textured()
    before = img.copy()
    p = layer.params_type()
    if isinstance(p, (BlackPixelsParams, ZingersParams)):
        p = p.replace(density=5e-3)
    a = layer.func(img, p, np.random.default_rng(7))
    b = layer.func(img, p, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(img, before)
    assert a is not img and not np.shares_memory(a, img)
    assert not np.array_equal(a, img)  # the default settings visibly distort
    if layer.name != "fast_scan_blur":  # the only deterministic one
        c = layer.func(img, p, np.random.default_rng(8))
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_disabled_layer_is_identity_and_types_are_checked(layer):
    img = _textured()
    off = layer.func(img, layer.params_type(enabled=False), np.random.default_rng(0))
    np.testing.assert_array_equal(off, img)
    assert off is not img
    other = next(p for p in OWN_LAYERS if p is not layer).params_type()
    with pytest.raises(TypeError):
        layer.func(img, other, np.random.default_rng(0))
    with pytest.raises(TypeError):
        layer.func(img, layer.params_type(), 0)


BAD_IMAGES = {
    "nan": np.full((16, 16), np.nan, np.float32),
    "inf": np.pad(np.full((1, 1), np.inf), 8),
    "3d": np.zeros((2, 16, 16), np.float32),
    "1d": np.zeros(16, np.float32),
    "empty": np.zeros((0, 16), np.float32),
    "tiny": np.ones((1, 16), np.float32),
    "strings": np.full((16, 16), "a"),
}


@pytest.mark.parametrize("bad", list(BAD_IMAGES), ids=str)
@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_bad_images_raise_value_error(layer, bad):
    with pytest.raises(ValueError):
        layer.func(BAD_IMAGES[bad], layer.params_type(), np.random.default_rng(0))


@pytest.mark.parametrize("layer", OWN_LAYERS, ids=lambda layer: layer.name)
def test_integer_images_are_accepted_as_float32(layer):
    image = np.round(_textured((32, 40)) * 200).astype(np.uint8)
    expected = layer.func(image.astype(np.float32), layer.params_type(), np.random.default_rng(3))
    out = layer.func(image, layer.params_type(), np.random.default_rng(3))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "params",
    [
        ScanJitterParams(phi_x=1.0),
        ScanJitterParams(sigma_y=-0.1),
        ScanJitterParams(pixel_size=0.0),
        ScanJitterParams(mode="z"),
        DetectorNoiseParams(dose=0.0),
        DetectorNoiseParams(dose=-5.0),
        DetectorNoiseParams(sigma_pmt=float("nan")),
        FastScanBlurParams(gamma=1.0),
        FastScanBlurParams(theta=3.0),
        RowLinesParams(factor_min=2.0, factor_max=1.0),
        BlackPixelsParams(max_length=0),
        ZingersParams(amplitude_min=3.0, amplitude_max=1.0),
    ],
    ids=repr,
)
def test_bad_params_raise_value_error(params):
    layer = next(layer for layer in STEM_LAYERS if isinstance(params, layer.params_type))
    with pytest.raises(ValueError):
        layer.func(_textured(), params, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# scan jitter, eqs 41-42
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.0, 0.35, 0.7])
def test_ar1_series_has_stationary_std_and_lag1_correlation_phi(phi):
    sigma, n = 0.3, 200_000
    d = ar1_series(n, sigma, phi, np.random.default_rng(1))
    assert d.shape == (n,)
    expected_std = sigma / math.sqrt(1 - phi**2)
    assert d.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(d.mean()) < 5 * expected_std * math.sqrt((1 + phi) / (1 - phi) / n)
    lag1 = np.corrcoef(d[:-1], d[1:])[0, 1]
    assert lag1 == pytest.approx(phi, abs=0.01)


def test_ar1_series_starts_stationary_yule_walker():
    # The first term already has the stationary std sigma/sqrt(1-phi^2) (eq 41, k = 1).
    sigma, phi = 1.0, 0.6
    first = np.array([ar1_series(3, sigma, phi, np.random.default_rng(s))[0] for s in range(3000)])
    assert first.std() == pytest.approx(sigma / math.sqrt(1 - phi**2), rel=0.06)


def test_ar1_series_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    for args in [(0, 1.0, 0.5), (10, -1.0, 0.5), (10, 1.0, 1.0), (10, 1.0, -0.1)]:
        with pytest.raises(ValueError):
            ar1_series(*args, rng)


def test_integer_displacements_move_whole_rows_with_reflect_boundaries():
    img = np.random.default_rng(0).random((24, 40)).astype(np.float32)
    k = np.random.default_rng(1).integers(-6, 7, 24)
    out_x = apply_scan_displacements(img, dx=k.astype(float))
    for r in range(24):
        idx = stem._reflect_index(np.arange(40) + k[r], 40)
        np.testing.assert_allclose(out_x[r], img[r, idx], atol=1e-6)
    out_y = apply_scan_displacements(img, dy=k.astype(float))
    rows = stem._reflect_index(np.arange(24) + k, 24)
    np.testing.assert_allclose(out_y, img[rows], atol=1e-6)


def test_huge_displacements_fold_back_by_reflection():
    img = np.random.default_rng(0).random((8, 10)).astype(np.float32)
    k = np.array([0, 1, -3, 20, 21, -41, 1_000_000, -999_999])  # reflect has period 2W = 20
    out = apply_scan_displacements(img, dx=k.astype(float))
    for r in range(8):
        np.testing.assert_allclose(out[r], img[r, stem._reflect_index(np.arange(10) + k[r], 10)])
    np.testing.assert_allclose(out[3], img[3, stem._reflect_index(np.arange(10), 10)])


def test_subpixel_x_displacement_follows_a_smooth_profile():
    period = 16.0
    c = np.arange(96)
    img = np.tile(0.5 + 0.4 * np.sin(2 * np.pi * c / period), (32, 1)).astype(np.float32)
    dx = np.linspace(-2.3, 2.7, 32)
    out = apply_scan_displacements(img, dx=dx)
    expected = 0.5 + 0.4 * np.sin(2 * np.pi * (c[None, :] + dx[:, None]) / period)
    np.testing.assert_allclose(out[:, 8:-8], expected[:, 8:-8], atol=5e-3)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.0, 30.0),
    level=st.floats(-2.0, 2.0),
)
def test_displacements_preserve_constant_images(seed, scale, level):
    rng = np.random.default_rng(seed)
    img = np.full((12, 20), level, np.float32)
    dx, dy = rng.normal(0, scale, 12), rng.normal(0, scale, 12)
    out = apply_scan_displacements(img, dx=dx, dy=dy)
    np.testing.assert_allclose(out, level, atol=1e-5 * max(1.0, abs(level)))


def test_apply_scan_displacements_checks_the_displacements():
    img = _textured((16, 16))
    with pytest.raises(ValueError):
        apply_scan_displacements(img, dx=np.zeros(15))
    with pytest.raises(ValueError):
        apply_scan_displacements(img, dy=np.full(16, np.nan))


def test_x_jitter_moves_pixels_only_along_x():
    yy, xx = np.mgrid[0:64, 0:64]
    rows_only = (0.5 + 0.4 * np.sin(yy / 2.0)).astype(np.float32)  # constant along x
    cols_only = (0.5 + 0.4 * np.sin(xx / 2.0)).astype(np.float32)  # constant along y
    p = ScanJitterParams(mode="x", sigma_x=0.3, phi_x=0.5, pixel_size=0.1)
    np.testing.assert_allclose(
        scan_jitter(rows_only, p, np.random.default_rng(0)), rows_only, atol=1e-6
    )
    out = scan_jitter(cols_only, p, np.random.default_rng(0))
    assert np.abs(out - cols_only).max() > 0.1  # rows were shifted sideways ...
    np.testing.assert_allclose(out.mean(axis=1), cols_only.mean(axis=1), atol=0.05)


def test_y_jitter_moves_pixels_only_along_y():
    yy, xx = np.mgrid[0:64, 0:64]
    rows_only = (0.5 + 0.4 * np.sin(yy / 2.0)).astype(np.float32)
    cols_only = (0.5 + 0.4 * np.sin(xx / 2.0)).astype(np.float32)
    p = ScanJitterParams(mode="y", sigma_y=0.3, phi_y=0.5, pixel_size=0.1)
    np.testing.assert_allclose(
        scan_jitter(cols_only, p, np.random.default_rng(0)), cols_only, atol=1e-6
    )
    out = scan_jitter(rows_only, p, np.random.default_rng(0))
    assert np.abs(out - rows_only).max() > 0.1
    # every output row is still constant along x: whole scan lines were displaced
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-6)


def test_xy_jitter_moves_along_both_axes():
    yy, xx = np.mgrid[0:64, 0:64]
    rows_only = (0.5 + 0.4 * np.sin(yy / 2.0)).astype(np.float32)
    cols_only = (0.5 + 0.4 * np.sin(xx / 2.0)).astype(np.float32)
    p = ScanJitterParams(mode="xy", sigma_x=0.3, sigma_y=0.3, pixel_size=0.1)
    for img in (rows_only, cols_only):
        assert np.abs(scan_jitter(img, p, np.random.default_rng(0)) - img).max() > 0.1


def test_x_jitter_displacements_have_the_ar1_statistics_in_pixels():
    period = 16.0
    c = np.arange(96)
    img = np.tile(0.5 + 0.4 * np.sin(2 * np.pi * c / period), (256, 1)).astype(np.float32)
    sigma_a, phi, px = 0.12, 0.5, 0.1  # innovations 1.2 px, stationary std 1.386 px
    p = ScanJitterParams(mode="x", sigma_x=sigma_a, phi_x=phi, pixel_size=px)
    shifts = _row_phase_shift(scan_jitter(img, p, np.random.default_rng(3)), period, slice(16, 80))
    expected = ar1_series(256, sigma_a / px, phi, np.random.default_rng(3))
    np.testing.assert_allclose(shifts, expected, atol=0.03)  # the same draws, in pixels
    assert shifts.std() == pytest.approx(sigma_a / px / math.sqrt(1 - phi**2), rel=0.25)
    assert np.corrcoef(shifts[:-1], shifts[1:])[0, 1] == pytest.approx(phi, abs=0.2)


def test_jitter_sampling_follows_the_paper_probabilities():
    draws = [ScanJitterParams.sample(np.random.default_rng(s)) for s in range(2000)]
    assert np.mean([d.enabled for d in draws]) == pytest.approx(0.9, abs=0.03)
    modes = np.array([d.mode for d in draws])
    for mode, prob in (("x", 0.25), ("y", 0.25), ("xy", 0.5)):
        assert np.mean(modes == mode) == pytest.approx(prob, abs=0.04)
    sig = np.array([d.sigma_x for d in draws])
    phi = np.array([d.phi_y for d in draws])
    assert sig.min() >= 0.0025 and sig.max() <= 0.8 and sig.mean() == pytest.approx(0.40, abs=0.03)
    assert phi.min() >= 0 and phi.max() <= 0.7


# ---------------------------------------------------------------------------
# detector noise, eqs 43-46
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("dose", "sigma_pmt"), [(20.0, 1.5), (2.0, 0.0), (300.0, 0.5)])
def test_detector_noise_variance_is_poisson_plus_pmt(dose, sigma_pmt):
    level = 0.5
    img = np.full((256, 256), level, np.float32)
    out = detector_noise(
        img, DetectorNoiseParams(dose=dose, sigma_pmt=sigma_pmt), np.random.default_rng(2)
    )
    alpha = dose / level
    var = level / alpha + (sigma_pmt / alpha) ** 2
    n = img.size
    assert out.mean() == pytest.approx(level, abs=5 * math.sqrt(var / n))
    assert out.var() == pytest.approx(var, rel=0.04)


@pytest.mark.parametrize("spread", [0.5, 1.0])
def test_unequal_pulses_add_their_spread_to_the_variance_and_fill_the_counting_gaps(spread):
    level, dose = 0.5, 3.0
    img = np.full((256, 256), level, np.float32)
    params = DetectorNoiseParams(dose=dose, sigma_pmt=0.0, pulse_spread=spread)
    out = detector_noise(img, params, np.random.default_rng(3))
    alpha = dose / level
    assert out.mean() == pytest.approx(level, rel=0.01)
    assert out.var() == pytest.approx((1 + spread**2) * level / alpha, rel=0.04)
    counts = out * alpha
    assert np.mean(counts == 0) == pytest.approx(math.exp(-dose), rel=0.1)  # no electron: 0
    off_level = np.abs(counts - np.round(counts)) > 0.05
    assert off_level[counts > 0].mean() > 0.8  # not counting levels any more


def test_pulse_heights_are_exact_in_distribution_and_refuse_a_bad_spread():
    from napari_emdenoise.noise.stem import pulse_heights

    n = np.full(200_000, 4.0, np.float32)
    h = pulse_heights(n, 1.0, np.random.default_rng(0))  # sum of 4 exponentials: Gamma(4, 1)
    assert h.mean() == pytest.approx(4.0, rel=0.01) and h.var() == pytest.approx(4.0, rel=0.03)
    assert np.mean(h < 1.0) == pytest.approx(1 - math.exp(-1) * (1 + 1 + 1 / 2 + 1 / 6), rel=0.03)
    assert (pulse_heights(np.zeros(5), 0.7, np.random.default_rng(0)) == 0).all()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="pulse spread"):
            pulse_heights(n, bad, np.random.default_rng(0))


def test_zero_pulse_spread_is_the_papers_model_draw_for_draw():
    img = _textured((64, 64))
    a = detector_noise(img, DetectorNoiseParams(dose=5.0), np.random.default_rng(7))
    b = detector_noise(
        img, DetectorNoiseParams(dose=5.0, pulse_spread=0.0), np.random.default_rng(7)
    )
    np.testing.assert_array_equal(a, b)


def test_detector_noise_scales_with_the_image_mean_and_counts_are_integers():
    # alpha = dose / mean(x): a brighter region gets more counts, variance = x / alpha.
    img = np.full((128, 256), 0.2, np.float32)
    img[:, 128:] = 0.6  # mean 0.4
    dose = 10.0
    alpha = dose / 0.4
    out = detector_noise(
        img, DetectorNoiseParams(dose=dose, sigma_pmt=0.0), np.random.default_rng(4)
    )
    counts = out * alpha
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # P(alpha x) / alpha
    for sl, x in ((np.s_[:, :128], 0.2), (np.s_[:, 128:], 0.6)):
        assert out[sl].mean() == pytest.approx(x, rel=0.02)
        assert out[sl].var() == pytest.approx(x / alpha, rel=0.05)


def test_detector_noise_lower_dose_is_noisier():
    img = _textured((128, 128))
    errs = [
        np.abs(
            detector_noise(img, DetectorNoiseParams(dose=d), np.random.default_rng(0)) - img
        ).mean()
        for d in (1.0, 10.0, 100.0, 1000.0)
    ]
    assert all(a > b for a, b in zip(errs[:-1], errs[1:], strict=True))


def test_detector_noise_rejects_a_black_image():
    with pytest.raises(ValueError, match="positive mean"):
        detector_noise(
            np.zeros((16, 16), np.float32), DetectorNoiseParams(), np.random.default_rng(0)
        )


def test_dose_is_sampled_like_the_tem_dose_favouring_low_doses():
    draws = [DetectorNoiseParams.sample(np.random.default_rng(s)) for s in range(3000)]
    doses = np.array([d.dose for d in draws])
    assert all(d.enabled for d in draws)
    assert doses.min() >= 0.5 and doses.max() <= 750 and doses.max() > 300
    # truncated exponential (scale 0.5) on the log-dose axis: P(t < 1/2) = (1 - e^-1)/(1 - e^-2)
    below_geometric_middle = np.mean(doses < math.sqrt(0.5 * 750))
    assert below_geometric_middle == pytest.approx(
        (1 - math.exp(-1)) / (1 - math.exp(-2)), abs=0.03
    )


def test_pmt_sigma_implements_eq_44():
    m_c, eta, gain, delta, delta_c = 100.0, 0.2, 1e6, 5.0, 10.0
    rel = math.sqrt((1 - eta + 1 / (delta - 1)) / (m_c * eta) + delta_c**2 / m_c**2)
    assert rel == pytest.approx(math.sqrt(1.05 / 20 + 0.01))
    assert pmt_sigma(m_c, eta, gain, delta, delta_c) == pytest.approx(m_c * eta * gain * rel)
    assert pmt_sigma(m_c, eta, gain, delta, delta_c, per_electron=True) == pytest.approx(rel)
    # ideal photocathode, no photon-number spread: sigma = G sqrt(m_c / (delta - 1))
    assert pmt_sigma(50.0, 1.0, 3.0, 3.0, 0.0) == pytest.approx(3.0 * math.sqrt(50.0 / 2.0))
    assert pmt_sigma(100, 0.2, 2e6, 5, 10) == pytest.approx(2 * pmt_sigma(100, 0.2, 1e6, 5, 10))
    for bad in [(0, 0.2, 1, 5, 1), (100, 0, 1, 5, 1), (100, 1.2, 1, 5, 1), (100, 0.2, 1, 1, 1)]:
        with pytest.raises(ValueError):
            pmt_sigma(*bad)


# ---------------------------------------------------------------------------
# fast-scan blur, eqs 47-50
# ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(
    beta=st.floats(0.05, 20.0),
    gamma=st.floats(2.0, 100.0),
    theta=st.floats(0.0, math.pi / 2),
)
def test_readout_psf_normalisation_makes_eq_49_integrate_to_one(beta, gamma, theta):
    a = readout_psf_norm(beta, gamma, theta)

    def psf(u):
        return a * math.exp(-u / beta) * math.sin(2 * math.pi * u / gamma + theta)

    # integrate period by period (the integrand oscillates) up to 40 decay lengths
    edges = np.arange(0.0, 40 * beta + gamma, gamma / 2)
    total = sum(quad(psf, lo, hi)[0] for lo, hi in zip(edges[:-1], edges[1:], strict=True))
    assert total == pytest.approx(1.0, abs=1e-6)


def test_readout_psf_norm_rejects_unnormalisable_phases():
    with pytest.raises(ValueError):
        readout_psf_norm(1.0, 10.0, -1.5)
    with pytest.raises(ValueError):
        readout_psf_norm(0.0, 10.0, 0.5)


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.floats(0.5, 6.0),
    beta=st.floats(0.3, 3.0),
    gamma=st.floats(4.0, 24.0),
    theta=st.floats(0.0, math.pi / 2),
)
def test_fast_scan_kernel_sums_to_one_and_decays(alpha, beta, gamma, theta):
    k = fast_scan_psf(FastScanBlurParams(alpha=alpha, beta=beta, gamma=gamma, theta=theta))
    assert k.ndim == 1 and 1 <= k.size <= 4096
    assert k.sum() == pytest.approx(1.0, abs=1e-9)
    # each factor is cut where it falls below 1e-4 of its peak: their convolution ends
    # as small, and its last samples hold a negligible part of the mass
    assert np.abs(k[-1]) < 1e-4 * np.abs(k).max()
    assert np.abs(k[-5:]).sum() < 2e-3 * np.abs(k).sum()


def test_wider_detector_psf_blurs_more():
    def spread(alpha):
        k = fast_scan_psf(FastScanBlurParams(alpha=alpha, beta=0.3, gamma=24, theta=math.pi / 2))
        u = np.arange(k.size)
        return (k * u).sum()  # mean lag in pixels

    lags = [spread(a) for a in (0.5, 2.0, 6.0)]
    assert lags[0] < lags[1] < lags[2]


def test_fast_scan_blur_of_a_point_smears_only_to_the_right_in_its_row():
    img = np.zeros((32, 128), np.float32)
    r0, c0 = 11, 3  # close to the row start: the fly-back padding must not leak it
    img[r0, c0] = 1.0
    p = FastScanBlurParams()
    k = fast_scan_psf(p)
    out = fast_scan_blur(img, p, np.random.default_rng(0))
    others = np.delete(out, r0, axis=0)
    assert np.abs(others).max() < 1e-6  # no other scan line is touched
    assert np.abs(out[r0, :c0]).max() < 1e-6  # causal: nothing before the pixel
    n = min(k.size, 128 - c0)
    np.testing.assert_allclose(out[r0, c0 : c0 + n], k[:n], atol=1e-6)
    assert out[r0, c0 + 1 :].sum() > 0.3  # a visible tail after it
    assert out[r0].sum() == pytest.approx(1.0, abs=1e-3)


def test_fast_scan_blur_damps_only_horizontal_frequencies():
    yy, xx = np.mgrid[0:64, 0:64]
    horizontal_stripes = (0.5 + 0.5 * (yy % 2)).astype(np.float32)  # Nyquist along y
    vertical_stripes = (0.5 + 0.5 * (xx % 2)).astype(np.float32)  # Nyquist along x
    p = FastScanBlurParams(alpha=3.0)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(
        fast_scan_blur(horizontal_stripes, p, rng), horizontal_stripes, atol=1e-5
    )
    out = fast_scan_blur(vertical_stripes, p, rng)
    assert out[:, 16:48].std() < 0.5 * vertical_stripes.std()
    assert out.mean() == pytest.approx(vertical_stripes.mean(), abs=0.01)


# ---------------------------------------------------------------------------
# row lines, eq 51
# ---------------------------------------------------------------------------
def test_row_lines_replace_one_segment_by_its_scaled_mean():
    img = np.random.default_rng(0).random((48, 64)).astype(np.float32) + 0.1
    p = RowLinesParams(n_lines=1, max_length=0.5)
    ratios = []
    for seed in range(60):
        out = row_lines(img, p, np.random.default_rng(seed))
        changed = out != img
        rows = np.nonzero(changed.any(axis=1))[0]
        assert rows.size == 1  # a single scan line
        cols = np.nonzero(changed[rows[0]])[0]
        assert cols.size <= 32 and np.all(np.diff(cols) == 1)  # one contiguous segment
        seg = out[rows[0], cols[0] : cols[-1] + 1]
        assert np.all(seg == seg[0])
        ratios.append(seg[0] / img[rows[0], cols[0] : cols[-1] + 1].mean())
    ratios = np.array(ratios)
    assert ratios.min() >= 0.5 - 1e-5 and ratios.max() <= 1.5 + 1e-5
    assert ratios.mean() == pytest.approx(1.0, abs=0.1)
    assert ratios.std() == pytest.approx(1 / math.sqrt(12), rel=0.3)  # uniform on [0.5, 1.5]


def test_row_lines_with_zero_lines_is_identity():
    img = _textured()
    np.testing.assert_array_equal(
        row_lines(img, RowLinesParams(n_lines=0), np.random.default_rng(0)), img
    )


# ---------------------------------------------------------------------------
# black pixels and zingers, eqs 52-53
# ---------------------------------------------------------------------------
def _components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    return [np.nonzero(labels == i) for i in range(1, n + 1)]


def test_black_pixels_darken_only_masked_pixels_in_short_horizontal_streaks():
    img = np.random.default_rng(1).uniform(0.5, 1.0, (256, 256)).astype(np.float32)
    p = BlackPixelsParams(density=5e-4, max_length=4, max_sensitivity=0.1)
    out = black_pixels(img, p, np.random.default_rng(2))
    changed = out != img
    ratio = out[changed] / img[changed]
    assert ratio.min() >= 0 and ratio.max() <= 0.1 + 1e-6
    expected_points = 5e-4 * img.size  # ~33
    comps = _components(changed)
    assert abs(len(comps) - expected_points) < 5 * math.sqrt(expected_points)
    for rr, cc in comps:
        assert np.all(rr == rr[0])  # along the scan direction only
        assert cc.size <= 2 * 4  # at most two overlapping streaks


def test_black_pixel_count_matches_density():
    img = np.full((128, 128), 0.5, np.float32)
    p = BlackPixelsParams(density=2e-3, max_length=1, max_sensitivity=0.0)
    counts = [int((black_pixels(img, p, np.random.default_rng(s)) == 0).sum()) for s in range(20)]
    assert np.mean(counts) == pytest.approx(2e-3 * img.size, rel=0.1)


def test_zingers_brighten_only_masked_pixels_by_the_amplitude():
    img = np.random.default_rng(3).uniform(0.0, 0.5, (256, 256)).astype(np.float32)
    img[:64] = -0.05  # negative pixels (after detector noise) still become bright
    p = ZingersParams(density=3e-4, max_length=3, amplitude_min=0.8, amplitude_max=1.6)
    out = zingers(img, p, np.random.default_rng(4))
    changed = out != img
    added = out[changed] - img[changed]
    assert changed.sum() > 0
    assert added.min() >= 0.8 - 1e-5 and added.max() <= 2 * 1.6 + 1e-5  # two may overlap
    assert np.median(added) <= 1.6 + 1e-5
    top = changed[:64]
    assert top.any() and out[:64][top].min() > 0.7
    for rr, _ in _components(changed):
        assert np.all(rr == rr[0])


# ---------------------------------------------------------------------------
# the whole S(T)EM chain
# ---------------------------------------------------------------------------
def test_full_chain_with_sampled_params_gives_finite_float32():
    img = _textured((96, 96))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x = img
        for layer in STEM_LAYERS:
            p = layer.params_type.sample(rng)
            if p.enabled:
                x = layer.func(x, p, rng)
        assert x.dtype == np.float32 and x.shape == img.shape and np.isfinite(x).all()

"""The distortion pipelines as a whole: API, stages, determinism, settings files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_emdenoise.noise.pipeline import (
    MODALITIES,
    NoiseParams,
    distort,
    layers_for,
    make_pair,
    sample_params,
)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:80].astype(np.float32)
    img = 0.2 + 0.8 * (0.5 + 0.5 * np.cos(2 * np.pi * xx / 7.0) * np.cos(2 * np.pi * yy / 9.0))
    return (img / img.max()).astype(np.float32)


@pytest.mark.parametrize("modality", MODALITIES)
def test_distort_returns_float32_same_shape_and_changes_the_image(clean, modality):
    out = distort(clean, modality, rng=0)
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert np.isfinite(out).all()
    assert np.abs(out - clean).mean() > 1e-3


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_same_output_and_input_untouched(clean, modality):
    before = clean.copy()
    a = distort(clean, modality, rng=np.random.default_rng(3))
    b = distort(clean, modality, rng=np.random.default_rng(3))
    c = distort(clean, modality, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(clean, before)


@pytest.mark.parametrize("modality", MODALITIES)
def test_stages_are_the_enabled_layers_in_order_and_end_at_the_output(clean, modality):
    params = sample_params(modality, np.random.default_rng(11))
    out, stages = distort(clean, modality, params, rng=5, return_stages=True)
    enabled = [layer.name for layer in layers_for(modality) if params[layer.name].enabled]
    assert [name for name, _ in stages] == enabled
    if stages:
        np.testing.assert_array_equal(stages[-1][1], out)
    # return_stages must not change the result
    np.testing.assert_array_equal(distort(clean, modality, params, rng=5), out)


def test_switching_a_layer_off_leaves_the_other_layers_draws_unchanged(clean):
    params = NoiseParams.default("tem")
    on = dict(distort(clean, "tem", params, rng=9, return_stages=True)[1])
    names = [n for n in on]
    victim = names[-1]
    off_params = params.replace_layer(victim, params[victim].replace(enabled=False))
    off = dict(distort(clean, "tem", off_params, rng=9, return_stages=True)[1])
    assert victim not in off
    for name in names[:-1]:
        np.testing.assert_array_equal(on[name], off[name])


def test_all_layers_disabled_is_identity(clean):
    params = NoiseParams.default("stem")
    for layer in layers_for("stem"):
        params = params.replace_layer(layer.name, params[layer.name].replace(enabled=False))
    out, stages = distort(clean, "stem", params, rng=0, return_stages=True)
    assert stages == []
    np.testing.assert_array_equal(out, clean)


def test_make_pair_distorted_matches_distort(clean):
    params = sample_params("tem", 2)
    target, x = make_pair(clean, "tem", params, rng=7)
    np.testing.assert_array_equal(x, distort(clean, "tem", params, rng=7))
    assert target.shape == clean.shape and target.dtype == np.float32


def test_sem_has_no_black_pixels():
    assert "black_pixels" not in [layer.name for layer in layers_for("sem")]
    assert "black_pixels" in [layer.name for layer in layers_for("stem")]


@pytest.mark.parametrize("modality", MODALITIES)
def test_sample_params_is_valid_deterministic_and_varied(modality):
    draws = [sample_params(modality, np.random.default_rng(s)) for s in range(40)]
    for p in draws:
        p.validate()
    assert sample_params(modality, 5).to_dict() == sample_params(modality, 5).to_dict()
    # occurrence probabilities: some layer is on in one draw and off in another
    flags = np.array([[p[n].enabled for n in p.layers] for p in draws])
    assert (flags.any(axis=0) & ~flags.all(axis=0)).any()


@pytest.mark.parametrize("modality", MODALITIES)
def test_settings_json_round_trip(tmp_path, modality):
    p = sample_params(modality, 3)
    path = p.save(tmp_path / "settings.json")
    q = NoiseParams.load(path)
    assert q.to_dict() == p.to_dict()
    json.loads(path.read_text())  # plain JSON


def test_bad_settings_are_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid noise-parameter JSON"):
        NoiseParams.load(bad)
    with pytest.raises(ValueError, match="unknown layer"):
        NoiseParams.from_dict({"modality": "stem", "layers": {"flux_capacitor": {}}})
    with pytest.raises(ValueError, match="modality"):
        NoiseParams.from_dict({"modality": "xray"})
    d = NoiseParams.default("tem").to_dict()
    d["layers"]["shot_noise"]["dose"] = -1.0
    with pytest.raises(ValueError, match="dose"):
        NoiseParams.from_dict(d)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.ones(32, np.float32), "2-D"),
        (np.ones((0, 32), np.float32), "empty"),
        (np.ones((2, 2), np.float32), "too small"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_images_give_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        distort(bad, "stem", rng=0)


def test_integer_images_are_accepted(clean):
    img = (clean * 1000).astype(np.uint16)
    out = distort(img, "stem", rng=0)
    assert out.dtype == np.float32 and out.shape == img.shape


def test_wrong_modality_and_mismatched_params():
    with pytest.raises(ValueError, match="modality"):
        distort(np.ones((16, 16)), "mri")
    with pytest.raises(ValueError, match="params are for modality"):
        distort(np.ones((16, 16)), "stem", NoiseParams.default("tem"))


def test_sampled_tem_dark_current_uses_the_exposure_dose():
    for seed in range(10):
        p = sample_params("tem", seed)
        assert p["dark_current"].dose == p["shot_noise"].dose


def test_make_pair_moves_the_target_by_the_fast_scan_lag():
    """The causal fast-scan PSF shifts features; the target follows, so only blur is learned."""
    from napari_emdenoise.noise.stem import FastScanBlurParams, fast_scan_lag

    yy, xx = np.mgrid[:48, :96].astype(float)
    clean = np.exp(-((yy - 24) ** 2 + (xx - 40) ** 2) / (2 * 3.0**2))  # zero at the borders
    base = NoiseParams.default("stem")
    layers = {name: lp.replace(enabled=False) for name, lp in base.layers.items()}
    blur = FastScanBlurParams(enabled=True, alpha=2.0, beta=3.0, gamma=20.0, theta=0.5)
    layers["fast_scan_blur"] = blur
    target, x = make_pair(clean, "stem", NoiseParams("stem", layers), rng=1)
    lag = fast_scan_lag(blur)
    assert lag > 1.0

    def centroid_x(img):
        return float((img * xx).sum() / img.sum())

    assert centroid_x(x) == pytest.approx(centroid_x(clean) + lag, abs=0.02)
    assert centroid_x(target) == pytest.approx(centroid_x(x), abs=0.02)
    # distort() itself is unchanged: the same lagged image.
    np.testing.assert_array_equal(x, distort(clean, "stem", NoiseParams("stem", layers), rng=1))
    # No blur, no move.
    layers["fast_scan_blur"] = blur.replace(enabled=False)
    target, _ = make_pair(clean, "stem", NoiseParams("stem", layers), rng=1)
    np.testing.assert_allclose(target, clean, atol=1e-6)

"""Post-processing distortions (seed 001): interpolation, blur, annotations, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_emdenoise.noise.post import (
    POST_LAYERS,
    AffineInterpolationParams,
    AnnotationsParams,
    CropsParams,
    GaussianBlurParams,
    affine_interpolation,
    annotations,
    crops,
    gaussian_blur,
)


def _random(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32)


def _blob(shape, centre, sigma=2.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def _centroid(img: np.ndarray) -> np.ndarray:
    w = np.clip(img, 0, None)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()


def _on(cls, **kw):
    return cls(enabled=True, **kw)


# ---------------------------------------------------------------------------
# layer table and shared behaviour
# ---------------------------------------------------------------------------
def test_post_layers_table():
    assert [layer.name for layer in POST_LAYERS] == [
        "affine_interpolation",
        "gaussian_blur",
        "annotations",
        "crops",
    ]
    flags = {layer.name: layer.applies_to_target for layer in POST_LAYERS}
    assert flags == {
        "affine_interpolation": True,
        "gaussian_blur": False,  # the paper blurs the distorted image only
        "annotations": True,
        "crops": True,
    }
    for layer in POST_LAYERS:
        p = layer.params_type()
        assert p.enabled is False  # off by default
        assert layer.params_type.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("layer", "probability"),
    list(zip(POST_LAYERS, (0.15, 0.3, 0.1, 0.1), strict=True)),
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_sample_occurrence_and_validity(layer, probability):
    draws = [layer.params_type.sample(np.random.default_rng(s)) for s in range(1500)]
    assert np.mean([d.enabled for d in draws]) == pytest.approx(probability, abs=0.035)
    img = _random((48, 40))
    for d in draws[:10]:
        assert d.validate() is d
        x = np.stack([img, img]) if layer.applies_to_target else img
        out = layer.func(x, d.replace(enabled=True), np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()


def _active_params(layer):
    return {
        "affine_interpolation": lambda: _on(AffineInterpolationParams, rotation=7.0, shear=0.05),
        "gaussian_blur": lambda: _on(GaussianBlurParams, sigma=0.8),
        "annotations": lambda: _on(AnnotationsParams, n_items=4),
        "crops": lambda: _on(CropsParams, n_regions=3, fill="constant", value=0.0),
    }[layer.name]()


@pytest.mark.parametrize("layer", POST_LAYERS, ids=lambda layer: layer.name)
def test_deterministic_input_untouched_and_disabled_is_identity(layer):
    img = _random((64, 72))
    x = np.stack([img, _random((64, 72), 1)]) if layer.applies_to_target else img
    before = x.copy()
    p = _active_params(layer)
    a = layer.func(x, p, np.random.default_rng(5))
    b = layer.func(x, p, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(a, x) and not np.array_equal(a, x)
    off = layer.func(x, p.replace(enabled=False), np.random.default_rng(5))
    np.testing.assert_array_equal(off, x)
    with pytest.raises(TypeError):
        layer.func(x, p, 5)


BAD = {
    "nan": np.full((16, 16), np.nan, np.float32),
    "4d": np.zeros((1, 2, 16, 16), np.float32),
    "empty": np.zeros((16, 0), np.float32),
    "tiny": np.ones((16, 1), np.float32),
}


@pytest.mark.parametrize("bad", list(BAD), ids=str)
@pytest.mark.parametrize("layer", POST_LAYERS, ids=lambda layer: layer.name)
def test_bad_input_raises_value_error(layer, bad):
    with pytest.raises(ValueError):
        layer.func(BAD[bad], _active_params(layer), np.random.default_rng(0))


@pytest.mark.parametrize("layer", POST_LAYERS, ids=lambda layer: layer.name)
def test_integer_images_are_accepted_as_float32(layer):
    image = np.round(_random((32, 40)) * 200).astype(np.int32)
    p = _active_params(layer)
    expected = layer.func(image.astype(np.float32), p, np.random.default_rng(3))
    out = layer.func(image, p, np.random.default_rng(3))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)


def test_bad_params_raise_value_error():
    img = _random((32, 32))
    for layer, p in [
        (affine_interpolation, _on(AffineInterpolationParams, scale_x=0.0)),
        (gaussian_blur, _on(GaussianBlurParams, sigma=-1.0)),
        (annotations, _on(AnnotationsParams, thickness=0)),
        (crops, _on(CropsParams, fill="mean")),
        (crops, _on(CropsParams, protected_fraction=1.5)),
    ]:
        with pytest.raises(ValueError):
            layer(img, p, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# affine interpolation
# ---------------------------------------------------------------------------
def test_identity_transform_reproduces_the_image():
    img = _random((40, 52))
    out = affine_interpolation(img, _on(AffineInterpolationParams), np.random.default_rng(0))
    np.testing.assert_allclose(out, img, atol=1e-5)


def test_integer_shift_moves_content_right_and_down():
    img = _random((40, 52))
    p = _on(AffineInterpolationParams, shift_x=3.0, shift_y=-2.0)
    out = affine_interpolation(img, p, np.random.default_rng(0))
    np.testing.assert_allclose(out[:-2, 3:], img[2:, :-3], atol=1e-4)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # offsets (row, col) of a point starting 12 px right of the centre
        ({"rotation": 30.0}, (-12 * math.sin(math.radians(30)), 12 * math.cos(math.radians(30)))),
        ({"rotation": -90.0}, (12.0, 0.0)),
        ({"scale_x": 1.25}, (0.0, 15.0)),
        ({"scale_y": 1.25}, (0.0, 12.0)),
    ],
    ids=str,
)
def test_transform_moves_a_point_as_documented(kw, expected):
    shape = (65, 65)
    centre = np.array([32.0, 32.0])
    img = _blob(shape, centre + [0.0, 12.0])
    out = affine_interpolation(img, _on(AffineInterpolationParams, **kw), np.random.default_rng(0))
    np.testing.assert_allclose(_centroid(out) - centre, expected, atol=0.1)


def test_shear_moves_points_below_the_centre_sideways():
    shape = (65, 65)
    centre = np.array([32.0, 32.0])
    img = _blob(shape, centre + [10.0, 0.0])  # 10 px below the centre
    out = affine_interpolation(
        img, _on(AffineInterpolationParams, shear=0.2), np.random.default_rng(0)
    )
    np.testing.assert_allclose(_centroid(out) - centre, (10.0, 2.0), atol=0.1)


def test_subpixel_interpolation_smooths_white_noise():
    noise = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    out = affine_interpolation(
        noise, _on(AffineInterpolationParams, shift_x=0.5), np.random.default_rng(0)
    )
    # a half-pixel cubic interpolation averages neighbours: lower variance, correlated pixels
    assert out.var() < 0.85 * noise.var()
    corr = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
    assert corr > 0.2  # white noise: |corr| ~ 0.003


def test_every_slice_gets_the_same_transform():
    a, b = _random((48, 40), 1), _random((48, 40), 2)
    p = _on(AffineInterpolationParams, rotation=4.0, shear=-0.05, scale_y=1.2, shift_x=0.3)
    both = affine_interpolation(np.stack([a, b]), p, np.random.default_rng(0))
    np.testing.assert_allclose(
        both[0], affine_interpolation(a, p, np.random.default_rng(1)), atol=1e-6
    )
    np.testing.assert_allclose(
        both[1], affine_interpolation(b, p, np.random.default_rng(2)), atol=1e-6
    )


# ---------------------------------------------------------------------------
# Gaussian blur
# ---------------------------------------------------------------------------
def test_blur_sigma_zero_is_identity():
    img = _random((32, 32))
    np.testing.assert_array_equal(
        gaussian_blur(img, _on(GaussianBlurParams, sigma=0.0), np.random.default_rng(0)), img
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_blur_reduces_white_noise_variance_as_the_kernel_predicts(sigma):
    noise = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    out = gaussian_blur(noise, _on(GaussianBlurParams, sigma=sigma), np.random.default_rng(0))
    r = int(4 * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g /= g.sum()
    expected = (g**2).sum() ** 2  # separable 2-D kernel
    assert out.var() / noise.var() == pytest.approx(expected, rel=0.1)
    assert abs(out.mean() - noise.mean()) < 0.01


def test_blur_applies_to_the_distorted_image_only():
    with pytest.raises(ValueError):
        gaussian_blur(
            np.zeros((2, 16, 16), np.float32), _on(GaussianBlurParams), np.random.default_rng(0)
        )


# ---------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_items=st.integers(1, 6), thickness=st.integers(1, 4))
def test_annotations_are_burnt_in_at_identical_places(seed, n_items, thickness):
    a, b = _random((64, 80), 1), _random((64, 80), 2)
    p = _on(AnnotationsParams, n_items=n_items, thickness=thickness, value=0.05)
    out = annotations(np.stack([a, b]), p, np.random.default_rng(seed))
    changed_a, changed_b = out[0] != a, out[1] != b
    np.testing.assert_array_equal(changed_a, changed_b)
    assert changed_a.any()
    assert np.all(out[0][changed_a] == np.float32(0.05))
    assert np.all(out[1][changed_b] == np.float32(0.05))


def test_annotations_cover_a_modest_area_that_grows_with_stroke_width():
    img = _random((128, 128))

    def area(thickness):
        p = _on(AnnotationsParams, n_items=3, thickness=thickness, value=0.0)
        return np.mean(
            [(annotations(img, p, np.random.default_rng(s)) == 0).mean() for s in range(30)]
        )

    thin, thick = area(1), area(4)
    assert 0.002 < thin < thick < 0.3


def test_annotation_positions_change_with_the_seed():
    img = _random((64, 64))
    p = _on(AnnotationsParams, value=0.0)
    masks = [annotations(img, p, np.random.default_rng(s)) == 0 for s in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_zero_annotations_is_identity():
    img = _random((32, 32))
    np.testing.assert_array_equal(
        annotations(img, _on(AnnotationsParams, n_items=0), np.random.default_rng(0)), img
    )


# ---------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------
def _central_box(shape, fraction):
    h, w = shape
    f = math.sqrt(fraction)
    top, left = int((h - f * h) // 2), int((w - f * w) // 2)
    box = np.zeros(shape, bool)
    box[top : h - top, left : w - left] = True
    return box


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.8])
def test_crops_never_touch_the_central_rectangle_and_start_at_the_border(fraction):
    shape = (96, 128)
    img = _random(shape)
    box = _central_box(shape, fraction)
    assert box.mean() >= fraction - 0.03
    p = _on(CropsParams, n_regions=3, fill="constant", value=-1.0, protected_fraction=fraction)
    touched = np.zeros(shape, bool)
    for seed in range(40):
        changed = crops(img, p, np.random.default_rng(seed)) != img
        assert not (changed & box).any()
        labels, n = ndimage.label(changed)
        for i in range(1, n + 1):
            comp = labels == i
            assert comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any()
        touched |= changed
    assert touched[~box].mean() > 0.5  # over many draws the whole border area is used


def test_crop_fill_modes_per_slice():
    a, b = _random((64, 64), 1), _random((64, 64), 2) * 0.5
    stack = np.stack([a, b])
    for fill, expected in [
        ("constant", (0.3, 0.3)),
        ("median", (np.median(a), np.median(b))),
        ("mid_range", ((a.min() + a.max()) / 2, (b.min() + b.max()) / 2)),
    ]:
        p = _on(CropsParams, n_regions=2, fill=fill, value=0.3)
        out = crops(stack, p, np.random.default_rng(3))
        changed = out != stack
        np.testing.assert_array_equal(changed[0], changed[1])  # same region in both images
        assert changed[0].sum() > 0
        for i in range(2):
            np.testing.assert_allclose(out[i][changed[i]], expected[i], rtol=1e-6)


def test_full_protection_leaves_nothing_to_crop():
    img = _random((40, 40))
    p = _on(CropsParams, n_regions=3, protected_fraction=1.0)
    np.testing.assert_array_equal(crops(img, p, np.random.default_rng(0)), img)

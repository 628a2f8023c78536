"""The fast-scan axis: measured from the noise, and ``restore(..., fast_scan_axis="y")``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import convolve1d

from napari_emdenoise.engine import restore
from napari_emdenoise.engine.scan_axis import (
    check_fast_scan_axis,
    scan_axis_mismatch,
    scan_correlations,
)


def _scanned(shape=(128, 160), seed=0, lag=(0.5, 0.3)) -> np.ndarray:
    """A smooth specimen with noise spread along the rows (detector lag along x)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    specimen = 100.0 + 30.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    noise = convolve1d(rng.normal(0.0, 10.0, shape), np.array([*lag[::-1], 1.0]), axis=1)
    return (specimen + noise).astype(np.float32)


def test_scan_correlations_find_the_axis_the_noise_is_spread_along():
    image = _scanned()
    along_x, along_y = scan_correlations(image)
    assert along_x > 0.3 and abs(along_y) < 0.05
    assert scan_correlations(image.T) == pytest.approx((along_y, along_x), abs=1e-9)
    white = np.random.default_rng(1).normal(100.0, 10.0, (128, 128))
    assert np.max(np.abs(scan_correlations(white))) < 0.05


def test_a_mismatch_is_reported_only_when_the_noise_points_to_the_other_axis():
    image = _scanned()
    assert scan_axis_mismatch(image, "x") is None
    found = scan_axis_mismatch(image.T, "x")
    assert found is not None and (found.given, found.suggested) == ("x", "y")
    assert found.along_suggested > 0.3 and "columns" in found.describe()
    assert scan_axis_mismatch(image.T, "y") is None
    assert scan_axis_mismatch(image, "y").suggested == "x"
    white = np.random.default_rng(2).poisson(20.0, (96, 96)).astype(np.float32)
    assert scan_axis_mismatch(white, "x") is None and scan_axis_mismatch(white, "y") is None


@pytest.mark.parametrize("bad", ["rows", "X", 1, None])
def test_fast_scan_axis_must_be_x_or_y(bad):
    with pytest.raises(ValueError, match="fast_scan_axis"):
        check_fast_scan_axis(bad)
    with pytest.raises(ValueError, match="fast_scan_axis"):
        restore(np.ones((32, 32), np.float32), model="hrstem", fast_scan_axis=bad)


@pytest.mark.parametrize("shape", [(70, 131), (3, 45, 90)])
def test_y_restores_the_transposed_frames_and_transposes_back(tiny_user_model, shape):
    data = np.random.default_rng(3).poisson(30.0, shape).astype(np.float32)
    got = restore(data, model=tiny_user_model, fast_scan_axis="y", tile_size=(64, 96), overlap=16)
    assert got.shape == data.shape and got.dtype == np.float32
    swapped = np.ascontiguousarray(np.swapaxes(data, -1, -2))
    # the tiles follow the transposition: (64, 96) on the image is (96, 64) on what is seen
    expected = restore(swapped, model=tiny_user_model, tile_size=(96, 64), overlap=16)
    np.testing.assert_array_equal(got, np.swapaxes(expected, -1, -2))
    assert not np.allclose(got, restore(data, model=tiny_user_model), atol=1e-4)


def test_restore_warns_when_a_scanned_model_meets_a_transposed_scan(tiny_user_model):
    image = _scanned()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        restore(image, model=tiny_user_model, refine=False)  # scanned along x: no warning
        restore(image.T.copy(), model=tiny_user_model, refine=False, fast_scan_axis="y")
    with pytest.warns(RuntimeWarning, match="fast_scan_axis='y'"):
        restore(image.T.copy(), model=tiny_user_model, refine=False)


def test_camera_models_and_bare_networks_are_not_warned_about_the_scan(tmp_path):
    import torch

    from napari_emdenoise.models.registry import ModelCard, build_model, save_model

    torch.manual_seed(0)
    net = build_model("cgrdn", "tiny")
    card = ModelCard(
        name="tinytem", arch="cgrdn", config=net.config.to_dict(), modality="tem", kind="hr",
        training={"steps": 0}, metrics={}, created="2026-12-02T00:00:00+00:00", notes="test",
    )  # fmt: skip
    weights = save_model(net, card, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        restore(_scanned().T.copy(), model=weights, refine=False)  # a TEM model's card
        restore(_scanned().T.copy(), model=net, refine=False)  # no card: modality unknown

"""Low-magnification texture (synth/lowmag_texture.py) and its training fraction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.synth.lowmag_texture import add_lowmag_texture
from napari_emdenoise.training.datasets import PairConfig, make_training_pair


def _detail(u: np.ndarray) -> float:
    """Standard deviation of the detail finer than a 3-px Gaussian."""
    u = np.asarray(u, np.float64)
    return float(np.std(u - ndimage.gaussian_filter(u, 3.0)))


def test_texture_is_seeded_normalised_and_adds_fine_detail():
    smooth = ndimage.gaussian_filter(np.random.default_rng(0).random((96, 128)), 16.0)
    smooth = (smooth - smooth.min()) / np.ptp(smooth) * 0.8 + 0.2
    seen = set()
    for seed in range(8):
        a, info = add_lowmag_texture(smooth, np.random.default_rng(seed))
        b, _ = add_lowmag_texture(smooth, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.shape == smooth.shape
        assert a.min() >= 0.0 and a.max() == pytest.approx(1.0)
        assert set(info) <= {"film", "fringes"} and info
        seen |= set(info)
        # periods of 2.5–20 px: far more fine detail than the smooth scene had
        assert _detail(a) > 5 * _detail(smooth / smooth.max())
    assert seen == {"film", "fringes"}


def test_texture_rejects_a_stack():
    with pytest.raises(ValueError, match="2-D"):
        add_lowmag_texture(np.ones((2, 16, 16)), np.random.default_rng(0))


def test_texture_pairs_are_drawn_per_pair_and_leave_the_others_unchanged():
    """With texture_fraction = 0.4 a pair either carries a recorded texture draw or
    equals the paper's pair exactly."""
    base = PairConfig(modality="tem", kind="lr", patch_size=48, seed=12)
    mixed = PairConfig(modality="tem", kind="lr", patch_size=48, seed=12, texture_fraction=0.4)
    kept = changed = 0
    for i in range(16):
        x0, y0, i0 = make_training_pair(base, i, return_info=True)
        x1, y1, i1 = make_training_pair(mixed, i, return_info=True)
        if "texture" in i1:
            assert not np.array_equal(y1, y0)
            changed += 1
        else:
            np.testing.assert_array_equal(x1, x0)
            np.testing.assert_array_equal(y1, y0)
            kept += 1
    assert kept and changed
    assert PairConfig.from_dict(mixed.to_dict()).texture_fraction == 0.4
    assert "texture_fraction" not in base.to_dict()


def test_texture_is_for_low_resolution_images():
    with pytest.raises(ValueError, match="texture_fraction"):
        PairConfig(kind="hr", texture_fraction=0.5)
    with pytest.raises(ValueError, match="probability"):
        PairConfig(kind="lr", texture_fraction=1.5)

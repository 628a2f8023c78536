"""Tests of the neighbour-residual stage of the 4D-STEM engine (engine/neighbour_residuals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdenoise import restore_4dstem
from napari_emdenoise.engine import neighbour_residuals as nr

zarr = pytest.importorskip("zarr")


def _disks(shape: tuple[int, int] = (24, 24)) -> np.ndarray:
    """A nano-beam-like pattern: a few sharp disks on a weak background, counts."""
    yy, xx = np.indices(shape)
    p = np.full(shape, 0.3)
    for cy, cx, amp in [(12, 12, 30.0), (5, 5, 6.0), (5, 19, 4.0), (19, 5, 5.0), (19, 19, 3.0)]:
        p[np.hypot(yy - cy, xx - cx) <= 2.5] += amp
    return p


def _soften(clean: np.ndarray) -> np.ndarray:
    """A biased "restoration": every disk edge softened alike, total counts kept."""
    from scipy import ndimage

    soft = ndimage.gaussian_filter(clean, (0, 0, 1.2, 1.2), mode="constant")
    return (soft * clean.sum((2, 3), keepdims=True) / soft.sum((2, 3), keepdims=True)).astype(
        np.float32
    )


def test_a_bias_shared_by_every_position_is_put_back():
    rng = np.random.default_rng(0)
    clean = np.broadcast_to(_disks(), (8, 9, 24, 24)).astype(np.float64)
    raw = rng.poisson(clean).astype(np.float32)
    restored = _soften(clean)  # noise-free but biased: the error is all systematic
    out, corr = nr.correct_in_memory(raw, restored)
    assert corr is not None and corr.window is None  # one crystal: the whole scan is pooled
    err = lambda x: float(np.mean((x - clean) ** 2))  # noqa: E731
    assert err(out) < 0.3 * err(restored)
    # the region's mean pattern moves to the raw mean (the truth up to noise / √72)
    mean_err = lambda x: np.abs(x.mean((0, 1)) - clean[0, 0]).sum()  # noqa: E731
    assert mean_err(out) < 0.5 * mean_err(restored)
    assert mean_err(out) < 1.5 * mean_err(raw)
    np.testing.assert_allclose(out.sum((2, 3)), restored.sum((2, 3)), rtol=1e-5)
    assert out.min() >= 0 and out.dtype == np.float32
    assert corr.risk_change["whole scan"] < 0 and "whole scan" in corr.describe()


def test_patterns_that_differ_are_left_nearly_alone():
    """Unbiased restorations of patterns that change at every position (as CBED does
    within the unit cell): pooling neighbours could only add their differences."""
    rng = np.random.default_rng(1)
    a, b = _disks(), np.roll(_disks(), 6, axis=1)
    checker = (np.add.outer(np.arange(8), np.arange(9)) % 2)[..., None, None]
    clean = np.where(checker == 1, a, b)
    raw = rng.poisson(clean).astype(np.float32)
    restored = (clean + rng.normal(0, 0.05, clean.shape)).astype(np.float32)
    out, corr = nr.correct_in_memory(raw, restored)
    before = float(np.mean((restored - clean) ** 2))
    after = float(np.mean((out - clean) ** 2))
    assert after <= 1.1 * before + 1e-3
    if corr is not None:
        assert float(corr.weights.mean()) < 0.2


def test_the_estimated_error_change_is_unbiased_for_a_fixed_weight():
    """E[Σ b² − 2 Σ b·e] equals the true change of the summed squared error at λ = 1."""
    clean = np.broadcast_to(_disks((12, 12)) + 3.0, (5, 6, 12, 12)).astype(np.float64)
    soft = _soften(clean).astype(np.float64)
    estimated, true = [], []
    for seed in range(300):
        raw = np.random.default_rng(seed).poisson(clean).astype(np.float64)
        # a restoration that keeps each pattern's measured total, as the engine's does
        restored = soft * raw.sum((2, 3), keepdims=True) / soft.sum((2, 3), keepdims=True)
        sums = nr.residual_statistics(
            lambda a, b, x=raw: x[a:b],
            lambda a, b, x=restored: x[a:b],
            (5, 6),
            (12, 12),
            2,
            windows=(3,),
        )
        estimated.append(float(np.sum(sums.bb[3] - 2 * sums.be[3])))
        ones = nr.NeighbourCorrection(3, np.ones((12, 12), np.float32), sums.e, sums.n)
        out = nr.apply_band(raw, restored, 0, 0, 5, 5, ones).astype(np.float64)
        true.append(float(np.sum((out - clean) ** 2 - (restored - clean) ** 2)))
    est, tru = np.mean(estimated), np.mean(true)
    spread = np.std(np.array(estimated) - np.array(true)) / np.sqrt(len(true))
    assert tru < 0  # the shared softening is worth correcting
    assert abs(est - tru) < 4 * spread + 0.01 * abs(tru)


def test_hot_dead_and_saturated_pixels_stay_removed():
    rng = np.random.default_rng(2)
    clean = np.broadcast_to(_disks(), (8, 8, 24, 24)).astype(np.float64)
    raw = rng.poisson(clean).astype(np.float32)
    raw[:, :, 1, 12] += rng.poisson(6.0, (8, 8))  # a hot pixel on the background
    raw[:, :, 12, 12] = 0.0  # a dead pixel in the central disk
    ceiling = 24.0
    raw = np.minimum(raw, ceiling)  # the counter saturates inside the central disk
    restored = _soften(clean)
    restored[:, :, 1, 12] = clean[:, :, 1, 12]  # what the network did: the defects removed
    restored[:, :, 12, 12] = clean[:, :, 12, 12]
    out, corr = nr.correct_in_memory(raw, restored)
    assert corr is not None
    assert corr.weights[1, 12] == 0 and corr.weights[12, 12] == 0
    np.testing.assert_allclose(out[:, :, 1, 12].mean(), clean[0, 0, 1, 12], atol=0.3)
    assert out[:, :, 12, 12].mean() > 0.7 * clean[0, 0, 12, 12]
    saturated = raw == ceiling
    assert saturated.sum() > 100
    # where the counter stopped, the output is not pulled down to the ceiling
    assert (out[saturated] - ceiling).mean() > 0.5 * (restored[saturated] - ceiling).mean()


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("band", [1, 2, 3, 7])
def test_bands_of_any_height_give_the_in_memory_result(window, band):
    rng = np.random.default_rng(3)
    clean = rng.uniform(0.5, 5, (1, 1, 10, 10)) * np.ones((7, 6, 1, 1))
    raw = rng.poisson(clean).astype(np.float32)
    restored = (0.8 * clean + 0.2 * clean.mean()).astype(np.float32)
    want, corr = nr.correct_in_memory(raw, restored, windows=(window,), band_rows=7)
    assert corr is not None and corr.halo == window // 2
    store = restored.copy()

    def write(a, b, rows):
        store[a:b] = rows

    nr.apply_in_bands(lambda a, b: raw[a:b], lambda a, b: store[a:b], write, 7, band, corr)
    np.testing.assert_allclose(store, want, rtol=0, atol=1e-5)
    # the window mean against a direct loop over the scan
    e = raw.astype(np.float64) - restored
    h = window // 2
    direct = np.empty_like(e)
    for y in range(7):
        for x in range(6):
            ys, xs = slice(max(0, y - h), y + h + 1), slice(max(0, x - h), x + h + 1)
            n = e[ys, xs].shape[0] * e[ys, xs].shape[1]
            direct[y, x] = (e[ys, xs].sum((0, 1)) - e[y, x]) / (n - 1)
    np.testing.assert_allclose(nr._window_mean(e, 0, 0, 7, window, 7), direct, atol=1e-12)


def test_nothing_to_pool_in_a_single_position_or_identical_data():
    raw = np.random.default_rng(4).poisson(3.0, (1, 1, 8, 8)).astype(np.float32)
    out, corr = nr.correct_in_memory(raw, raw * 0.9)
    assert corr is None and np.array_equal(out, raw * 0.9)
    same = np.ones((3, 3, 8, 8), np.float32)
    out, corr = nr.correct_in_memory(same, same)
    assert corr is None and np.array_equal(out, same)
    with pytest.raises(ValueError, match="same 4-D shape"):
        nr.correct_in_memory(raw, raw[0])
    with pytest.raises(ValueError, match="odd"):
        nr.residual_statistics(lambda a, b: raw, lambda a, b: raw, (1, 1), (8, 8), 1, windows=(4,))


class Softener(torch.nn.Module):
    """Stand-in network that softens every pattern alike (total counts kept)."""

    size_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        y = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None]
        )
        return y * x.sum((-2, -1), keepdim=True) / y.sum((-2, -1), keepdim=True).clamp_min(1e-6)


def _killed_in_band(monkeypatch, data, store, block: int, band: int) -> dict:
    """Run the engine into ``store`` with the record updated every 2 bands and
    "kill the process" (KeyboardInterrupt) when band ``band`` is being corrected;
    returns the stage's record as left behind."""
    from napari_emdenoise.engine import _stack4d_neighbours as stage
    from napari_emdenoise.engine._stack4d_store import RECORD_KEY

    calls = {"n": 0}
    original = nr.apply_band

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == band:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(stage, "BANDS_PER_CLAIM", 2)
    monkeypatch.setattr(nr, "apply_band", dying)
    with pytest.raises(KeyboardInterrupt):
        restore_4dstem(data, model=Softener(), out=store, max_block_bytes=block)
    monkeypatch.setattr(nr, "apply_band", original)
    return zarr.open_array(str(store), mode="r").attrs[RECORD_KEY][stage.RECORD_FIELD]


def test_the_engine_applies_it_and_an_interrupted_store_resumes(tmp_path, monkeypatch):
    from napari_emdenoise.engine import _stack4d_neighbours as stage
    from napari_emdenoise.engine._stack4d_store import RECORD_KEY

    rng = np.random.default_rng(5)
    clean = np.empty((9, 6, 24, 24))
    clean[:, :3], clean[:, 3:] = _disks(), np.roll(_disks(), (4, 7), axis=(0, 1))  # two grains
    clean *= rng.uniform(0.8, 1.2, (9, 6, 1, 1))
    data = rng.poisson(clean).astype(np.uint16)
    plain = restore_4dstem(data, model=Softener(), neighbour_residuals=False)
    want = restore_4dstem(data, model=Softener())
    assert np.abs(want - plain).max() > 0.1  # the stage changed the output
    assert np.mean((want - clean) ** 2) < np.mean((plain - clean) ** 2)
    reference, corr = nr.correct_in_memory(data, plain)
    np.testing.assert_allclose(want, reference, atol=1e-5)
    assert corr.halo > 0  # a local window: bands need the uncorrected rows above them
    reported = []
    restore_4dstem(data, model=Softener(), report=reported.append)
    assert len(reported) == 1 and reported[0].window == corr.window
    np.testing.assert_array_equal(reported[0].weights, corr.weights)
    restore_4dstem(data, model=Softener(), report=reported.append, neighbour_residuals=False)
    assert len(reported) == 1  # no stage, no report
    flat = np.random.default_rng(9).poisson(5.0, (4, 4, 16, 16)).astype(np.float32)
    restore_4dstem(flat, model=Softener(), report=reported.append)
    assert reported[-1] is None  # an unbiased blur of a flat scene: nothing to pool

    # one scan row per block and per band, the record updated every 2 bands; the
    # process dies after the 5th band is written but before the record says so
    block = 6 * 24 * 24 * 4
    store = tmp_path / "out.zarr"
    state = _killed_in_band(monkeypatch, data, store, block, band=6)
    assert (state["rows_done"], state["rows_claimed"], state["finished"]) == (4, 6, False)
    half = zarr.open_array(str(store), mode="r")[4]
    assert not np.allclose(half, plain[4], atol=1e-5)  # row 4 was corrected already
    got = restore_4dstem(data, model=Softener(), out=store, max_block_bytes=block)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)  # not corrected twice
    assert zarr.open_array(str(store), mode="r").attrs[RECORD_KEY][stage.RECORD_FIELD]["finished"]


def test_two_grains_choose_a_local_window_and_no_position_gets_worse():
    rng = np.random.default_rng(6)
    a, b = _disks(), np.roll(_disks(), (4, 7), axis=(0, 1))
    clean = np.empty((10, 10, 24, 24))
    clean[:, :5], clean[:, 5:] = a, b  # a grain boundary between columns 4 and 5
    raw = rng.poisson(clean).astype(np.float32)
    restored = _soften(clean)
    out, corr = nr.correct_in_memory(raw, restored)
    assert corr is not None and corr.window in (3, 5)  # the whole scan would mix the grains
    before = ((restored - clean) ** 2).sum((2, 3))
    after = ((out - clean) ** 2).sum((2, 3))
    assert (after < before).mean() > 0.9
    assert (after <= 1.1 * before).all()


def test_a_restoration_without_shared_error_is_left_alone():
    """Few positions, many pixels, nothing shared to put back (a flat scene, an unbiased
    blur): weights fitted per pixel follow the noise, and only the optimism
    correction keeps the estimate from calling that a gain."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    clean = np.full((8, 1, 96, 96), 5.0)  # e.g. 8 frames of a movie
    raw = rng.poisson(clean).astype(np.float32)
    restored = ndimage.gaussian_filter(raw, (0, 0, 1.5, 1.5)).astype(np.float32)
    out, corr = nr.correct_in_memory(raw, restored)
    assert corr is None and np.array_equal(out, restored)


def test_a_whole_scan_stage_stopped_between_two_claims_resumes(tmp_path, monkeypatch):
    """The record says rows 0:4 done and nothing more claimed: no row to restore
    and no halo to carry (the whole-scan window needs none)."""

    rng = np.random.default_rng(5)
    clean = np.broadcast_to(_disks(), (9, 4, 24, 24)) * rng.uniform(0.9, 1.1, (9, 4, 1, 1))
    data = rng.poisson(clean).astype(np.uint16)
    reported = []
    want = restore_4dstem(data, model=Softener(), report=reported.append)
    assert reported[0] is not None and reported[0].window is None  # one crystal

    # after 4 one-row bands, i.e. two claims of 2, were recorded
    block = 4 * 24 * 24 * 4
    store = tmp_path / "out.zarr"
    state = _killed_in_band(monkeypatch, data, store, block, band=5)
    assert (state["rows_done"], state["rows_claimed"]) == (4, 4)
    got = restore_4dstem(data, model=Softener(), out=store, max_block_bytes=block)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)

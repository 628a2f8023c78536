"""Lattice pass (engine/lattice.py): erased fringes come back, noise does not, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blurring_net

from napari_emdenoise.engine.lattice import LatticeSettings, restore_lattice


def _fringes(shape, period: float, amplitude: float, angle_deg: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    a = np.deg2rad(angle_deg)
    return amplitude * np.cos(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)


def _amplitude(image: np.ndarray, period: float, angle_deg: float = 0.0) -> float:
    """Amplitude of the ``period`` fringes in ``image`` (least squares on cos and sin)."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float64)
    a = np.deg2rad(angle_deg)
    phase = 2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period
    u = image - image.mean()
    c = 2 * np.mean(u * np.cos(phase))
    s = 2 * np.mean(u * np.sin(phase))
    return float(np.hypot(c, s))


@pytest.mark.parametrize("period, angle", [(4.0, 0.0), (5.0, 30.0), (16.0, 10.0)])
def test_an_erased_lattice_comes_back_from_the_frame(period, angle):
    """A restoration that erased the fringes: the pass gives back most of their amplitude."""
    rng = np.random.default_rng(int(period))
    shape = (256, 256)
    background = 5.0 + 2.0 * np.exp(-((np.mgrid[:256, :256] - 128.0) ** 2).sum(0) / 80.0**2)
    clean = background + _fringes(shape, period, 0.8, angle)  # weak: 0.8 counts on 5–7
    noisy = rng.poisson(clean).astype(np.float64)
    out = restore_lattice(noisy, background)
    assert _amplitude(background, period, angle) < 0.01
    assert _amplitude(out, period, angle) > 0.7 * 0.8
    err_before = np.sqrt(np.mean((background - clean) ** 2))
    err_after = np.sqrt(np.mean((out - clean) ** 2))
    assert err_after < 0.6 * err_before


@pytest.mark.parametrize("period, angle", [(6.0, 20.0), (5.0, 33.0)])
def test_fringes_keep_their_place_up_to_the_frame_edges(period, angle):
    """A lattice that is not periodic over the frame (the usual case): near the edges the
    fringes come back in place (phase within 15°) and with most of their amplitude. Built
    from a few Fourier coefficients they would be shifted there by up to 55°."""
    rng = np.random.default_rng(20)
    shape, amplitude = (300, 700), 0.7
    clean = 8.0 + _fringes(shape, period, amplitude, angle)
    noisy = rng.poisson(clean).astype(np.float64)
    out = restore_lattice(noisy, np.full(shape, 8.0)) - 8.0
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    a = np.deg2rad(angle)
    phase = 2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period
    for cols in (slice(0, 12), slice(shape[1] - 12, shape[1])):
        c = 2 * np.mean(out[:, cols] * np.cos(phase[:, cols]))
        s = 2 * np.mean(out[:, cols] * np.sin(phase[:, cols]))
        assert np.hypot(c, s) > 0.75 * amplitude
        assert abs(np.degrees(np.arctan2(-s, c))) < 15.0


def test_noise_alone_adds_nothing_in_nearly_every_frame():
    """A perfect restoration leaves only noise: at the default (nominal 0.01 false coefficients
    per frame, measured 2–3 % of frames), at most 3 of 20 frames may change at all, and then
    by a tiny amount."""
    changed = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        clean = np.full((192, 160), 3.0)
        noisy = rng.poisson(clean).astype(np.float64)
        out = restore_lattice(noisy, clean)
        diff = np.abs(out - clean).max()
        changed += bool(diff > 1e-5)
        assert diff < 0.2  # one sinusoid at the threshold: ~sqrt(T·3/n) ≈ 0.03 counts
    assert changed <= 3


def test_scan_line_offsets_stay_removed():
    """Row offsets a S(T)EM restoration removed form a line in the spectrum, not peaks."""
    rng = np.random.default_rng(7)
    clean = np.full((256, 256), 20.0)
    rows = rng.normal(0.0, 1.5, (256, 1))
    noisy = rng.poisson(clean).astype(np.float64) + rows
    out = restore_lattice(noisy, clean)
    given_back = (out - clean).mean(axis=1)
    assert np.std(given_back) < 0.1 * np.std(rows)


def test_periods_longer_than_the_limit_are_not_given_back():
    """Slow variations (here a 64-px ripple) are not a lattice: left to the restoration."""
    rng = np.random.default_rng(8)
    clean = 10.0 + _fringes((256, 256), 64.0, 2.0)
    noisy = rng.poisson(clean).astype(np.float64)
    flat = np.full(clean.shape, 10.0)
    out = restore_lattice(noisy, flat)
    assert _amplitude(out, 64.0) < 0.05
    assert (
        _amplitude(restore_lattice(noisy, flat, LatticeSettings(longest_period=96.0)), 64.0) > 1.5
    )


def test_tiles_give_the_lattice_back_without_seams():
    """A frame larger than a tile: the tiled result matches the one-piece result."""
    rng = np.random.default_rng(9)
    shape = (300, 700)
    clean = 8.0 + _fringes(shape, 6.0, 0.7, 20.0)
    noisy = rng.poisson(clean).astype(np.float64)
    flat = np.full(shape, 8.0)
    whole = restore_lattice(noisy, flat)
    tiled = restore_lattice(noisy, flat, LatticeSettings(tile=256))
    assert _amplitude(tiled, 6.0, 20.0) > 0.7 * 0.7
    assert np.sqrt(np.mean((tiled - whole) ** 2)) < 0.15 * 0.7
    # no jump across the tile boundaries: the error is as large there as elsewhere
    err = np.abs(tiled - clean).mean(axis=0)
    assert err.max() < 2.5 * np.median(err)


def test_the_pass_is_affine_equivariant():
    """Counts times a gain plus an offset: the same result in the new unit."""
    rng = np.random.default_rng(10)
    clean = 6.0 + _fringes((128, 192), 4.0, 1.0)
    noisy = rng.poisson(clean).astype(np.float64)
    flat = np.full(clean.shape, 6.0)
    out = restore_lattice(noisy, flat).astype(np.float64)
    scaled = restore_lattice(3.0 * noisy + 1000.0, 3.0 * flat + 1000.0).astype(np.float64)
    np.testing.assert_allclose(scaled, 3.0 * out + 1000.0, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("shape", [(97, 131), (33, 400), (64, 32)])
def test_odd_and_thin_frames_work(shape):
    rng = np.random.default_rng(11)
    clean = 5.0 + _fringes(shape, 4.0, 1.0)
    noisy = rng.poisson(clean).astype(np.float32)
    flat = np.full(shape, 5.0, dtype=np.float32)
    out = restore_lattice(noisy, flat)
    assert out.shape == shape and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_tiny_and_non_finite_frames_are_returned_as_restored():
    rng = np.random.default_rng(12)
    small = rng.poisson(5.0, (20, 200)).astype(np.float32)
    np.testing.assert_array_equal(restore_lattice(small, np.full_like(small, 5.0)), 5.0)
    x = rng.poisson(5.0, (64, 64)).astype(np.float32)
    y = np.full_like(x, 5.0)
    y[3, 3] = np.nan
    out = restore_lattice(x, y)
    assert np.isnan(out[3, 3]) and np.all(out[np.isfinite(y)] == 5.0)


def test_mismatched_arrays_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        restore_lattice(np.zeros((64, 64)), np.zeros((64, 65)))
    with pytest.raises(ValueError, match="one shape"):
        restore_lattice(np.zeros((2, 64, 64)), np.zeros((2, 64, 64)))
    for bad in (
        {"longest_period": 2.0},
        {"false_alarms": 0.0},
        {"grow_threshold": 0.5},
        {"tile": 100},
        {"tile": 512.0},
    ):
        with pytest.raises(ValueError):
            LatticeSettings(**bad)


def test_restore_runs_the_lattice_pass_by_default_and_only_with_the_refinement():
    from napari_emdenoise.engine import restore

    rng = np.random.default_rng(13)
    clean = 10.0 + _fringes((192, 192), 4.0, 1.5)
    noisy = rng.poisson(clean).astype(np.float32)
    net = blurring_net()
    default = restore(noisy, model=net)
    wiener_only = restore(noisy, model=net, lattice=False)
    alone = restore(noisy, model=net, refine=False)
    assert _amplitude(alone, 4.0) < 0.2
    assert _amplitude(wiener_only, 4.0) < 0.5
    assert _amplitude(default, 4.0) > 0.7 * 1.5
    # refine=False is the network alone, whatever `lattice` says
    np.testing.assert_array_equal(restore(noisy, model=net, refine=False, lattice=True), alone)
    with pytest.raises(ValueError, match="lattice must be True or False"):
        restore(noisy, model=net, lattice="yes")


def test_a_lattice_pass_that_does_not_fit_in_memory_falls_back(monkeypatch):
    from napari_emdenoise.engine import predictor, restore

    def no_memory(*_args, **_kwargs):
        raise MemoryError

    rng = np.random.default_rng(14)
    x = rng.poisson(20.0, (64, 64)).astype(np.float32)
    net = blurring_net()
    wiener_only = restore(x, model=net, lattice=False)
    monkeypatch.setattr(predictor, "restore_lattice", no_memory)
    with pytest.warns(RuntimeWarning, match="lattice pass .* did not fit in memory") as record:
        out = restore(x, model=net)
    np.testing.assert_array_equal(out, wiener_only)
    assert record[0].filename == __file__  # the warning points at the caller of restore


def test_restore_dask_passes_the_flag_on():
    from napari_emdenoise.engine import restore, restore_dask

    rng = np.random.default_rng(15)
    stack = rng.poisson(10.0 + _fringes((96, 96), 4.0, 1.5), (2, 96, 96)).astype(np.float32)
    net = blurring_net()
    for lattice in (True, False):
        lazy = restore_dask(stack, model=net, lattice=lattice).compute()
        np.testing.assert_allclose(
            lazy, restore(stack, model=net, lattice=lattice), rtol=1e-5, atol=1e-4
        )
    assert _amplitude(restore_dask(stack, model=net).compute()[0], 4.0) > 0.7 * 1.5
    with pytest.raises(ValueError, match="lattice must be True or False"):
        restore_dask(stack, model=net, lattice=1)

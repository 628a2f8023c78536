"""Wiener refinement (engine/wiener.py): what it keeps, what it gives back, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.engine.wiener import WienerSettings, wiener_refine
from napari_emdenoise.evaluation import lattice_probe, psnr


def _lattice(rng: np.random.Generator, dose: float, size: int = 192):
    return lattice_probe(rng, size=size, spacing=8.0, width=1.2, dose=dose)


def test_a_perfect_pilot_gives_back_almost_nothing_of_the_noise():
    """Pilot = truth: the filter is the oracle Wiener filter, far better than the input."""
    p = _lattice(np.random.default_rng(0), dose=20.0)
    out = wiener_refine(p.noisy, p.clean)
    assert psnr(out, p.clean) > psnr(p.noisy, p.clean) + 8.0


def test_a_smoothed_pilot_gets_its_lost_lattice_back():
    """A pilot that attenuated the lattice: the refinement recovers most of what was lost."""
    p = _lattice(np.random.default_rng(1), dose=50.0)
    pilot = ndimage.gaussian_filter(p.clean, 1.0)  # fringes attenuated, not erased
    out = wiener_refine(p.noisy, pilot)
    assert psnr(out, p.clean) > psnr(pilot, p.clean) + 3.0
    assert psnr(out, p.clean) > psnr(p.noisy, p.clean) + 3.0


def test_an_erased_detail_stays_erased():
    """Where the pilot has no power the gain is ~0: nothing is invented, nothing comes back."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:128, :128]
    fringes = 10.0 * np.cos(2 * np.pi * xx / 4.0)  # period 4 px
    clean = 100.0 + fringes
    noisy = rng.poisson(clean).astype(np.float64)
    flat = np.full(clean.shape, 100.0)
    out = wiener_refine(noisy, flat)
    amp = np.abs(np.fft.fft2(out - out.mean()))[0, 32] / clean.size * 2
    assert amp < 1.0  # of 10 counts


def test_a_noise_free_image_is_returned_as_it_is():
    """No noise (a zero variance line): a pilot with half the contrast gets it all back."""
    p = _lattice(np.random.default_rng(3), dose=50.0)
    pilot = 0.5 * p.clean + 0.5 * p.clean.mean()
    out = wiener_refine(p.clean, pilot, noise_line=(0.0, 0.0))
    assert np.allclose(out, p.clean, rtol=1e-3, atol=1e-3 * p.clean.max())


def test_most_of_the_row_noise_the_network_removed_stays_removed():
    """Scan-line offsets removed by the pilot: at most 60 % of their amplitude comes back
    (through the lattice's own coefficients, where the pilot says there is signal)."""
    rng = np.random.default_rng(4)
    p = _lattice(rng, dose=200.0, size=256)
    rows = rng.normal(0.0, 6.0, (p.clean.shape[0], 1))  # one offset per scan line
    noisy = p.noisy + rows
    out = wiener_refine(noisy, p.clean)
    row_means = (out - p.clean).mean(axis=1)
    assert np.std(row_means) < 0.6 * np.std(rows)


def test_scale_and_offset_equivariance():
    """Counts or a·counts + b: the same restoration in the new unit."""
    p = _lattice(np.random.default_rng(5), dose=20.0)
    pilot = ndimage.gaussian_filter(p.noisy, 1.0)
    out = wiener_refine(p.noisy, pilot)
    a, b = 3.5, 1000.0
    out2 = wiener_refine(a * p.noisy + b, a * pilot + b)
    assert np.allclose(out2, a * out + b, rtol=1e-4, atol=1e-3 * a * np.ptp(out))


@pytest.mark.parametrize("shape", [(16, 16), (17, 300), (40, 50), (100, 64), (65, 129)])
def test_odd_and_small_frames_keep_their_shape(shape):
    x = np.random.default_rng(6).poisson(20.0, shape).astype(np.float64)
    pilot = np.full(shape, 20.0)
    out = wiener_refine(x, pilot)
    assert out.shape == shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert abs(float(out.mean()) - float(x.mean())) < 1.0


def test_tiny_frames_and_non_finite_pilots_return_the_pilot():
    x = np.ones((8, 8))
    assert np.array_equal(wiener_refine(x, 2 * x), 2 * x)
    big = np.random.default_rng(7).poisson(5.0, (64, 64)).astype(float)
    pilot = np.full(big.shape, 5.0)
    pilot[3, 3] = np.nan
    assert np.array_equal(wiener_refine(big, pilot), pilot.astype(np.float32), equal_nan=True)


def test_a_constant_frame_stays_constant():
    x = np.full((96, 96), 7.0)
    out = wiener_refine(x, x)
    assert np.allclose(out, 7.0)


def test_mismatched_or_wrong_dimensions_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        wiener_refine(np.zeros((32, 32)), np.zeros((32, 31)))
    with pytest.raises(ValueError, match="2-D"):
        wiener_refine(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))


@pytest.mark.parametrize(
    "kwargs",
    [{"block": 4}, {"block": 256}, {"step": 0}, {"block": 64, "step": 24}, {"kaiser_beta": -1}],
)
def test_settings_are_checked(kwargs):
    with pytest.raises(ValueError):
        WienerSettings(**kwargs)


def test_strips_do_not_change_the_result(monkeypatch):
    """Large frames are filtered strip by strip; the strip size must not matter."""
    from napari_emdenoise.engine import wiener

    p = _lattice(np.random.default_rng(8), dose=10.0, size=200)
    pilot = ndimage.gaussian_filter(p.noisy, 1.0)
    whole = wiener_refine(p.noisy, pilot)
    monkeypatch.setattr(wiener, "_STRIP_WINDOWS", 7)
    assert np.allclose(wiener_refine(p.noisy, pilot), whole, rtol=1e-5, atol=1e-4)


def test_zingers_the_network_removed_stay_removed():
    """Impulses (8+ noise deviations from the pilot, under 1 % of the pixels) are not given back."""
    rng = np.random.default_rng(9)
    p = _lattice(rng, dose=20.0, size=192)
    noisy = p.noisy.astype(np.float64).copy()
    idx = rng.choice(noisy.size, 40, replace=False)
    noisy.flat[idx] += 2000.0  # zingers
    out = wiener_refine(noisy, p.clean)
    assert np.max(np.abs(out - p.clean)) < 60.0  # of 2000
    # without the replacement part of each zinger spreads over its windows
    from napari_emdenoise.engine import wiener

    try:
        wiener.MAX_OUTLIER_FRACTION, saved = -1.0, wiener.MAX_OUTLIER_FRACTION
        spread = wiener_refine(noisy, p.clean)
    finally:
        wiener.MAX_OUTLIER_FRACTION = saved
    print(
        np.max(np.abs(spread - p.clean)),
        np.max(np.abs(out - p.clean)),
        np.std(spread - p.clean),
        np.std(out - p.clean),
    )
    assert np.std(out - p.clean) < np.std(spread - p.clean)


def test_signal_proportional_disagreement_is_damped():
    """A pilot that is the lattice *moved* by half a period at random rows (scan jitter in the
    raw frame): the refinement keeps closer to the pilot than a white-noise Wiener filter would."""
    rng = np.random.default_rng(10)
    yy, xx = np.mgrid[:256, :256].astype(float)
    jitter = rng.normal(0.0, 0.8, (256, 1))  # px, one per scan line
    clean = 100.0 + 60.0 * np.cos(2 * np.pi * xx / 8.0)
    raw = 100.0 + 60.0 * np.cos(2 * np.pi * (xx - jitter) / 8.0)
    noisy = rng.poisson(raw).astype(np.float64)
    out = wiener_refine(noisy, clean)
    # the jittered raw frame is 20+ dB from the truth; the pilot is exact
    assert psnr(out, clean) > psnr(noisy, clean) + 6.0


def _seam_ratio(error: np.ndarray, step: int) -> float:
    """Mean row-to-row jump of ``error`` across the window grid's boundaries over elsewhere."""
    jumps = np.abs(np.diff(error, axis=0)).mean(axis=1)
    at_seam = (np.arange(jumps.size) + 1) % step == 0
    return float(jumps[at_seam].mean() / jumps[~at_seam].mean())


def test_no_window_seams():
    """The windows are put back with a taper: the error shows no 32-px grid (with an untapered
    put-back the error jumps 20 % more across the window boundaries than elsewhere)."""
    ratios = {}
    for beta in (0.0, WienerSettings().kaiser_beta):
        seams = []
        for i in range(4):
            p = lattice_probe(
                np.random.default_rng([11, i]), size=256, spacing=9.7, width=1.5, dose=20.0
            )
            pilot = ndimage.gaussian_filter(p.noisy, 0.8)  # a crude denoiser as the pilot
            out = wiener_refine(p.noisy, pilot, WienerSettings(kaiser_beta=beta))
            seams.append(_seam_ratio(out - p.clean, WienerSettings().step))
        ratios[beta] = float(np.mean(seams))
    assert ratios[WienerSettings().kaiser_beta] < 1.06, ratios
    assert ratios[0.0] > ratios[WienerSettings().kaiser_beta] + 0.1, ratios  # the check can fail


def test_restore_refines_by_default_and_refuses_a_non_boolean_flag():
    """`restore` = network + refinement (Wiener filter, then the 2-pixel pattern step,
    with one noise line) + the lattice pass (tests/test_lattice.py); `refine=False` is
    the network alone."""
    import torch

    from napari_emdenoise.engine import restore, restore_dask
    from napari_emdenoise.engine.grid_pattern import remove_grid_pattern
    from napari_emdenoise.noise.variance import noise_variance_line

    net = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
    torch.nn.init.constant_(net.weight, 1 / 25)  # a 5×5 box filter: over-smooths the lattice
    p = _lattice(np.random.default_rng(12), dose=50.0, size=128)
    from napari_emdenoise.engine.lattice import restore_lattice

    alone = restore(p.noisy, model=net, refine=False)
    refined = restore(p.noisy, model=net, lattice=False)
    line = noise_variance_line(p.noisy.astype(np.float64), pilot=alone.astype(np.float64))
    expected = remove_grid_pattern(
        p.noisy, wiener_refine(p.noisy, alone, noise_line=line), noise_line=line
    )
    np.testing.assert_allclose(refined, expected, rtol=1e-5, atol=1e-4)
    default = restore(p.noisy, model=net)
    np.testing.assert_allclose(default, restore_lattice(p.noisy, refined), rtol=1e-5, atol=1e-4)
    assert psnr(refined, p.clean) > psnr(alone, p.clean) + 3.0
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="refine"):
            restore(p.noisy, model=net, refine=bad)
        with pytest.raises(ValueError, match="refine"):
            restore_dask(p.noisy, model=net, refine=bad)


def test_a_refinement_that_does_not_fit_in_memory_falls_back_to_the_network(monkeypatch):
    """Each step of the refinement that runs out of memory is skipped with a warning."""
    import torch

    from napari_emdenoise.engine import predictor, restore
    from napari_emdenoise.engine.grid_pattern import remove_grid_pattern
    from napari_emdenoise.noise.variance import noise_variance_line

    def no_memory(*_args, **_kwargs):
        raise MemoryError

    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = np.random.default_rng(13).poisson(20.0, (64, 64)).astype(np.float32)
    alone = restore(x, model=net, refine=False)
    line = noise_variance_line(x.astype(np.float64), pilot=alone.astype(np.float64))
    monkeypatch.setattr(predictor, "wiener_refine", no_memory)
    with pytest.warns(RuntimeWarning, match="Wiener refinement .* did not fit in memory") as record:
        out = restore(x, model=net, lattice=False)
    np.testing.assert_allclose(out, remove_grid_pattern(x, alone, noise_line=line), atol=1e-5)
    assert record[0].filename == __file__  # the warning points at the caller of restore
    monkeypatch.setattr(predictor, "remove_grid_pattern", no_memory)
    with pytest.warns(RuntimeWarning, match="2-pixel pattern step .* did not fit") as record:
        out = restore(x, model=net, lattice=False)
    np.testing.assert_array_equal(out, alone)
    assert all(r.filename == __file__ for r in record)

"""The keep-defects pass (engine/deviations.py) and the lattice pass's warning.

Each property is checked on data whose answer is known: a restoration that
averaged a lattice (vacancies filled, substitutions dimmed) must get its
defects back; one that removed only noise must be left alone; the pass must
not depend on the intensity unit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import blurring_net

from napari_emdenoise.engine.deviations import DeviationSettings, restore_deviations
from napari_emdenoise.evaluation import defect_contrast, defect_probe


def _cell_average(probe) -> np.ndarray:
    """The clean lattice averaged over unit cells: a restoration that erased every defect."""
    n, s = probe.clean.shape[0], int(probe.spacing)
    cells = probe.clean.reshape(n // s, s, n // s, s).mean(axis=(0, 2))
    return np.tile(cells, (n // s, n // s)).astype(np.float32)


@pytest.mark.parametrize("dose", [5.0, 20.0])
def test_defects_averaged_away_come_back(dose):
    p = defect_probe(np.random.default_rng([1, int(dose)]), spacing=8.0, dose=dose)
    averaged = _cell_average(p)
    before = defect_contrast(averaged, p)
    assert abs(before.vacancy) < 0.05 and abs(before.substitution) < 0.05
    after = defect_contrast(restore_deviations(p.noisy, averaged), p)
    assert after.vacancy > 0.9, after
    assert after.substitution > (0.6 if dose == 5.0 else 0.85), after


def test_a_restoration_that_removed_only_noise_is_left_alone():
    # The clean image as the "restoration": the residual is pure Poisson noise, and
    # only the false alarms of a 3-σ test may put some of it back.
    def noise_back(noisy, clean):
        out = restore_deviations(noisy, clean).astype(np.float64)
        return np.sum((out - clean) ** 2) / np.sum((noisy - clean) ** 2.0)

    shares = []
    for seed in range(5):
        p = defect_probe(np.random.default_rng([2, seed]), spacing=8.0, dose=20.0)
        shares.append(noise_back(p.noisy, p.clean.astype(np.float32)))
    assert max(shares) < 0.02, shares
    # and on flat noise the same
    x = np.random.default_rng(3).poisson(10.0, (128, 128)).astype(np.float32)
    assert noise_back(x, np.full_like(x, 10.0)) < 0.02


def test_impulses_the_restoration_removed_stay_removed():
    # Zingers and dead pixels on a defect lattice: the restoration (here the clean image
    # with its defects) removed them; the pass must not put them back.
    p = defect_probe(np.random.default_rng(11), spacing=8.0, dose=20.0)
    raw = p.noisy.copy()
    rng = np.random.default_rng(12)
    rows, cols = rng.integers(4, 252, 40), rng.integers(4, 252, 40)
    raw[rows[:20], cols[:20]] += 2000.0  # zingers
    raw[rows[20:], cols[20:]] = 0.0  # dead pixels on bright and dark spots
    clean = p.clean.astype(np.float32)
    out = restore_deviations(raw, clean)
    assert np.max(np.abs(out[rows[:20], cols[:20]] - clean[rows[:20], cols[:20]])) < 50.0


def test_a_stricter_threshold_changes_less():
    p = defect_probe(np.random.default_rng(4), spacing=8.0, dose=5.0)
    averaged = _cell_average(p)
    loose = restore_deviations(p.noisy, averaged, DeviationSettings(threshold=2.0))
    strict = restore_deviations(p.noisy, averaged, DeviationSettings(threshold=8.0))
    assert np.sum(loose != averaged) > np.sum(strict != averaged) > 0


def test_the_pass_does_not_depend_on_the_intensity_unit():
    from scipy import ndimage

    p = defect_probe(np.random.default_rng(5), spacing=8.0, dose=10.0)
    # A blurred frame as the restoration (the columns are smeared: the pass has work);
    # its values are continuous, as a restoration's are (a cell average has only 64).
    averaged = ndimage.gaussian_filter(p.noisy, 1.5).astype(np.float32)
    out = restore_deviations(p.noisy, averaged).astype(np.float64)
    span = np.ptp(out)
    for a, b in ((0.01, 0.0), (3.0, 1000.0)):  # e⁻ → a grey scale; counts with an offset
        scaled = restore_deviations(
            (a * p.noisy.astype(np.float64) + b).astype(np.float32),
            (a * averaged.astype(np.float64) + b).astype(np.float32),
        ).astype(np.float64)
        assert np.max(np.abs((scaled - b) / a - out)) < 1e-3 * span, (a, b)


def test_small_non_finite_and_mismatched_frames():
    small = np.ones((8, 8), np.float32)
    np.testing.assert_array_equal(restore_deviations(small, small * 2), small * 2)
    x = np.random.default_rng(6).poisson(5.0, (32, 32)).astype(np.float32)
    x[3, 3] = np.nan
    np.testing.assert_array_equal(restore_deviations(x, np.full_like(x, 5.0)), 5.0)
    with pytest.raises(ValueError, match="one shape"):
        restore_deviations(np.zeros((32, 32)), np.zeros((32, 33)))
    with pytest.raises(ValueError, match="one shape"):
        restore_deviations(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))
    for bad in ({"scale": 0.1}, {"scale": 20}, {"threshold": 1.0}, {"threshold": "3"}):
        with pytest.raises(ValueError):
            DeviationSettings(**bad)


def test_restore_warns_when_the_lattice_pass_rebuilt_the_image_and_keeps_defects_on_request():
    from napari_emdenoise.engine import restore

    # Sharp columns every 4 px: the box filter erases the lattice, the lattice pass
    # rebuilds it from its 32-px average and fills the vacancies.
    p = defect_probe(np.random.default_rng(7), spacing=4.0, width=0.7, dose=20.0)
    net = blurring_net()
    with pytest.warns(RuntimeWarning, match="keep_defects=True"):
        default = restore(p.noisy, model=net)
    assert defect_contrast(default, p).vacancy < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        kept = restore(p.noisy, model=net, keep_defects=True)
    assert defect_contrast(kept, p).vacancy > 0.8
    np.testing.assert_array_equal(kept, restore_deviations(p.noisy, default))
    with pytest.raises(ValueError, match="keep_defects must be True or False"):
        restore(p.noisy, model=net, keep_defects="yes")


def test_no_warning_when_the_network_kept_the_lattice():
    from napari_emdenoise.engine import restore

    p = defect_probe(np.random.default_rng(8), spacing=12.0, width=1.5, dose=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        restore(p.noisy, model="hrstem", device="cpu")


def test_restore_dask_passes_keep_defects_on():
    from napari_emdenoise.engine import restore, restore_dask

    p = defect_probe(np.random.default_rng(9), spacing=4.0, width=0.7, dose=20.0, size=96)
    stack = np.stack([p.noisy, p.noisy[::-1]])
    net = blurring_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for keep in (True, False):
            lazy = restore_dask(stack, model=net, keep_defects=keep).compute()
            np.testing.assert_allclose(
                lazy, restore(stack, model=net, keep_defects=keep), rtol=1e-5, atol=1e-4
            )
    with pytest.raises(ValueError, match="keep_defects must be True or False"):
        restore_dask(stack, model=net, keep_defects=1)


def test_a_keep_defects_pass_that_does_not_fit_in_memory_falls_back(monkeypatch):
    from napari_emdenoise.engine import predictor, restore

    def no_memory(*_args, **_kwargs):
        raise MemoryError

    x = np.random.default_rng(10).poisson(20.0, (64, 64)).astype(np.float32)
    net = blurring_net()
    default = restore(x, model=net)
    monkeypatch.setattr(predictor, "restore_deviations", no_memory)
    with pytest.warns(RuntimeWarning, match="keep-defects pass .* did not fit in memory") as record:
        out = restore(x, model=net, keep_defects=True)
    np.testing.assert_array_equal(out, default)
    assert record[0].filename == __file__  # the warning points at the caller of restore

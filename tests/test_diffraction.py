"""Synthetic 4D-STEM patterns (napari_emdenoise.synth.diffraction) and their training pairs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.synth.diffraction import (
    DiffractionConfig,
    make_diffraction_pair,
    simulate_4dstem,
)


def _centre_of_mass(p: np.ndarray) -> np.ndarray:
    yy, xx = np.indices(p.shape)
    return np.array([(yy * p).sum(), (xx * p).sum()]) / p.sum()


def test_simulate_4dstem_contract():
    noisy, clean, cal = simulate_4dstem((4, 5), (32, 48), 500.0, rng=np.random.default_rng(1))
    assert noisy.shape == clean.shape == (4, 5, 32, 48)
    assert noisy.dtype == clean.dtype == np.float32
    for key, kind in (("scan_step", float), ("detector_step", float)):
        assert isinstance(cal[key], kind) and cal[key] > 0
    assert cal["scan_units"] == "Å" and cal["detector_units"] == "mrad"
    # every clean pattern carries the dose; the noisy total scatters around it
    np.testing.assert_allclose(clean.sum((2, 3)), 500.0, rtol=1e-4)
    assert (clean >= 0).all() and np.isfinite(noisy).all()
    assert abs(noisy.sum((2, 3)).mean() - 500.0) < 0.2 * 500.0


def test_simulation_is_seeded_and_varies_across_the_scan():
    a = simulate_4dstem((6, 6), (64, 64), 1e4, rng=7)
    b = simulate_4dstem((6, 6), (64, 64), 1e4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    clean = a[1]
    # patterns change across the scan (orientation, thickness, beam shift) ...
    assert np.abs(clean[0, 0] - clean[-1, -1]).sum() > 0.05 * clean[0, 0].sum()
    # ... but neighbours stay similar (smooth changes within a grain)
    c = simulate_4dstem((6, 6), (64, 64), 1e4, rng=8)[1]
    assert not np.array_equal(c, clean)


def test_noise_is_poisson_like_around_the_clean_counts():
    """Counting detector without defects: the noisy scan averages to the clean one."""
    cfg = DiffractionConfig(
        counting_probability=1.0,
        defect_fraction_range=(0.0, 0.0),
        saturation_probability=0.0,
        vacuum_probability=1.0,
        max_grains=1,
    )
    noisy, clean, cal = simulate_4dstem((8, 8), (32, 32), 2000.0, config=cfg, rng=3)
    assert cal["detector"] == "counting"
    assert np.array_equal(noisy, np.round(noisy))  # counts are integers
    resid = (noisy - clean) / np.sqrt(clean + 1e-3)
    bright = clean > 5
    assert abs(resid[bright].mean()) < 0.1 and 0.8 < resid[bright].std() < 1.2


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_pair_any_pattern_size(size):
    noisy, clean = make_diffraction_pair((size, size), 1000.0, rng=size)
    assert noisy.shape == clean.shape == (size, size)
    assert noisy.dtype == clean.dtype == np.float32
    assert clean.sum() == pytest.approx(1000.0, rel=1e-4)
    # the brightest feature is the transmitted disk, near the detector centre
    com = _centre_of_mass(clean)
    assert np.all(np.abs(com - (size - 1) / 2) < 0.3 * size)


def test_pair_draws_dose_when_counts_is_none():
    totals = [make_diffraction_pair((32, 32), None, rng=i)[1].sum() for i in range(12)]
    assert 10.0 <= min(totals) and max(totals) <= 1e5
    assert max(totals) / min(totals) > 10  # log-uniform over four decades


def test_overlapping_and_separated_disks():
    """Large convergence: the transmitted disk is wide; small convergence: it is narrow."""

    def radius(cfg: DiffractionConfig, seed: int) -> float:
        _, _, cal = simulate_4dstem((1, 1), (64, 64), 100.0, config=cfg, rng=seed)
        return cal["convergence_mrad"] / cal["detector_step"]

    wide = [radius(DiffractionConfig(overlap_probability=1.0), s) for s in range(6)]
    narrow = [radius(DiffractionConfig(overlap_probability=0.0), s) for s in range(6)]
    assert min(wide) > max(narrow) * 0.9 and np.median(wide) > 2 * np.median(narrow)


def _specimen_and_state(overlap: bool, coherence: float):
    from dataclasses import replace

    from napari_emdenoise.synth._diffraction_crystal import CrystalState, draw_specimen

    rng = np.random.default_rng(3)
    spec = draw_specimen(
        rng, (64, 64), overlap_probability=float(overlap), coherent_probability=float(overlap)
    )
    if overlap:
        assert spec.phases is not None and 0.5 <= spec.coherence <= 1.0
    phases = spec.phases if spec.phases is not None else rng.uniform(-3, 3, len(spec.hk))
    spec = replace(spec, coherence=coherence, phases=phases, defocus=150.0)
    return spec, CrystalState(centre=(31.5, 31.5), thickness=300.0)


def test_coherent_sum_changes_nothing_where_disks_do_not_overlap():
    from dataclasses import replace

    from napari_emdenoise.synth._diffraction_crystal import render_pattern

    spec, state = _specimen_and_state(overlap=False, coherence=1.0)
    coherent = render_pattern(spec, replace(state, probe_position=(1.3, 2.1)), (64, 64))
    incoherent = render_pattern(replace(spec, coherence=0.0), state, (64, 64))
    np.testing.assert_allclose(coherent, incoherent, atol=1e-12)


def test_overlapping_coherent_disks_depend_on_the_probe_position():
    """Large-convergence CBED: the overlaps interfere, so the pattern changes within a cell."""
    from dataclasses import replace

    from napari_emdenoise.synth._diffraction_crystal import render_pattern

    spec, state = _specimen_and_state(overlap=True, coherence=1.0)
    a = render_pattern(spec, state, (64, 64))
    b = render_pattern(spec, replace(state, probe_position=(0.7, 1.1)), (64, 64))
    assert np.isclose(a.sum(), 1.0) and np.isclose(b.sum(), 1.0) and a.min() >= 0
    assert np.abs(a - b).sum() > 0.05  # > 5 % of the electrons move
    flat = replace(spec, coherence=0.0)
    np.testing.assert_allclose(
        render_pattern(flat, state, (64, 64)),
        render_pattern(flat, replace(state, probe_position=(0.7, 1.1)), (64, 64)),
        atol=1e-12,
    )


def test_default_config_draws_incoherent_patterns_as_before():
    """coherent_probability = 0 (the default) draws no extra random numbers."""
    a = simulate_4dstem((2, 2), (32, 32), 500.0, rng=11)
    b = simulate_4dstem(
        (2, 2), (32, 32), 500.0, rng=11, config=DiffractionConfig(coherent_probability=0.0)
    )
    c = simulate_4dstem(
        (2, 2),
        (32, 32),
        500.0,
        rng=11,
        config=DiffractionConfig(overlap_probability=1.0, coherent_probability=1.0),
    )
    np.testing.assert_array_equal(a[1], b[1])
    # the value the generator gave before coherent overlaps existed: seeded streams (and the
    # held-out synthetic sets of benchmarks/stem4d_quality.py) are unchanged
    energy = float((a[1].astype(np.float64) ** 2).sum())
    assert energy == pytest.approx(1506.9888742331696, rel=1e-9)
    assert not np.allclose(a[1], c[1])


def test_detector_defects():
    cfg = DiffractionConfig(defect_fraction_range=(0.01, 0.01), saturation_probability=0.0)
    noisy, clean, _ = simulate_4dstem((3, 3), (64, 64), 1e5, config=cfg, rng=5)
    dead = (noisy == 0).all(axis=(0, 1)) & (clean > 20).all(axis=(0, 1))
    assert dead.any()  # some bright pixels always read 0: dead pixels at fixed positions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scan_shape": (0, 4)}, "scan_shape"),
        ({"scan_shape": (4,)}, "scan_shape"),
        ({"pattern_shape": (8, 8)}, "pattern_shape"),
        ({"pattern_shape": (64.0, 64)}, "integers"),
        ({"counts": -5.0}, "counts"),
        ({"counts": float("nan")}, "counts"),
        ({"config": "x"}, "config"),
        ({"config": {"overlap_probability": 2.0}}, "overlap_probability"),
        ({"config": {"coherent_probability": -0.1}}, "coherent_probability"),
        ({"config": {"overlap_ratio_range": (0.3, 1.0)}}, "overlap_ratio_range"),
        ({"config": {"defocus_range": (0.0, 1e4)}}, "defocus_range"),
        ({"rng": "seed"}, "rng"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_4dstem(**kwargs)


def test_training_pairs_for_diffraction():
    from napari_emdenoise.training.datasets import PairConfig, SyntheticPairs, make_training_pair

    cfg = PairConfig(modality="diffraction", patch_size=32, seed=4)
    x1, y1, rec = make_training_pair(cfg, 5, "train", return_params=True)
    x2, y2 = make_training_pair(cfg, 5, "train")
    np.testing.assert_array_equal(x1, x2)
    assert y1.sum() == pytest.approx(rec["counts"], rel=1e-4)
    xt, yt = make_training_pair(cfg, 5, "test")
    assert not np.array_equal(yt, y1)  # splits are disjoint streams
    assert PairConfig.from_dict(cfg.to_dict()) == cfg
    x, y = SyntheticPairs(cfg)[0]
    assert tuple(x.shape) == (1, 32, 32)
    with pytest.raises(ValueError, match="diffraction"):
        PairConfig(modality="stem", diffraction={})

"""Fitting the Poisson–Gaussian noise model to an image (noise/fit.py) and `emdenoise fit-noise`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_emdenoise.noise import NoiseParams, distort
from napari_emdenoise.noise.fit import NoiseFit, RowStats, fit_noise
from napari_emdenoise.noise.stem import (
    DetectorNoiseParams,
    RowLinesParams,
    detector_noise,
    fast_scan_psf,
    row_lines,
)
from napari_emdenoise.noise.tem import (
    ResetNoiseParams,
    ShotNoiseParams,
    ThermalNoiseParams,
    reset_noise,
    shot_noise,
    thermal_noise,
)
from napari_emdenoise.synth import generate_clean


# -- helpers -------------------------------------------------------------------
def steps(shape=(512, 512), levels=8, low=0.1, high=1.0) -> np.ndarray:
    """Piecewise-flat clean image: vertical bands of ``levels`` intensities."""
    h, w = shape
    values = np.linspace(low, high, levels)
    band = np.repeat(values, -(-w // levels))[:w]
    return np.tile(band, (h, 1)).astype(np.float32)


def noisy(clean, modality, dose, read_e, seed):
    """Our simulator: S(T)EM detector noise, or TEM shot + thermal noise (read_e in e⁻)."""
    rng = np.random.default_rng(seed)
    if modality == "tem":
        alpha = dose / float(clean.mean())
        x = shot_noise(clean, ShotNoiseParams(dose=dose), rng)
        return thermal_noise(x, ThermalNoiseParams(sigma=read_e / alpha), rng)
    return detector_noise(clean, DetectorNoiseParams(dose=dose, sigma_pmt=read_e), rng)


def rel(value, truth):
    return abs(value / truth - 1.0)


# -- recovery of dose and read noise --------------------------------------------
@pytest.mark.parametrize("modality", ["stem", "tem"])
@pytest.mark.parametrize("dose", [5.0, 50.0, 500.0])
def test_recovers_dose_and_read_noise_on_flat_levels(modality, dose):
    read_e = math.sqrt(0.5 * dose)  # read variance = half the shot variance at the mean
    clean = steps()
    fit = fit_noise(noisy(clean, modality, dose, read_e, seed=1), modality=modality)
    assert fit.well_conditioned, fit.message
    assert rel(fit.dose, dose) < 0.10
    assert rel(fit.read_noise_e, read_e) < 0.10
    # exact relations of our simulator: a = 1/α, b = (σ_e/α)²
    alpha = dose / float(clean.mean())
    assert rel(fit.gain, 1.0 / alpha) < 0.10
    assert rel(fit.read_noise, read_e / alpha) < 0.10


@pytest.mark.parametrize("modality", ["stem", "tem"])
@pytest.mark.parametrize("dose", [5.0, 50.0, 500.0])
def test_recovers_dose_on_a_structured_hr_image(modality, dose):
    # seed 3: crystalline, 0.1 Å pixels, block means spanning ±40 % of the mean. Over
    # random HR images the fit is well conditioned for about 2/3 of them (see the report);
    # this fixed seed guards the structured case against regressions.
    clean = generate_clean("hr", (512, 512), rng=3)
    read_e = math.sqrt(0.5 * dose)
    fit = fit_noise(noisy(clean, modality, dose, read_e, seed=2), modality=modality)
    assert fit.well_conditioned, fit.message
    assert rel(fit.dose, dose) < 0.10
    assert rel(fit.read_noise_e, read_e) < 0.15


def _hr_with_flat_region(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hard HR image (sharp columns, narrow range) next to flat bands; mask = the bands."""
    clean = generate_clean("hr", (512, 512), rng=seed)
    clean[:, 320:] = steps((512, 192), levels=6, low=0.1, high=1.0)
    mask = np.zeros(clean.shape, dtype=bool)
    mask[:, 320:] = True
    return clean, mask


@pytest.mark.parametrize("dose", [5.0, 50.0, 500.0])
def test_mask_path_recovers_dose_next_to_hard_structure(dose):
    clean, mask = _hr_with_flat_region()
    read_e = math.sqrt(0.5 * dose)
    y = noisy(clean, "stem", dose, read_e, seed=3)
    fit = fit_noise(y, mask)
    assert fit.well_conditioned, fit.message
    assert rel(fit.dose, dose) < 0.10
    assert rel(fit.read_noise_e, read_e) < 0.10
    # the dose refers to the whole image's mean, not to the masked region's
    assert fit.image_mean == pytest.approx(float(y.mean()), rel=1e-6)


def test_mask_restricts_the_fit_to_its_pixels():
    clean = steps((256, 512))
    left = detector_noise(
        clean, DetectorNoiseParams(dose=10.0, sigma_pmt=1.0), np.random.default_rng(0)
    )
    right = detector_noise(
        clean, DetectorNoiseParams(dose=200.0, sigma_pmt=1.0), np.random.default_rng(1)
    )
    image = np.concatenate([left, right], axis=0)  # top: 10 e⁻/px, bottom: 200 e⁻/px
    top = np.zeros(image.shape, dtype=bool)
    top[:256] = True
    fit_top, fit_bottom = fit_noise(image, top), fit_noise(image, ~top)
    assert rel(fit_top.gain, float(clean.mean()) / 10.0) < 0.10
    assert rel(fit_bottom.gain, float(clean.mean()) / 200.0) < 0.10
    # every fitted block lies inside its mask: half of the image's blocks each
    whole = fit_noise(image)
    assert fit_top.n_blocks + fit_bottom.n_blocks <= whole.n_blocks
    assert fit_top.n_blocks < 0.6 * whole.n_blocks


def test_dose_is_independent_of_units_and_offset():
    clean = steps()
    y = noisy(clean, "stem", 40.0, 3.0, seed=4)
    fit = fit_noise(y)
    scaled = fit_noise(y * 123.0 + 1000.0, offset=1000.0)
    assert scaled.dose == pytest.approx(fit.dose, rel=1e-3)
    assert scaled.read_noise_e == pytest.approx(fit.read_noise_e, rel=1e-3)
    assert scaled.gain == pytest.approx(123.0 * fit.gain, rel=1e-3)


def test_a_forgotten_dark_level_gives_negative_read_variance_clipped_to_zero():
    clean = steps()
    counts = noisy(clean, "stem", 50.0, 0.0, seed=5)
    y = counts + 0.5  # dark level 0.5 (image units) not passed as offset
    fit = fit_noise(y)
    assert fit.read_variance == 0.0
    assert "negative" in fit.message
    right = fit_noise(y, offset=0.5)
    assert rel(right.dose, 50.0) < 0.05
    assert right.read_noise_e < 0.5


def test_one_flat_region_is_ill_conditioned_but_gives_a_lower_bound():
    flat = np.full((256, 256), 0.5, dtype=np.float32)
    y = noisy(flat, "stem", 50.0, 5.0, seed=6)  # read variance 25 e⁻², shot 50
    fit = fit_noise(y)
    assert not fit.well_conditioned
    assert fit.read_variance == 0.0
    assert "cannot be separated" in fit.message and "lower bound" in fit.message
    # all the variance is taken as shot noise: dose ≈ 50²/(50 + 25)
    assert rel(fit.dose, 50.0 * 50.0 / 75.0) < 0.05
    # with the read noise known (e.g. from a dark frame) the dose is recovered
    known = fit_noise(y, read_noise=5.0 * 0.5 / 50.0)  # σ_e / α in image units
    assert known.well_conditioned
    assert rel(known.dose, 50.0) < 0.05
    # it still converts into valid parameters
    fit.to_noise_params().validate()


def test_pure_gaussian_noise_does_not_crash():
    y = 0.5 + 0.01 * np.random.default_rng(7).standard_normal((128, 128))
    fit = fit_noise(y)
    assert fit.dose > 1e3
    params = fit.to_noise_params("stem", clean_mean=0.5)
    assert params["detector_noise"].dose <= 1e7  # clipped into the parameter's limits


# -- conversion to NoiseParams --------------------------------------------------
def _fit(**kw) -> NoiseFit:
    rows = RowStats(500, 0.0, 0.0, False, 0, (), math.nan, math.nan, 0.0, 16)
    values = dict(
        modality="stem", gain=0.02, gain_stderr=0.001, read_variance=0.0016,
        read_variance_stderr=0.0, offset=0.1, image_mean=1.1, n_blocks=100, block=16,
        bin_means=(), bin_vars=(), bin_counts=(), well_conditioned=True, message="",
        noise_correlation=0.0, rows=rows,
    )  # fmt: skip
    values.update(kw)
    return NoiseFit(**values)


def test_conversion_formulas():
    fit = _fit()  # signal 1.0, a = 0.02 → dose 50 e⁻, √b = 0.04 → read noise 2 e⁻
    assert fit.dose == pytest.approx(50.0)
    assert fit.read_noise_e == pytest.approx(2.0)
    stem_p = fit.to_noise_params("stem", clean_mean=0.3)
    assert stem_p["detector_noise"].dose == pytest.approx(50.0)
    assert stem_p["detector_noise"].sigma_pmt == pytest.approx(2.0)
    assert not stem_p["row_lines"].enabled and not stem_p["scan_jitter"].enabled
    tem_p = fit.to_noise_params("tem", clean_mean=0.3)
    assert tem_p["shot_noise"].dose == pytest.approx(50.0)
    # σ_thermal = clean_mean · read_noise_e / dose: read noise keeps its ratio to the signal
    assert tem_p["thermal_noise"].sigma == pytest.approx(0.3 * 2.0 / 50.0)
    assert tem_p["thermal_noise"].enabled and not tem_p["reset_noise"].enabled


def test_conversion_compensates_the_fast_scan_blur_of_the_base():
    base = NoiseParams.default("stem")
    g = float(np.sum(fast_scan_psf(base["fast_scan_blur"]) ** 2))
    p = _fit().to_noise_params("stem", base=base)
    assert p["detector_noise"].dose == pytest.approx(g * 50.0)
    assert p["detector_noise"].sigma_pmt == pytest.approx(math.sqrt(g) * 2.0)
    assert p["scan_jitter"] == base["scan_jitter"]  # layers the fit does not set are kept


def test_conversion_clips_into_parameter_limits_and_checks_arguments():
    p = _fit(gain=1e-12).to_noise_params("stem")  # absurd: dose 1e12, σ 4e10 e⁻
    assert p["detector_noise"].dose == 1e7 and p["detector_noise"].sigma_pmt == 1e4
    with pytest.raises(ValueError, match="clean_mean"):
        _fit().to_noise_params(clean_mean=0.0)
    with pytest.raises(ValueError, match="base parameters are for 'tem'"):
        _fit().to_noise_params("stem", base=NoiseParams.default("tem"))


@pytest.mark.parametrize(
    "modality, base",
    [("stem", None), ("tem", None), ("sem", "default"), ("stem", "blur only")],
)
def test_round_trip_fit_convert_distort_fit(modality, base):
    clean = steps()
    y = noisy(clean, "tem" if modality == "tem" else "stem", 30.0, 4.0, seed=8)
    fit = fit_noise(y, modality=modality)
    if base == "default":
        base_params = NoiseParams.default(modality)
    elif base == "blur only":
        off = {n: p.replace(enabled=False) for n, p in NoiseParams.default(modality).layers.items()}
        off["fast_scan_blur"] = off["fast_scan_blur"].replace(enabled=True)
        base_params = NoiseParams(modality, off)
    else:
        base_params = None
    params = fit.to_noise_params(base=base_params, clean_mean=float(clean.mean()))
    again = fit_noise(distort(clean, modality, params, rng=9), modality=modality)
    tol = 0.15 if base == "default" else 0.10  # full default pipeline: clip, zingers, ...
    assert rel(again.dose, fit.dose) < tol
    assert rel(again.read_noise_e, fit.read_noise_e) < tol + 0.05


# -- row statistics --------------------------------------------------------------
def test_row_lines_are_found_when_present_and_not_otherwise():
    clean = np.full((512, 512), 0.5, dtype=np.float32)
    y = noisy(clean, "stem", 200.0, 1.0, seed=10)
    lines = RowLinesParams(n_lines=12, max_length=0.5, factor_min=0.55, factor_max=0.75)
    with_lines = row_lines(y, lines, np.random.default_rng(11))
    truth = np.flatnonzero(np.any(with_lines != y, axis=1))
    off, on = fit_noise(y), fit_noise(with_lines)
    assert off.rows.n_lines == 0
    assert not off.to_noise_params()["row_lines"].enabled
    assert on.rows.n_lines >= 0.75 * truth.size
    assert set(on.rows.line_rows) <= set(truth.tolist())
    assert 0.45 <= on.rows.factor_min <= on.rows.factor_max <= 0.85
    p = on.to_noise_params(target_rows=256)
    rl = p["row_lines"]
    assert rl.enabled and rl.n_lines == round(on.rows.n_lines * 256 / on.rows.n_rows)
    assert (rl.factor_min, rl.factor_max) == pytest.approx((on.rows.factor_min, on.rows.factor_max))
    # the dose is not disturbed by the lines
    assert rel(on.dose, off.dose) < 0.05
    # same result when the slow-scan axis is the array's axis 1
    assert fit_noise(with_lines.T, slow_axis=1).rows.line_rows == on.rows.line_rows


def test_tem_reset_noise_is_measured_and_converted():
    clean = steps((512, 512))
    y = noisy(clean, "tem", 50.0, 0.0, seed=12)
    with_reset = reset_noise(y, ResetNoiseParams(sigma=0.01), np.random.default_rng(13))
    assert not fit_noise(y, modality="tem").rows.offsets_significant
    fit = fit_noise(with_reset, modality="tem")
    assert fit.rows.offsets_significant
    assert rel(fit.rows.offset_std, 0.01) < 0.15
    assert rel(fit.dose, 50.0) < 0.10  # differences along the rows cancel the offsets
    p = fit.to_noise_params(clean_mean=float(clean.mean()))
    assert p["reset_noise"].enabled
    assert rel(p["reset_noise"].sigma, 0.01) < 0.15


# -- bad input ---------------------------------------------------------------------
_RANDOM = np.random.default_rng(0).random((64, 64))


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.full((64, 64), np.nan), {}, "NaN"),
        (np.ones((4, 64, 64)), {}, "2-D"),
        (np.ones((20, 20)), {}, "too small"),
        (np.full((64, 64), 3.0), {}, "constant"),
        (_RANDOM, {"mask": np.zeros((64, 64), bool)}, "no pixels"),
        (_RANDOM, {"mask": np.ones((32, 32), bool)}, "mask of shape"),
        (_RANDOM, {"offset": 5.0}, "dark level"),
        (_RANDOM, {"block": 2}, "block"),
        (_RANDOM, {"modality": "xray"}, "modality"),
        (_RANDOM, {"slow_axis": 2}, "slow_axis"),
    ],
)
def test_bad_input_raises_a_clear_value_error(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_noise(image, **kwargs)


def test_a_mask_keeping_only_a_few_pixels_is_rejected():
    y = np.random.default_rng(0).poisson(20.0, (128, 128)).astype(np.float32)
    mask = np.zeros(y.shape, dtype=bool)
    mask[10:20, 10:20] = True
    with pytest.raises(ValueError, match="block"):
        fit_noise(y, mask)


def test_to_dict_is_json_serialisable():
    import json

    fit = fit_noise(noisy(steps((128, 128)), "stem", 20.0, 1.0, seed=14))
    data = json.loads(json.dumps(fit.to_dict()))
    assert data["dose"] == pytest.approx(fit.dose)
    assert len(data["bin_means"]) == len(data["bin_vars"]) == len(fit.bin_means) >= 3


# -- command line --------------------------------------------------------------------
def test_cli_fit_noise_writes_settings_for_training(tmp_path, capsys):
    import tifffile

    from napari_emdenoise.cli import main

    clean = steps()
    y = noisy(clean, "stem", 30.0, 3.0, seed=15) * 1000.0 + 100.0  # detector units, dark 100
    path = tmp_path / "micrograph.tif"
    tifffile.imwrite(path, y.astype(np.float32))
    out = tmp_path / "noise.json"
    rc = main(["fit-noise", str(path), "--offset", "100", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dose" in printed and "well conditioned" in printed
    params = NoiseParams.load(out)
    assert params.modality == "stem"
    assert rel(params["detector_noise"].dose, 30.0) < 0.10
    assert rel(params["detector_noise"].sigma_pmt, 3.0) < 0.15
    # the dark level can also be estimated from the data
    out_auto = tmp_path / "noise_auto.json"
    assert main(["fit-noise", str(path), "--offset", "auto", "--out", str(out_auto)]) == 0
    # (less precise than with the known dark level: one more free parameter)
    assert rel(NoiseParams.load(out_auto)["detector_noise"].dose, 30.0) < 0.25
    assert main(["fit-noise", str(path), "--offset", "dark"]) == 2  # neither a number nor auto
    capsys.readouterr()
    # a stack is refused with a clear message, not a traceback
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([y, y]).astype(np.float32))
    assert main(["fit-noise", str(stack)]) == 2
    assert "2-D image" in capsys.readouterr().err

"""The noise fit on detectors with a dark level (DC offset), as real HAADF data have."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_emdenoise.noise.fit import fit_noise


def _haadf(dose: float, offset: float, gain: float, read_e: float, seed: int) -> np.ndarray:
    """Counts of a scanned image: steps of signal, ``dose`` e⁻/px at the mean, a dark level."""
    rng = np.random.default_rng(seed)
    band = np.repeat(np.linspace(0.2, 1.0, 8), 32)
    clean = np.tile(band, (256, 1))
    electrons = rng.poisson(dose * clean / clean.mean()) + rng.normal(0, read_e, clean.shape)
    return offset + gain * electrons


def test_a_large_dark_level_is_flagged_not_reported_as_well_conditioned():
    image = _haadf(dose=25.0, offset=2.9e6, gain=1000.0, read_e=0.3, seed=0)
    fit = fit_noise(image, modality="stem")  # assumes a dark level of 0
    assert not fit.well_conditioned
    assert fit.implied_offset == pytest.approx(2.9e6, rel=0.01)
    assert "dark level" in fit.message and "implausible" in fit.summary()


def test_auto_offset_recovers_the_dose():
    image = _haadf(dose=25.0, offset=2.9e6, gain=1000.0, read_e=0.3, seed=1)
    fit = fit_noise(image, modality="stem", offset="auto")
    assert fit.offset_estimated and fit.well_conditioned
    assert fit.offset == pytest.approx(2.9e6, rel=0.005)
    assert fit.dose == pytest.approx(25.0, rel=0.10)
    assert "estimated" in fit.summary() and math.isnan(fit.implied_offset)
    # the known dark level gives the same answer
    known = fit_noise(image, modality="stem", offset=2.9e6)
    assert known.dose == pytest.approx(25.0, rel=0.10) and known.well_conditioned


def test_auto_offset_keeps_zero_when_there_is_read_noise_and_no_dark_level():
    image = _haadf(dose=40.0, offset=0.0, gain=1.0, read_e=3.0, seed=2)
    fit = fit_noise(image, modality="stem", offset="auto")
    assert fit.offset == 0.0 and fit.read_noise_e == pytest.approx(3.0, rel=0.15)
    plain = fit_noise(image, modality="stem")
    assert plain.well_conditioned and math.isnan(plain.implied_offset)
    assert plain.dose == pytest.approx(fit.dose)


def test_bad_offset_values_are_refused():
    image = _haadf(dose=40.0, offset=0.0, gain=1.0, read_e=1.0, seed=3)
    with pytest.raises(ValueError, match="'auto'"):
        fit_noise(image, offset="guess")
    with pytest.raises(ValueError, match="read_noise"):
        fit_noise(image, offset="auto", read_noise=1.0)

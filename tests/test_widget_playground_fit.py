"""The playground's *Fit noise to image* in a real napari viewer, opened from the Plugins menu."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.noise.stem import DetectorNoiseParams, detector_noise, fast_scan_psf
from napari_emdenoise.noise.tem import ShotNoiseParams, shot_noise


@pytest.fixture
def fit_playground(playground):
    """The shared playground, showing only clean + distorted (fewer layers to redraw)."""
    viewer, widget, qtbot = playground
    widget.show_stages.value = False
    return viewer, widget, qtbot


def _steps(shape=(256, 256), levels=8) -> np.ndarray:
    band = np.repeat(np.linspace(0.1, 1.0, levels), -(-shape[1] // levels))[: shape[1]]
    return np.tile(band, (shape[0], 1)).astype(np.float32)


def _micrograph(dose: float, sigma_pmt: float, seed: int, shape=(256, 256)) -> np.ndarray:
    """Detector units: 1000 per intensity unit, dark level 0."""
    clean = _steps(shape)
    noisy = detector_noise(
        clean, DetectorNoiseParams(dose=dose, sigma_pmt=sigma_pmt), np.random.default_rng(seed)
    )
    return (noisy * 1000.0).astype(np.float32)


def _wait_idle(widget, qtbot):
    qtbot.waitUntil(lambda: widget._worker is None and not widget._pending, timeout=60000)


def test_fit_button_sets_the_detector_noise_and_leaves_the_image_alone(fit_playground):
    viewer, widget, qtbot = fit_playground
    data = _micrograph(40.0, 2.0, seed=0)
    original = data.copy()
    viewer.add_image(data, name="micrograph")
    assert "micrograph" in widget.fit_layer.choices
    assert not any(str(name).startswith("playground") for name in widget.fit_layer.choices)
    widget.fit_layer.value = "micrograph"
    assert widget.fit_region.value == "whole image"
    n = widget.n_updates
    widget.fit_button.native.click()
    fit = widget.last_fit
    assert fit is not None and widget.fit_status.value == fit.summary()
    assert "dose" in widget.fit_status.value and "well conditioned" in widget.fit_status.value
    assert abs(fit.dose / 40.0 - 1) < 0.10 and abs(fit.read_noise_e / 2.0 - 1) < 0.15
    # the default settings keep the fast-scan blur, which lowers the noise variance by
    # Σk² of its kernel: the dose set is scaled by it so the preview's noise matches
    blur = widget.params["fast_scan_blur"]
    assert blur.enabled
    g = float(np.sum(fast_scan_psf(blur) ** 2))
    p = widget.params["detector_noise"]
    assert p.enabled and p.dose == pytest.approx(g * fit.dose, rel=1e-4)
    np.testing.assert_array_equal(viewer.layers["micrograph"].data, original)
    qtbot.waitUntil(lambda: widget.n_updates > n, timeout=60000)  # the preview recomputes
    _wait_idle(widget, qtbot)


def test_region_from_a_shapes_layer_restricts_the_fit(fit_playground):
    viewer, widget, qtbot = fit_playground
    top = _micrograph(10.0, 1.0, seed=1, shape=(128, 256))
    bottom = _micrograph(300.0, 1.0, seed=2, shape=(128, 256))
    data = np.concatenate([top, bottom], axis=0)  # the same levels, two doses
    viewer.add_image(data, name="two doses", scale=(0.5, 0.5))
    # a rectangle over the top half, drawn in world coordinates (the image is scaled 0.5)
    viewer.add_shapes([np.array([[0, 0], [0, 127.5], [63.5, 127.5], [63.5, 0]])], name="flat")
    assert widget.fit_region.choices == ("whole image", "flat")
    fit_top = widget.fit_to_layer("two doses", "flat")
    fit_all = widget.fit_to_layer("two doses")
    # block gain in image units: mean(clean) · 1000 / dose of the region
    gain_top = float(_steps((128, 256)).mean()) * 1000.0 / 10.0
    assert abs(fit_top.gain / gain_top - 1) < 0.10
    assert fit_top.n_blocks < 0.6 * fit_all.n_blocks
    assert widget.last_fit is fit_all
    _wait_idle(widget, qtbot)


def test_tem_fit_sets_shot_and_thermal_noise(fit_playground):
    viewer, widget, qtbot = fit_playground
    widget.modality.value = "tem"
    _wait_idle(widget, qtbot)
    clean = _steps()
    rng = np.random.default_rng(3)
    dose, read_e = 60.0, 5.0
    alpha = dose / float(clean.mean())
    y = shot_noise(clean, ShotNoiseParams(dose=dose), rng)
    y = y + rng.standard_normal(y.shape).astype(np.float32) * (read_e / alpha)
    viewer.add_image(y, name="tem image")
    fit = widget.fit_to_layer("tem image")
    p = widget.params
    assert abs(p["shot_noise"].dose / dose - 1) < 0.10
    clean_mean = float(np.mean(widget.clean_image()))
    # the form keeps 5 significant digits
    expected = clean_mean * fit.read_noise_e / fit.dose
    assert p["thermal_noise"].sigma == pytest.approx(expected, rel=1e-4)
    assert not p["fixed_pattern_noise"].enabled and not p["dark_current"].enabled
    _wait_idle(widget, qtbot)


def test_errors_go_to_the_label_not_a_traceback(fit_playground):
    viewer, widget, qtbot = fit_playground
    widget.fit_button.native.click()  # nothing to fit to yet
    assert widget.fit_status.value.startswith("⚠")
    viewer.add_image(np.full((64, 64), 7.0, dtype=np.float32), name="constant")
    widget.fit_layer.value = "constant"
    before = widget.params.to_dict()
    widget.fit_button.native.click()
    assert "constant" in widget.fit_status.value and widget.fit_status.value.startswith("⚠")
    assert widget.params.to_dict() == before  # settings untouched
    viewer.add_shapes(
        [np.array([[500, 500], [500, 600], [600, 600]])], shape_type="polygon", name="elsewhere"
    )
    viewer.add_image(_micrograph(20.0, 1.0, seed=4, shape=(64, 64)), name="ok")
    with pytest.raises(ValueError, match="do not cover"):
        widget.fit_to_layer("ok", "elsewhere")
    with pytest.raises(ValueError, match="no layer"):
        widget.fit_to_layer("missing")
    _wait_idle(widget, qtbot)


def test_fit_with_a_detector_dark_level(fit_playground):
    """A HAADF-like image with a large DC offset: estimated by default, or given by hand."""
    viewer, widget, qtbot = fit_playground
    offset = 2.9e6
    data = offset + 1000.0 * _micrograph(25.0, 0.3, seed=5).astype(np.float64)
    signal = float(data.mean()) - offset
    viewer.add_image(data, name="haadf")
    widget.fit_layer.value = "haadf"
    assert widget.fit_offset_auto.value and not widget.fit_offset.enabled
    widget.fit_button.native.click()
    fit = widget.last_fit
    assert fit.offset_estimated and abs(fit.offset - offset) < 0.02 * signal
    assert abs(fit.dose / 25.0 - 1) < 0.10
    assert widget.fit_offset.value == pytest.approx(fit.offset)  # shown in the control
    assert "estimated" in widget.fit_status.value
    # a dark level of 0 given by hand is flagged, not reported as well conditioned
    widget.fit_offset_auto.value = False
    assert widget.fit_offset.enabled
    widget.fit_offset.value = 0.0
    widget.fit_button.native.click()
    assert not widget.last_fit.well_conditioned
    assert "implausible" in widget.fit_status.value
    _wait_idle(widget, qtbot)
